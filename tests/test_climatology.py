"""sicube.climatology: the day-of-year rule, the Dask reduction against a NumPy group-by."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from sicube.datacube import cube
from sicube.errors import BadInput
from sicube.testing import synthetic_cube

# The module (`sicube.climatology` on the package is the function of the same name).
clim = importlib.import_module("sicube.analysis.climatology")


def _two_years(path, chunks):
    n = (dt.date(2025, 1, 10) - dt.date(2023, 6, 1)).days + 1
    return synthetic_cube(path, start=20230601, n_days=n, shape=(20, 18),
                          missing=(3, 100, 275, 400), chunks=chunks)


@pytest.fixture(scope="module")
def two_years(tmp_path_factory):
    """A synthetic cube of 2023-06-01 .. 2025-01-10 (one 29 February), a few missing days."""
    return _two_years(tmp_path_factory.mktemp("clim") / "cube.zarr",
                      {"time": 8, "y": 8, "x": 8})


def test_day_slot_pools_feb29_with_feb28():
    days = [dt.date(2024, 1, 1), dt.date(2024, 2, 28), dt.date(2024, 2, 29),
            dt.date(2024, 3, 1), dt.date(2023, 3, 1), dt.date(2024, 12, 31),
            dt.date(2023, 12, 31)]
    assert clim.day_slot(days).tolist() == [0, 58, 58, 59, 59, 364, 364]


def test_window_sum_is_circular():
    values = np.arange(365.0)
    got = clim.window_sum(values, 2)
    assert got[0] == 363 + 364 + 0 + 1 + 2 and got[364] == 362 + 363 + 364 + 0 + 1
    assert got[100] == 98 + 99 + 100 + 101 + 102
    with pytest.raises(ValueError):
        clim.window_sum(values, 365)


def _numpy_groupby(store, first, last, k):
    """The rule by brute force: per slot, every kept day (observed, not flagged suspicious)
    within ±k slots, mean and std."""
    ds = xr.open_zarr(store)
    times = ds["time"].values.astype("datetime64[D]")
    years = times.astype("datetime64[Y]").astype(int) + 1970
    keep = ds[cube.OBSERVED].values & (years >= first) & (years <= last)
    keep &= ds[cube.DAY_QUALITY].values == 0
    conc = ds[cube.CONC].values[keep].astype(np.float64)
    slots = clim.day_slot(times[keep])
    mean = np.full((365, *conc.shape[1:]), np.nan)
    std = np.full_like(mean, np.nan)
    for s in range(365):
        distance = np.abs(slots - s)
        near = np.minimum(distance, 365 - distance) <= k
        if near.any():
            mean[s], std[s] = conc[near].mean(axis=0), conc[near].std(axis=0)
    return mean, std


@pytest.mark.parametrize("k", [0, 3])
def test_climatology_equals_a_numpy_groupby(two_years, tmp_path, k):
    out = tmp_path / "clim.zarr"
    summary = clim.climatology(two_years, "2023-2024", out, half_window=k)
    want_mean, want_std = _numpy_groupby(two_years, 2023, 2024, k)
    got = xr.open_zarr(out)
    assert got[clim.MEAN].shape == (365, 20, 18) and got[clim.MEAN].dtype == np.float32
    np.testing.assert_allclose(got[clim.MEAN].values, want_mean, atol=2e-7, equal_nan=True)
    np.testing.assert_allclose(got[clim.STD].values, want_std, atol=2e-6, equal_nan=True)
    assert summary.days_used == int(got[clim.COUNT].values.sum()) // (2 * k + 1)
    assert got.attrs["half_window"] == k and "29 February" in got.attrs["feb29"]
    assert "2023-2024" in summary.text()


def test_suspicious_days_are_left_out(two_years, tmp_path):
    """Observed days flagged in day_quality (here full of ice, everywhere) count nowhere: not
    in the mean and std, the number of days used, or the channel statistics. The expectation
    is plain NumPy on the cube's arrays."""
    store = tmp_path / "flagged.zarr"
    shutil.copytree(two_years, store)
    group = zarr.open_group(store, mode="r+")
    observed = np.nonzero(group[cube.OBSERVED][:])[0]
    flagged = observed[[40, 41, 200, 380]]  # observed days in 2023 and 2024
    for day in flagged:
        group[cube.DAY_QUALITY][day] = 1
        group[cube.CONC][day] = np.ones(group[cube.CONC].shape[1:], np.float32)
    out = tmp_path / "clim.zarr"
    summary = clim.climatology(store, "2023-2024", out, half_window=3)
    got = xr.open_zarr(out)
    ds = xr.open_zarr(store)
    years = ds["time"].values.astype("datetime64[Y]").astype(int) + 1970
    kept = ds[cube.OBSERVED].values & (years <= 2024) & (ds[cube.DAY_QUALITY].values == 0)
    want_mean, want_std = _numpy_groupby(store, 2023, 2024, 3)
    np.testing.assert_allclose(got[clim.MEAN].values, want_mean, atol=2e-7, equal_nan=True)
    np.testing.assert_allclose(got[clim.STD].values, want_std, atol=2e-6, equal_nan=True)
    assert summary.days_used == kept.sum() == (years[observed] <= 2024).sum() - len(flagged)
    ocean = ds[cube.LAND].values == 0
    values = ds[cube.CONC].values[kept][:, ocean].astype(np.float64)
    stats = json.loads(got.attrs[clim.CHANNEL_STATS])
    assert stats[cube.CONC] == pytest.approx([values.mean(), values.std()], rel=1e-9)


