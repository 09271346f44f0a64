"""SICDataset and SICStream against direct Zarr reads and a direct copy of the original's rule."""

from __future__ import annotations

import collections
import datetime as dt
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from sicube import testing
from sicube.datacube import cube
from sicube.errors import BadInput
from sicube.ml.dataset import SICDataset, SICStream, fold_patches, unfold_patches, window_indices
from sicube.ml.sample_plan import SamplePlan

START = dt.date(2024, 4, 1)
N_DAYS = 30
MISSING = (5, 6, 17)  # day indices without a source file
NY, NX = 48, 40
CHUNKS = {"time": 4, "y": 16, "x": 16}


def _day(i: int) -> int:
    d = START + dt.timedelta(days=int(i))
    return d.year * 10000 + d.month * 100 + d.day


@pytest.fixture(scope="session")
def synthetic_cube(tmp_path_factory) -> Path:
    """A 30-day, 48 x 40 cube in the sicube layout, days 5, 6 and 17 without data.

    Written by `sicube.testing.synthetic_cube` rather than built (conftest's `small_cube`
    is the built one, tested at the end of this file) so that the content is under
    control: unique random values that identify every frame, small chunks, and a share of
    filled cells that varies from day to day for the quality filter.
    """
    path = tmp_path_factory.mktemp("cube") / "cube.zarr"
    return testing.synthetic_cube(path, start=START, n_days=N_DAYS, shape=(NY, NX),
                                  missing=MISSING, chunks=CHUNKS)


@pytest.fixture(scope="session")
def group(synthetic_cube):
    return zarr.open_group(str(synthetic_cube), mode="r")


def original_windows(n_days, input_length, pred_length, input_gap=1, pred_shift=1,
                     pred_gap=1, samples_gap=1):
    """The original toolbox's loop, as README.md ("Train from a cube") states it."""
    input_span = input_gap * (input_length - 1) + 1
    pred_span = pred_gap * (pred_length - 1) + 1
    total = input_span + pred_shift + pred_span - 1
    windows = []
    i = 0
    while i + total <= n_days:
        inputs = [i + k for k in range(0, input_span, input_gap)]
        targets = [i + input_span + pred_shift - 1 + k for k in range(0, pred_span, pred_gap)]
        windows.append((inputs, targets))
        i += samples_gap
    return windows


PARAMS = [
    dict(input_length=5, pred_length=3),
    dict(input_length=2, pred_length=2, input_gap=2, pred_shift=3, pred_gap=2, samples_gap=3),
    dict(input_length=1, pred_length=1, samples_gap=2),
    dict(input_length=4, pred_length=4, input_gap=1, pred_shift=2, pred_gap=3),
]


def _dataset(store, first=0, last=N_DAYS - 1, **kwargs) -> SICDataset:
    kwargs.setdefault("quality_cache", False)
    params = {"input_length": 3, "pred_length": 2, **kwargs}
    return SICDataset(store, _day(first), _day(last), **params)


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("span", [(0, N_DAYS - 1), (3, 24)])
def test_windows_follow_the_original_rule_and_skip_missing_days(synthetic_cube, params, span):
    first, last = span
    ds = _dataset(synthetic_cube, first, last, **params)
    expected = [(np.add(i, first), np.add(t, first))
                for i, t in original_windows(last - first + 1, **params)]
    expected = [(i, t) for i, t in expected
                if not set(MISSING) & set(i.tolist() + t.tolist())]
    inputs, targets = ds.windows
    assert len(ds) == len(expected) == len(inputs)
    assert [(a.tolist(), b.tolist()) for a, b in zip(inputs, targets, strict=True)] == \
        [(a.tolist(), b.tolist()) for a, b in expected]
    times = ds.get_times()
    assert times.tolist() == [[_day(d) for d in (*a, *b)] for a, b in expected]
    assert ds.GetTimes().tolist() == times.tolist()


@pytest.mark.parametrize("params", PARAMS)
def test_window_indices_equal_the_original_loop(params):
    for n_days in (0, 1, 7, 30):
        inputs, targets = window_indices(n_days, **params)
        expected = original_windows(n_days, **params)
        assert inputs.tolist() == [i for i, _ in expected]
        assert targets.tolist() == [t for _, t in expected]


def test_allow_unobserved_keeps_every_window_of_the_rule(synthetic_cube):
    ds = _dataset(synthetic_cube, allow_unobserved=True)
    assert len(ds) == len(original_windows(N_DAYS, 3, 2)) == ds.report.candidates
    assert ds.report.unobserved == 0
    strict = _dataset(synthetic_cube)
    assert strict.report.unobserved == len(ds) - len(strict) > 0


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("params", PARAMS[:2])
@pytest.mark.parametrize("preload", [False, True])
def test_items_equal_direct_zarr_slices(synthetic_cube, group, params, preload):
    ds = _dataset(synthetic_cube, 2, 27, preload_data=preload, **params)
    conc = group[cube.CONC][:]
    inputs, targets = ds.windows
    for k in range(len(ds)):
        x, y = ds[k]
        assert x.dtype == y.dtype == torch.float32
        assert x.shape == (params["input_length"], 1, NY, NX)
        assert y.shape == (params["pred_length"], 1, NY, NX)
        np.testing.assert_array_equal(x[:, 0].numpy(), conc[inputs[k]])
        np.testing.assert_array_equal(y[:, 0].numpy(), conc[targets[k]])
    assert ds.reader.is_open != preload  # preloaded items come from memory


def test_get_inputs_and_targets_stack_every_item(synthetic_cube, group):
    ds = _dataset(synthetic_cube, 0, 12, input_length=2, pred_length=1)
    conc = group[cube.CONC][:]
    inputs, targets = ds.windows
    np.testing.assert_array_equal(ds.get_inputs()[:, :, 0].numpy(), conc[inputs])
    np.testing.assert_array_equal(ds.GetTargets()[:, :, 0].numpy(), conc[targets])
    assert ds.GetInputs().shape == (len(ds), 2, 1, NY, NX)


def test_roi_and_tiled_patches(synthetic_cube, group):
    roi = (5, 45, 3, 37)  # 40 x 34, crossing chunk edges
    ds = _dataset(synthetic_cube, roi=roi, patch_size=(16, 12), patch_stride=(8, 10))
    origins = ds.patch_origins
    assert sorted(set(origins[:, 0].tolist())) == [0, 8, 16, 24]  # 24 + 16 = 40
    assert sorted(set(origins[:, 1].tolist())) == [0, 10, 20]  # 20 + 12 <= 34 < 30 + 12
    inputs, targets = ds.windows
    assert len(ds) == len(inputs) * len(origins)
    conc = group[cube.CONC][:]
    for k in range(0, len(ds), 7):
        window, patch = divmod(k, len(origins))
        py, px = origins[patch]
        rows = slice(roi[0] + py, roi[0] + py + 16)
        cols = slice(roi[2] + px, roi[2] + px + 12)
        x, y = ds[k]
        assert x.shape == (3, 1, 16, 12)
        np.testing.assert_array_equal(x[:, 0].numpy(), conc[inputs[window]][:, rows, cols])
        np.testing.assert_array_equal(y[:, 0].numpy(), conc[targets[window]][:, rows, cols])
    assert ds.get_times().shape == (len(ds), 5)


def test_random_patches_lie_inside_the_roi_and_move(synthetic_cube, group):
    roi = (8, 40, 8, 32)
    ds = _dataset(synthetic_cube, roi=roi, patch_size=8, random_patches=3)
    assert len(ds) == 3 * len(ds.windows[0])
    frame = group[cube.CONC][ds.windows[0][0]][:, roi[0]:roi[1], roi[2]:roi[3]]
    torch.manual_seed(0)
    found = set()
    for _ in range(6):
        x, _ = ds[0]
        hits = [(r, c) for r in range(32 - 8 + 1) for c in range(24 - 8 + 1)
                if np.array_equal(frame[:, r:r + 8, c:c + 8], x[:, 0].numpy())]
        assert len(hits) == 1
        found.add(hits[0])
    assert len(found) > 1