def test_channel_stats_are_the_ocean_mean_and_std(two_years, tmp_path):
    out = tmp_path / "clim.zarr"
    clim.climatology(two_years, "2024", out, half_window=2)
    stats = json.loads(xr.open_zarr(out).attrs[clim.CHANNEL_STATS])
    ds = xr.open_zarr(two_years)
    days = clim.selected_days(ds, 2024, 2024)
    ocean = ds[cube.LAND].values == 0
    conc = ds[cube.CONC].values[days].astype(np.float64)
    values = conc[:, ocean]
    assert stats[cube.CONC] == pytest.approx([values.mean(), values.std()], rel=1e-9)
    mean = xr.open_zarr(out)[clim.MEAN].values.astype(np.float64)  # stored float32
    anomaly = conc - np.nan_to_num(mean)[clim.day_slot(ds["time"].values[days])]
    assert stats["anomaly"] == pytest.approx(
        [anomaly[:, ocean].mean(), anomaly[:, ocean].std()], rel=1e-5, abs=1e-7)


def test_climatology_refuses_bad_input(two_years, tmp_path):
    with pytest.raises(BadInput, match="no observed day"):
        clim.climatology(two_years, "2010-2011", tmp_path / "a.zarr")
    with pytest.raises(BadInput, match="expected FIRST-LAST"):
        clim.climatology(two_years, "twenty", tmp_path / "a.zarr")
    with pytest.raises(BadInput, match="before the first"):
        clim.climatology(two_years, "2024-2023", tmp_path / "a.zarr")
    with pytest.raises(BadInput, match="half-window"):
        clim.climatology(two_years, "2024", tmp_path / "a.zarr", half_window=400)
    (tmp_path / "b.zarr").mkdir()
    with pytest.raises(BadInput, match="exists"):
        clim.climatology(two_years, "2024", tmp_path / "b.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_climatology_command(two_years, tmp_path, capsys):
    from sicube.cli import main

    out = tmp_path / "c.zarr"
    assert main(["climatology", "--store", str(two_years), "--years", "2024-2024", "--out",
                 str(out), "--half-window", "1"]) == 0
    text = capsys.readouterr().out
    assert "±1 days" in text and "365 x 20 x 18" in text
    assert xr.open_zarr(out)[clim.MEAN].shape == (365, 20, 18)
    assert main(["climatology", "--store", str(two_years), "--years", "2024", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def clim_store(two_years, tmp_path_factory):
    out = tmp_path_factory.mktemp("climstore") / "clim.zarr"
    clim.climatology(two_years, "2023-2024", out, half_window=2)
    return out


def test_dataset_anomaly_channel_and_normalize(two_years, clim_store):
    from sicube.ml.dataset import SICDataset

    ds = xr.open_zarr(two_years)
    mean = xr.open_zarr(clim_store)[clim.MEAN].values
    data = SICDataset(two_years, 20240225, 20240305, input_length=3, pred_length=1,
                      variables=["anomaly"], target_variables=["anomaly"],
                      climatology=clim_store, allow_unobserved=True)
    inputs, targets = data[0]
    times = ds["time"].values.astype("datetime64[D]")
    first = int(np.nonzero(times == np.datetime64("2024-02-25"))[0][0])
    for t in range(3):
        day = first + t
        conc = ds[cube.CONC].values[day]
        want = conc - np.nan_to_num(mean[clim.day_slot(times[day:day + 1])[0]])
        np.testing.assert_allclose(inputs[t, 0].numpy(), conc)
        np.testing.assert_allclose(inputs[t, 1].numpy(), want, atol=1e-6)
    # 29 February uses 28 February's mean (its slot)
    feb29 = SICDataset(two_years, 20240229, 20240301, input_length=1, pred_length=1,
                       variables=["anomaly"], climatology=clim_store, allow_unobserved=True)
    day = int(np.nonzero(times == np.datetime64("2024-02-29"))[0][0])
    np.testing.assert_allclose(feb29[0][0][0, 1].numpy(),
                               ds[cube.CONC].values[day] - np.nan_to_num(mean[58]), atol=1e-6)
    stats = json.loads(xr.open_zarr(clim_store).attrs[clim.CHANNEL_STATS])
    scaled = SICDataset(two_years, 20240225, 20240305, input_length=3, pred_length=1,
                        variables=["anomaly"], climatology=clim_store, normalize=True,
                        allow_unobserved=True)
    x, y = scaled[0]
    m, s = stats[cube.CONC]
    np.testing.assert_allclose(x[:, 0].numpy(), (inputs[:, 0].numpy() - m) / s, rtol=1e-5,
                               atol=1e-5)
    m, s = stats["anomaly"]
    np.testing.assert_allclose(x[:, 1].numpy(), (inputs[:, 1].numpy() - m) / s, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(y[:, 0].numpy(), (targets[:, 0].numpy() - stats[cube.CONC][0])
                               / stats[cube.CONC][1], rtol=1e-5, atol=1e-5)
    batch = scaled[[0, 1]]  # the batch path scales too
    np.testing.assert_allclose(batch[0][0].numpy(), x.numpy())


def test_dataset_climatology_bad_input(two_years, clim_store, tmp_path):
    from sicube.ml.dataset import SICDataset

    args = (two_years, 20240225, 20240305, 2, 1)
    with pytest.raises(BadInput, match="needs climatology"):
        SICDataset(*args, variables=["anomaly"])
    with pytest.raises(BadInput, match="normalize"):
        SICDataset(*args, normalize=True)
    with pytest.raises(BadInput, match="not one of the channels"):
        SICDataset(*args, normalize={"anomaly": (0, 1)})
    with pytest.raises(BadInput, match="std must be positive"):
        SICDataset(*args, normalize={cube.CONC: (0, 0)})
    with pytest.raises(BadInput, match="not a sicube climatology|not a readable"):
        SICDataset(*args, variables=["anomaly"], climatology=two_years)
    scaled = SICDataset(*args, normalize={cube.CONC: (0.5, 2.0)}, allow_unobserved=True)
    plain = SICDataset(*args, allow_unobserved=True)
    np.testing.assert_allclose(scaled[0][0].numpy(), (plain[0][0].numpy() - 0.5) / 2.0,
                               rtol=1e-6)
    # a saved plan whose climatology is no longer there is refused at once, not per item
    from sicube.ml.sample_plan import SamplePlan

    plan = SICDataset(*args, variables=["anomaly"], climatology=clim_store,
                      allow_unobserved=True).plan
    gone = SamplePlan.from_json(plan.to_json().replace(str(clim_store),
                                                       str(tmp_path / "gone.zarr")))
    with pytest.raises(BadInput, match="gone.zarr"):
        SICDataset.from_plan(gone, two_years)
    assert len(SICDataset.from_plan(plan, two_years)) == len(plan)


@pytest.fixture(scope="module")
def s3_two_years(s3_server, tmp_path_factory) -> str:
    """The URL of `two_years` on the S3 server, its values in whole-grid chunks of 64 days:
    a few dozen objects to upload and read, not the ~2,000 of `two_years`' small chunks
    (the results read from it do not depend on the chunking)."""
    import s3fs

    url = f"s3://{s3_server.bucket}/clim-two-years.zarr"
    local = _two_years(tmp_path_factory.mktemp("clim-s3") / "cube.zarr",
                       {"time": 64, "y": 20, "x": 18})
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), url, recursive=True)
    return url


def test_dataset_reads_an_s3_climatology_with_the_cubes_storage_options(
        two_years, clim_store, s3_server, s3_two_years):
    """The anomaly channel's climatology is opened like the cube, through the one opener with
    the dataset's `storage_options` (no credentials in the environment), in every process:
    at construction, in forked DataLoader workers, and again from a saved plan."""
    import s3fs
    from torch.utils.data import DataLoader

    from sicube.ml.dataset import SICDataset
    from sicube.ml.sample_plan import SamplePlan

    options = s3_server.storage_options
    cube_url = s3_two_years
    clim_url = f"s3://{s3_server.bucket}/anomaly/clim.zarr"
    s3fs.S3FileSystem(**options).put(str(clim_store), clim_url, recursive=True)
    span = dict(start_time=20240225, end_time=20240305, input_length=2, pred_length=1,
                variables=["anomaly"], normalize=True, quality_cache=False)
    local = SICDataset(two_years, climatology=clim_store, **span)
    remote = SICDataset(cube_url, climatology=clim_url, storage_options=options, **span)
    want = [[t.numpy() for t in local[k]] for k in range(len(local))]
    loader = DataLoader(remote, batch_size=None, num_workers=2, multiprocessing_context="fork")
    again = SICDataset.from_plan(SamplePlan.from_json(remote.plan.to_json()), cube_url,
                                 storage_options=options)
    for items in ([remote[k] for k in range(len(remote))], list(loader),
                  [again[k] for k in range(len(again))]):
        assert len(items) == len(want) > 0
        for got, expected in zip(items, want, strict=True):
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_array_equal(g.numpy(), e)


def test_extent_and_climatology_read_an_s3_cube_with_storage_options(
        two_years, s3_server, s3_two_years, tmp_path, capsys):
    """Like every reader of a cube, extent and climatology take `storage_options` (here the
    endpoint and credentials of a moto S3 server, none in the environment), API and CLI."""
    from sicube.analysis.extent import extent
    from sicube.cli import main

    options = s3_server.storage_options
    url = s3_two_years
    remote = extent(url, storage_options=options)
    local = extent(two_years)
    assert remote.equals(local) and len(local) > 365
    clim.climatology(url, "2023-2024", tmp_path / "remote.zarr", half_window=2,
                     storage_options=options)
    clim.climatology(two_years, "2023-2024", tmp_path / "local.zarr", half_window=2)
    got, want = xr.open_zarr(tmp_path / "remote.zarr"), xr.open_zarr(tmp_path / "local.zarr")
    for name in (clim.MEAN, clim.STD, clim.COUNT):
        np.testing.assert_array_equal(got[name].values, want[name].values)
    assert got.attrs[clim.CHANNEL_STATS] == want.attrs[clim.CHANNEL_STATS]
    flag = ["--storage-options", json.dumps(options)]
    assert main(["extent", "--store", url, "--csv", str(tmp_path / "e.csv"), *flag]) == 0
    assert main(["climatology", "--store", url, "--years", "2024", "--out",
                 str(tmp_path / "cli.zarr"), *flag]) == 0
    capsys.readouterr()
    assert (tmp_path / "e.csv").read_text() == _csv(local, tmp_path / "local.csv")
    assert xr.open_zarr(tmp_path / "cli.zarr")[clim.MEAN].shape == (365, 20, 18)


def _csv(table, path) -> str:
    table.to_csv(path, index=False, float_format="%.3f")
    return path.read_text()


def test_the_extent_figure_is_the_views_and_the_old_plot_argument_still_draws_it(
        two_years, tmp_path, capsys):
    # the analysis gives the table, the view its picture (issue 21: analysis imports no view)
    from sicube.analysis.extent import extent
    from sicube.cli import main

    png = tmp_path / "cli.png"
    assert main(["extent", "--store", str(two_years), "--plot", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out and png.stat().st_size > 10_000
    with pytest.warns(DeprecationWarning, match="plot_extent"):
        table = extent(two_years, plot=tmp_path / "old.png")
    assert (tmp_path / "old.png").stat().st_size > 10_000
    assert table.equals(extent(two_years))