def test_coarsen_is_the_mean_over_ocean_cells(synthetic_cube, group):
    roi = (0, 48, 4, 40)
    ds = _dataset(synthetic_cube, roi=roi, coarsen=4, variables=["filled", cube.RAW, cube.LAND])
    x, _ = ds[0]
    frames = ds.windows[0][0]
    assert x.shape == (3, 4, 12, 9)
    conc = group[cube.CONC][:][frames][:, :, 4:40]
    flag = group[cube.FLAG][:][frames][:, :, 4:40]
    raw = group[cube.RAW][:][frames][:, :, 4:40]
    ocean = group[cube.LAND][:][:, 4:40] == 0
    for by, bx in [(0, 0), (2, 1), (5, 3), (11, 8), (8, 6)]:
        cells = (slice(by * 4, by * 4 + 4), slice(bx * 4, bx * 4 + 4))
        sea = ocean[cells]
        want = conc[:, cells[0], cells[1]][:, sea].mean(1) if sea.any() else np.zeros(3)
        np.testing.assert_allclose(x[:, 0, by, bx].numpy(), want, rtol=1e-6)
        filled = np.isin(flag[:, cells[0], cells[1]][:, sea], (1, 2)).mean(1) if sea.any() \
            else np.zeros(3)
        np.testing.assert_allclose(x[:, 1, by, bx].numpy(), filled, rtol=1e-6)
        block = raw[:, cells[0], cells[1]].reshape(3, -1)
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning) if not \
                np.isfinite(block).any(1).all() else _nothing():
            np.testing.assert_allclose(x[:, 2, by, bx].numpy(), np.nanmean(block, 1), rtol=1e-5)
        np.testing.assert_allclose(x[:, 3, by, bx].numpy(), 1 - sea.mean())
    assert (x[:, 0, 0, 0] == 0).all()  # cells (0..3, 4..7) are all land


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_extra_channels_and_land_mask(synthetic_cube, group):
    ds = _dataset(synthetic_cube, variables=[cube.FLAG, cube.LAND, "day_of_year", cube.NAN_RATIO],
                  target_variables=["filled"], apply_land_mask=True, return_mask=True)
    x, y, mask = ds[3]
    inputs, targets = ds.windows
    land = group[cube.LAND][:]
    assert x.shape == (3, 5, NY, NX) and y.shape == (2, 2, NY, NX) and mask.shape == (1, NY, NX)
    np.testing.assert_array_equal(mask[0].numpy(), land)
    flag = group[cube.FLAG][:][inputs[3]]
    np.testing.assert_array_equal(x[:, 1].numpy(), np.where(land == 1, 0, flag))  # land zeroed
    np.testing.assert_array_equal(x[:, 2].numpy(), np.broadcast_to(land, (3, NY, NX)))
    doy = [(START + dt.timedelta(days=int(d))).timetuple().tm_yday / 366 for d in inputs[3]]
    np.testing.assert_allclose(x[:, 3, 20, 20].numpy(), doy, rtol=1e-6)
    assert (x[:, 3][:, land == 1] == 0).all()
    np.testing.assert_array_equal(x[:, 4, 20, 20].numpy(), group[cube.NAN_RATIO][20, 20])
    tflag = group[cube.FLAG][:][targets[3]]
    np.testing.assert_array_equal(y[:, 1].numpy(), np.isin(tflag, (1, 2)).astype(np.float32))


# ---------------------------------------------------------------- quality filter


def test_quality_filter_skips_too_filled_windows(synthetic_cube, group, tmp_path):
    roi = (12, 48, 0, 40)
    limit_in, limit_tgt = 0.5, 0.4
    ds = _dataset(synthetic_cube, roi=roi, max_filled_fraction=(limit_in, limit_tgt),
                  quality_cache=tmp_path)
    flag = group[cube.FLAG][:][:, 12:48, :]
    ocean = group[cube.LAND][:][12:48] == 0
    # Not an observation: filled, no neighbour, and the pole hole (ocean, set from its ring).
    share = (np.isin(flag, (1, 2, 4)) & ocean).sum((1, 2)) / ocean.sum()
    np.testing.assert_allclose(ds.report.filled_fraction, share)
    expected = [(i, t) for i, t in original_windows(N_DAYS, 3, 2)
                if not set(MISSING) & set(i + t)
                and share[i].max() <= limit_in and share[t].max() <= limit_tgt]
    assert 0 < len(expected) < ds.report.candidates - ds.report.unobserved
    assert ds.windows[0].tolist() == [i for i, _ in expected]
    report = ds.report
    assert report.kept == len(ds)
    assert report.kept + report.unobserved + report.too_filled_inputs \
        + report.too_filled_targets == report.candidates
    assert report.too_filled_inputs > 0 and report.too_filled_targets > 0
    assert f"{len(ds)} of {report.candidates} windows kept" in str(report)

    # The fractions are cached: a second dataset reads them instead of fill_flag.
    (cache_file,) = tmp_path.glob("*.json")
    cached = json.loads(cache_file.read_text())
    np.testing.assert_allclose(cached["fraction"], share)
    cached["fraction"] = [0.0] * len(share)
    cache_file.write_text(json.dumps(cached))
    again = _dataset(synthetic_cube, roi=roi, max_filled_fraction=(limit_in, limit_tgt),
                     quality_cache=tmp_path)
    assert again.report.too_filled_inputs == again.report.too_filled_targets == 0


# ---------------------------------------------------------------- workers, pickling


def _batches(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for one, two in zip(a, b, strict=True):
        for t1, t2 in zip(one, two, strict=True):
            assert torch.equal(t1, t2)


def test_no_handle_at_construction_and_pickles(synthetic_cube):
    ds = _dataset(synthetic_cube, patch_size=16)
    assert not ds.reader.is_open
    ds[0]
    assert ds.reader.is_open
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone.reader.is_open
    assert json.loads(clone.plan.to_json()) == json.loads(ds.plan.to_json())
    assert torch.equal(clone[5][0], ds[5][0])


@pytest.mark.parametrize("context,persistent", [("fork", True), ("spawn", False)])
def test_two_workers_give_the_same_batches_as_none(synthetic_cube, context, persistent):
    ds = _dataset(synthetic_cube, roi=(0, 48, 0, 32), patch_size=16, return_mask=True)
    serial = _batches(DataLoader(ds, batch_size=4))
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context,
                        persistent_workers=persistent)
    _assert_same_batches(serial, _batches(loader))
    if persistent:  # a second epoch on the same workers
        _assert_same_batches(serial, _batches(loader))


@pytest.mark.parametrize("kwargs", [
    dict(patch_size=16, return_mask=True),  # read in place
    dict(input_gap=2, coarsen=2, variables=["filled", "day_of_year"], apply_land_mask=True),
])
def test_batches_read_in_place_equal_collated_items(synthetic_cube, kwargs):
    ds = _dataset(synthetic_cube, **kwargs)
    collated = _batches(DataLoader(ds, batch_size=5))
    _assert_same_batches(collated, _batches(ds.loader(5)))
    _assert_same_batches(collated, _batches(ds.loader(5, num_workers=2,
                                                      multiprocessing_context="fork")))
    generator = torch.Generator().manual_seed(7)
    shuffled = _batches(DataLoader(ds, batch_size=4, shuffle=True, generator=generator))
    generator.manual_seed(7)
    _assert_same_batches(shuffled, _batches(ds.loader(4, shuffle=True, generator=generator)))


# ---------------------------------------------------------------- the plan, saved and restored

# Every parameter that shapes the items at once: windows, ROI, coarsening, a patch tiling,
# extra channels (static, per day, NaN-bearing), land mask, scaling, the quality filter.
PLANNED = dict(input_gap=2, samples_gap=2, roi=(4, 44, 0, 40), coarsen=2, patch_size=(8, 10),
               patch_stride=(6, 5), variables=["filled", cube.RAW, cube.LAND, "day_of_year_sin"],
               target_variables=[cube.NAN_RATIO], apply_land_mask=True, return_mask=True,
               normalize={cube.CONC: (0.25, 0.5)}, max_filled_fraction=0.9)


def _assert_same_items(one, two) -> None:
    """Item for item, tensor for tensor, the same values (NaN for NaN)."""
    assert len(one) == len(two) > 0
    for k in range(len(one)):
        a, b = one[k], two[k]
        assert len(a) == len(b)
        for t1, t2 in zip(a, b, strict=True):
            assert t1.dtype == t2.dtype and t1.shape == t2.shape
            np.testing.assert_array_equal(t1.numpy(), t2.numpy())


def test_the_constructor_reads_the_plan_its_parameters_make(synthetic_cube):
    ds = _dataset(synthetic_cube, **PLANNED)
    plan = SamplePlan.from_cube(synthetic_cube, _day(0), _day(N_DAYS - 1), 3, 2,
                                quality_cache=False, **PLANNED)
    assert plan == ds.plan
    assert plan.input_channels == (cube.CONC, *PLANNED["variables"])
    assert plan.normalize == {cube.CONC: (0.25, 0.5)} and plan.return_mask


def test_a_plan_saved_as_json_reads_the_same_items(synthetic_cube, tmp_path):
    ds = _dataset(synthetic_cube, **PLANNED)
    saved = tmp_path / "plan.json"
    saved.write_text(ds.plan.to_json())
    plan = SamplePlan.from_json(saved.read_text())
    assert plan == ds.plan and plan is not ds.plan
    again = SICDataset.from_plan(plan, synthetic_cube)
    assert not again.reader.is_open  # as the constructor: no handle until the first read
    _assert_same_items(ds, again)
    np.testing.assert_array_equal(again.get_times(), ds.get_times())
    assert again.report.kept == ds.report.kept and again.days == ds.days
    _assert_same_items(list(SICStream(ds, shuffle=False)), list(SICStream(again, shuffle=False)))
    # A copy of the cube elsewhere, read through the preloaded path, gives them too.
    copy = shutil.copytree(synthetic_cube, tmp_path / "copy.zarr")
    _assert_same_items(ds, SICDataset.from_plan(plan, copy, preload_data=True))


def test_a_plan_refuses_a_cube_it_was_not_made_on(synthetic_cube, tmp_path):
    plan = _dataset(synthetic_cube).plan
    later = testing.synthetic_cube(tmp_path / "later.zarr", start=START + dt.timedelta(days=3),
                                   n_days=N_DAYS, shape=(NY, NX), chunks=CHUNKS)
    with pytest.raises(BadInput, match=f"plan: made on a cube of the days {_day(0)}"):
        SICDataset.from_plan(plan, later)
    narrower = testing.synthetic_cube(tmp_path / "narrower.zarr", start=START, n_days=N_DAYS,
                                      shape=(NY, NX - 8), chunks=CHUNKS)
    with pytest.raises(BadInput, match=f"plan: made on a {NY} x {NX} grid"):
        SICDataset.from_plan(plan, narrower)
    # a cube updated since (days appended) still holds the plan's days where they were
    longer = testing.synthetic_cube(tmp_path / "longer.zarr", start=START, n_days=N_DAYS + 4,
                                    shape=(NY, NX), chunks=CHUNKS)
    assert SICDataset.from_plan(plan, longer).get_times().tolist() == plan.times().tolist()
    with pytest.raises(BadInput, match="expected a SamplePlan"):
        SICDataset.from_plan(plan.to_json(), synthetic_cube)
    with pytest.raises(BadInput, match="plan: not a sample plan"):
        SamplePlan.from_json('{"span": [0, 3]}')


# ---------------------------------------------------------------- remote stores


@pytest.fixture(scope="module")
def http_cube(synthetic_cube):
    """The cube served by an aiohttp static route on 127.0.0.1; counts requests per path."""
    with testing.serve_directory(synthetic_cube.parent) as served:
        yield f"{served.url}/{synthetic_cube.name}", served.requests


def test_http_reads_equal_local_reads(synthetic_cube, http_cube):
    url, _ = http_cube
    kwargs = dict(roi=(4, 44, 0, 40), patch_size=20, variables=[cube.FLAG],
                  max_filled_fraction=0.5)
    local = _dataset(synthetic_cube, **kwargs)
    remote = _dataset(url, **kwargs)
    assert len(remote) == len(local) > 0
    np.testing.assert_array_equal(remote.get_times(), local.get_times())
    _assert_same_batches(_batches(DataLoader(local, batch_size=3)),
                         _batches(DataLoader(remote, batch_size=3, num_workers=2,
                                             multiprocessing_context="fork")))


def test_memory_store(synthetic_cube, group):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(str(synthetic_cube), "/mem-cube.zarr", recursive=True)
    ds = _dataset("memory://mem-cube.zarr", input_length=2, pred_length=2)
    local = _dataset(synthetic_cube, input_length=2, pred_length=2)
    assert len(ds) == len(local)
    for k in (0, len(ds) // 2, len(ds) - 1):
        assert torch.equal(ds[k][0], local[k][0]) and torch.equal(ds[k][1], local[k][1])


# ---------------------------------------------------------------- streaming


def _key(ds, item):
    """Identify an item by its frames' values (unique with random data)."""
    return item[0].numpy().tobytes() + item[1].numpy().tobytes()


def test_stream_visits_every_item_once_per_epoch_across_workers(synthetic_cube):
    ds = _dataset(synthetic_cube, roi=(0, 48, 0, 32), patch_size=16)
    expected = collections.Counter(_key(ds, ds[k]) for k in range(len(ds)))
    assert len(expected) == len(ds)
    stream = ds.stream(seed=1, block_bytes=16 * 16 * 4 * 8 * 2)
    loader = DataLoader(stream, batch_size=None, num_workers=2,
                        multiprocessing_context="fork", persistent_workers=True)
    orders = []
    for _ in range(2):
        items = list(loader)
        assert collections.Counter(_key(ds, item) for item in items) == expected
        orders.append([_key(ds, item) for item in items])
    assert orders[0] != orders[1]  # reshuffled between epochs


def test_batched_stream_gives_the_same_items_stacked(synthetic_cube):
    ds = _dataset(synthetic_cube, patch_size=(24, 20), variables=["filled"], return_mask=True)
    single = list(SICStream(ds, seed=5))
    batched = list(SICStream(ds, seed=5, batch_size=3))
    assert [len(b[0]) for b in batched] == [3] * (len(ds) // 3) + (
        [len(ds) % 3] if len(ds) % 3 else [])
    for part in range(3):
        assert torch.equal(torch.cat([b[part] for b in batched]),
                           torch.stack([item[part] for item in single]))
    loader = DataLoader(SICStream(ds, seed=5, batch_size=3), batch_size=None, num_workers=2,
                        multiprocessing_context="fork")
    keys = collections.Counter(x.numpy().tobytes() for b in loader for x in b[0])
    assert keys == collections.Counter(item[0].numpy().tobytes() for item in single)


def test_stream_without_shuffle_is_in_cube_order(synthetic_cube):
    ds = _dataset(synthetic_cube, patch_size=(24, 20))
    stream = SICStream(ds, shuffle=False, groups_in_flight=1, block_bytes=1)  # one time chunk
    assert len(stream.groups) == 7 * 4  # 7 time chunks hold window starts; 2 x 2 patches
    items = list(stream)
    assert len(items) == len(stream) == len(ds)
    # Groups come in cube order: time first, then space.
    group_firsts = [ds.windows[0][stream.groups[g] // 4, 0].min() for g in range(
        len(stream.groups))]
    assert group_firsts == sorted(group_firsts)
    # Every streamed item equals the map-style item it stands for.
    for position, k in enumerate(np.concatenate(stream.groups)):
        assert torch.equal(items[position][0], ds[int(k)][0])


def test_stream_reads_each_chunk_about_once(synthetic_cube, http_cube):
    url, requests = http_cube
    kwargs = dict(roi=(0, 48, 0, 32), patch_size=16, input_length=4, pred_length=4)
    chunk_keys = lambda: {p: n for p, n in requests.items() if "/sea_ice_conc/c/" in p}  # noqa: E731

    requests.clear()
    ds = _dataset(url, **kwargs)
    for _ in ds.stream(seed=3):
        pass
    streamed = chunk_keys()
    requests.clear()
    generator = torch.Generator().manual_seed(3)
    for _ in DataLoader(ds, batch_size=None, shuffle=True, generator=generator):
        pass
    per_item = chunk_keys()
    # Days 0..3 (time chunk 0) are in no window (5 and 6 are missing, a window spans 8
    # days); the other 7 time chunks x 3 x 2 spatial chunks are each read once.
    assert len(streamed) == len(per_item) == 7 * 3 * 2
    assert set(streamed.values()) == {1}
    assert sum(per_item.values()) > 3 * sum(streamed.values())


def test_an_item_reads_only_the_chunks_it_needs(http_cube):
    url, requests = http_cube
    ds = _dataset(url, roi=(8, 40, 4, 36), patch_size=(8, 12), input_length=2, pred_length=3)
    inputs, targets = ds.windows
    origins = ds.patch_origins
    for k in (0, len(ds) // 3, len(ds) - 1):
        window, patch = divmod(k, len(origins))
        py, px = origins[patch]
        frames = np.concatenate([inputs[window], targets[window]])
        rows = range((8 + py) // 16, (8 + py + 8 - 1) // 16 + 1)
        cols = range((4 + px) // 16, (4 + px + 12 - 1) // 16 + 1)
        expected = {f"c/{t}/{r}/{c}" for t in set(frames // 4) for r in rows for c in cols}
        requests.clear()
        ds[k]
        read = {p.split("/sea_ice_conc/")[1] for p in requests if "/sea_ice_conc/c/" in p}
        assert read == expected


def test_stream_refuses_random_patches(synthetic_cube):
    ds = _dataset(synthetic_cube, patch_size=8, random_patches=2)
    with pytest.raises(BadInput, match="random_patches"):
        ds.stream()



@pytest.mark.parametrize("preload", [False, True])
def test_stream_items_equal_map_style_items_preloaded_or_not(synthetic_cube, preload):
    ds = _dataset(synthetic_cube, patch_size=(24, 20), variables=["filled"], return_mask=True,
                  preload_data=preload)
    stream = SICStream(ds, shuffle=False)
    items = list(stream)
    assert ds.reader.is_open != preload  # the preloaded stream reads nothing more
    for position, k in enumerate(np.concatenate(stream.groups)):
        for part in range(3):
            assert torch.equal(items[position][part], ds[int(k)][part])


def test_stream_uses_only_the_plan_and_public_dataset_methods():
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(SICStream)))
    reached = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
               and node.attr.startswith("_") and not node.attr.startswith("__")
               and not (isinstance(node.value, ast.Name) and node.value.id == "self")}
    assert reached == set()


# ---------------------------------------------------------------- patch helpers


@pytest.mark.parametrize("shape,p", [((3, 1, 8, 12), 4), ((2, 5, 3, 6, 6), 3), ((1, 2, 2), 2)])
def test_fold_is_the_exact_inverse_of_unfold(shape, p):
    frames = torch.randn(shape)
    patches = unfold_patches(frames, p)
    *lead, c, h, w = shape
    assert patches.shape == (*lead, c * p * p, h // p, w // p)
    assert torch.equal(fold_patches(patches, p), frames)
    assert torch.equal(unfold_patches(fold_patches(patches, p), p), patches)
    # Channel c*p*p + i*p + j holds pixel (i, j) of each patch of channel c.
    np.testing.assert_array_equal(patches[..., c * p * p - 1, :, :].numpy(),
                                  frames[..., c - 1, p - 1::p, p - 1::p].numpy())


def test_patch_helpers_refuse_sizes_that_do_not_divide():
    with pytest.raises(BadInput, match="patch_size"):
        unfold_patches(torch.zeros(1, 1, 6, 6), 4)
    with pytest.raises(BadInput, match="patch_size"):
        fold_patches(torch.zeros(1, 3, 2, 2), 2)
    with pytest.raises(BadInput, match="patch_size"):
        unfold_patches(torch.zeros(1, 1, 6, 6), 0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,argument", [
    (dict(start_time=20240301), "start_time"),
    (dict(end_time=20240505), "end_time"),
    (dict(start_time=20240410, end_time=20240405), "end_time"),
    (dict(start_time="2024-13-01"), "start_time"),
    (dict(input_length=20, pred_length=15), "input_length/pred_length"),
    (dict(input_length=0), "input_length"),
    (dict(pred_gap=-1), "pred_gap"),
    (dict(roi=(0, 49, 0, 10)), "roi"),
    (dict(roi=(10, 10, 0, 10)), "roi"),
    (dict(roi=(0, 10)), "roi"),
    (dict(coarsen=5), "coarsen"),
    (dict(coarsen=0), "coarsen"),
    (dict(patch_size=50), "patch_size"),
    (dict(patch_stride=4), "patch_size"),
    (dict(variables=["sst"]), "variables"),
    (dict(target_variables=["fill_flag", "wind"]), "target_variables"),
    (dict(coarsen=2, variables=["fill_flag"]), "variables"),
    (dict(max_filled_fraction=1.5), "max_filled_fraction"),
    (dict(max_filled_fraction=0.0), "start_time/end_time"),  # leaves no window
])
def test_bad_arguments_name_themselves(synthetic_cube, kwargs, argument):
    params = dict(store=synthetic_cube, start_time=_day(0), end_time=_day(N_DAYS - 1),
                  input_length=3, pred_length=2, quality_cache=False)
    params.update(kwargs)
    with pytest.raises(BadInput, match=f"^{argument}:"):
        SICDataset(**params)


def test_a_store_that_is_not_a_cube(tmp_path):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(BadInput, match="^store:.*not a sicube cube"):
        SICDataset(tmp_path / "plain.zarr", 20240401, 20240410, 2, 1)
    with pytest.raises(BadInput, match="^store:"):
        SICDataset(tmp_path / "absent.zarr", 20240401, 20240410, 2, 1)


# ---------------------------------------------------------------- a cube from the builder


def test_on_a_built_cube(small_cube, archive):
    """conftest's `small_cube` (sicube.build over the sample archive) works end to end."""
    group = zarr.open_group(str(small_cube), mode="r")
    n_days = len(archive.days)
    missing = {archive.days.index(d) for d in archive.missing}
    ds = SICDataset(small_cube, archive.days[0], archive.days[-1], 2, 2, roi=(64, 192, 0, 128),
                    patch_size=64, max_filled_fraction=(1.0, 0.1), quality_cache=False,
                    return_mask=True)
    expected = [(i, t) for i, t in original_windows(n_days, 2, 2) if not missing & set(i + t)]
    assert ds.report.candidates == len(original_windows(n_days, 2, 2))
    assert ds.report.unobserved == ds.report.candidates - len(expected) > 0
    flag = group[cube.FLAG][:][:, 64:192, 0:128]
    ocean = group[cube.LAND][64:192, 0:128] == 0
    # Not an observation: filled, no neighbour, and the pole hole (ocean, set from its ring).
    share = (np.isin(flag, (1, 2, 4)) & ocean).sum((1, 2)) / ocean.sum()
    np.testing.assert_allclose(ds.report.filled_fraction, share)
    kept = [(i, t) for i, t in expected if share[t].max() <= 0.1]
    assert ds.windows[0].tolist() == [i for i, _ in kept]
    assert ds.report.too_filled_targets == len(expected) - len(kept) > 0
    conc = group[cube.CONC][:]
    inputs, targets = ds.windows
    x, y, mask = ds[len(ds) - 1]
    rows, cols = slice(64 + 64, 64 + 128), slice(64, 128)  # the last of 2 x 2 patches
    np.testing.assert_array_equal(x[:, 0].numpy(), conc[inputs[-1]][:, rows, cols])
    np.testing.assert_array_equal(y[:, 0].numpy(), conc[targets[-1]][:, rows, cols])
    np.testing.assert_array_equal(mask[0].numpy(), group[cube.LAND][rows, cols])
    _assert_same_batches(_batches(DataLoader(ds, batch_size=3)),
                         _batches(ds.loader(3, num_workers=2, multiprocessing_context="fork")))


@pytest.mark.parametrize("status", ["building", "failed: fill crashed"])
def test_an_unfinished_cube_is_refused_unless_allowed(small_cube, archive, tmp_path, status):
    from .test_cube import FINISH, unfinished_copy

    path = unfinished_copy(small_cube, tmp_path, status)
    span = (archive.days[0], archive.days[-1], 2, 1)
    with pytest.raises(cube.IncompleteCube) as caught:
        SICDataset(path, *span, quality_cache=False)
    assert f"state: {status}" in str(caught.value) and FINISH in str(caught.value)
    ds = SICDataset(path, *span, quality_cache=False, allow_incomplete=True)
    complete = SICDataset(small_cube, *span, quality_cache=False)
    assert len(ds) == len(complete) > 0
    np.testing.assert_array_equal(ds[0][0].numpy(), complete[0][0].numpy())
    # Workers reopen the store with the same choice; the stream reads through them.
    again = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(again[0][1].numpy(), complete[0][1].numpy())
    assert sum(1 for _ in SICStream(ds, shuffle=False)) == len(ds)
