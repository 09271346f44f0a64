"""The builder end to end on generated archives: layout, values, resume, update, refusals."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from sicube.archive.sources import read_day
from sicube.archive.synthetic import write_archive
from sicube.cli import main
from sicube.datacube import cube
from sicube.datacube.cube import FillFlag
from sicube.dates import day_range
from sicube.errors import BadInput
from sicube.pipeline import state as cube_state
from sicube.pipeline.build import STATE, build, update

from .conftest import (
    ARCHIVE_END,
    ARCHIVE_MISSING,
    ARCHIVE_START,
    ARCHIVE_STEP,
    SMALL_CUBE_CHUNKS,
    SMALL_CUBE_FILL,
    SMALL_CUBE_MASK_THRESHOLD,
)
from .pole_oracle import expected_cube, expected_pole_hole

CHUNKS = SMALL_CUBE_CHUNKS
FILL = SMALL_CUBE_FILL


def _build(archive, store, **kwargs):
    return build(ARCHIVE_START, ARCHIVE_END, store, source=archive.root, chunks=CHUNKS,
                 progress=False, **kwargs)


@pytest.fixture(scope="module")
def built(small_cube, archive):
    """The shared cube and the summary of an identical rerun (which only reports)."""
    return small_cube, _build(archive, small_cube)


def _raw_from_files(archive, days):
    """The source values on the calendar axis, NaN frames for days without a file."""
    frames = []
    for day in days:
        path = archive.files.get(day)
        frames.append(read_day(path).z if path else np.full(archive.shape, np.nan, np.float32))
    return np.stack(frames)


def _expected(raw, land, hole):
    """The seed's final steps after the reference fill (NaN -> 0, percent -> fraction,
    land -> 0), and the pole hole's rule (the ring's mean per day, flag 4)."""
    return expected_cube(raw, land, hole, FILL)


def _arrays(store) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: group[name][:] for name in (*cube.CUBE_VARS, *cube.GRID_VARS, cube.OBSERVED)}


def test_layout_follows_the_spec(built):
    store, summary = built
    ds = xr.open_zarr(store)  # no extra arguments
    days = list(day_range(ARCHIVE_START, ARCHIVE_END))
    assert [d.astype("datetime64[D]").item() for d in ds["time"].values] == days
    expected = {cube.CONC: (("time", "y", "x"), np.float32), cube.RAW: (("time", "y", "x"),
                np.float32), cube.FLAG: (("time", "y", "x"), np.uint8),
                cube.OBSERVED: (("time",), np.bool_), cube.LAND: (("y", "x"), np.uint8),
                cube.NAN_RATIO: (("y", "x"), np.float32)}
    for name, (dims, dtype) in expected.items():
        assert ds[name].dims == dims and ds[name].dtype == dtype, name
    assert ds["x"].dtype == np.float64 and ds["y"].dtype == np.float64
    assert ds[cube.CONC].attrs["standard_name"] == "sea_ice_area_fraction"
    assert ds[cube.CONC].attrs["units"] == "1" and ds[cube.RAW].attrs["units"] == "%"
    assert ds[cube.FLAG].attrs["flag_meanings"].split() == list(cube.FLAG_MEANINGS)
    assert ds.attrs["Conventions"] == "CF-1.9"  # the first to allow unsigned flag variables
    assert cube.record_attr(ds, "fill_parameters") == FILL
    assert ds.attrs["mask_threshold"] == SMALL_CUBE_MASK_THRESHOLD
    sources = cube.record_attr(ds, cube.SOURCE_FILES)
    assert sorted(sources) == sorted(f"{d:%Y%m%d}" for d in archive_days_present())
    assert all(len(v["sha256"]) == 64 for v in sources.values())
    assert summary.missing == ARCHIVE_MISSING and not summary.failed


def archive_days_present():
    return [d for d in day_range(ARCHIVE_START, ARCHIVE_END) if d not in ARCHIVE_MISSING]


def test_crs_is_read_without_hints(built):
    import cf_xarray  # noqa: F401  (declared test dependencies: a broken install fails)
    import rioxarray
    ds = xr.open_zarr(built[0])
    assert rioxarray and ds[cube.CONC].rio.crs.to_epsg() == 3411  # the files declare Hughes
    assert ds.cf.grid_mapping_names == {"polar_stereographic": ["polar_stereographic"]}


def test_raw_equals_the_source_files_bit_for_bit(built, archive):
    days = list(day_range(ARCHIVE_START, ARCHIVE_END))
    arrays = _arrays(built[0])
    expected = _raw_from_files(archive, days)
    assert arrays[cube.RAW].tobytes() == expected.tobytes()
    assert list(arrays[cube.OBSERVED]) == [d not in ARCHIVE_MISSING for d in days]


def test_mask_is_the_nan_frequency_of_observed_days(built, archive):
    arrays = _arrays(built[0])
    raw = _raw_from_files(archive, archive_days_present())
    ratio = np.isnan(raw).mean(axis=0)
    np.testing.assert_allclose(arrays[cube.NAN_RATIO], ratio, atol=1e-6)
    hole = expected_pole_hole(raw, "n3125", ARCHIVE_STEP)
    assert hole.sum() >= 4  # the cells around the pole, which lies on their corners
    np.testing.assert_array_equal(arrays[cube.POLE_HOLE], hole)
    land = (ratio >= SMALL_CUBE_MASK_THRESHOLD) & ~hole
    np.testing.assert_array_equal(arrays[cube.LAND], land.astype(np.uint8))
    assert 0.2 < arrays[cube.LAND].mean() < 0.7


@pytest.mark.slow
def test_filled_cube_equals_the_reference_fill_on_the_calendar_axis(built, archive):
    days = list(day_range(ARCHIVE_START, ARCHIVE_END))
    arrays = _arrays(built[0])
    raw = _raw_from_files(archive, days)
    conc, flags = _expected(raw, arrays[cube.LAND].astype(bool),
                            expected_pole_hole(raw, "n3125", ARCHIVE_STEP))
    np.testing.assert_allclose(arrays[cube.CONC], conc, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(arrays[cube.FLAG], flags)
    # Missing days are whole frames filled from their neighbours, not skipped.
    missing = days.index(ARCHIVE_MISSING[0])
    assert (arrays[cube.FLAG][missing] == FillFlag.FILLED).sum() > 1000
    assert built[1].cells_filled == int((flags == FillFlag.FILLED).sum())


def test_identical_rerun_does_nothing_and_says_so(built, archive, capsys):
    store = built[0]
    before = _arrays(store)
    assert _build(archive, store).nothing_to_do
    code = main(["build", "--start", f"{ARCHIVE_START:%Y%m%d}", "--end", f"{ARCHIVE_END:%Y%m%d}",
                 "--store", str(store), "--source", str(archive.root), "--chunks", "4,64,64",
                 "-q"])
    assert code == 0 and "nothing to do" in capsys.readouterr().out
    after = _arrays(store)
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)


def test_the_parameter_objects_stand_for_their_keywords(built, archive, tmp_path):
    from sicube import FillParams, QualityRules

    # the shared cube's own parameters as objects are the same arguments: an identical rerun
    assert _build(archive, built[0], fill=FillParams(**FILL), quality=QualityRules(),
                  sigma=FILL["sigma"]).nothing_to_do
    with pytest.raises(BadInput, match="other arguments"):
        _build(archive, built[0], fill=FillParams(**{**FILL, "sigma": 3.0}))
    # an object and a keyword that contradicts it, or not an object: refused, nothing written
    store = tmp_path / "never.zarr"
    for kwargs, match in [({"fill": FillParams(sigma=3), "sigma": 5}, "sigma=5 contradicts"),
                          ({"quality": QualityRules(k=4), "quality_rules": QualityRules()},
                           "quality and quality_rules differ"),
                          ({"fill": {"sigma": 3}}, "FillParams")]:
        with pytest.raises(BadInput, match=match):
            _build(archive, store, **kwargs)
        assert not store.exists()


def test_update_equals_a_fresh_build_with_the_same_mask(archive, tmp_path, built):
    first_end = ARCHIVE_START + dt.timedelta(days=6)  # ends inside a time chunk
    store = tmp_path / "grow.zarr"
    build(ARCHIVE_START, first_end, store, source=archive.root, chunks=CHUNKS, progress=False)
    summary = update(store, ARCHIVE_END, source=archive.root, progress=False)
    assert summary.span == (ARCHIVE_START, ARCHIVE_END) and not summary.nothing_to_do
    fresh = tmp_path / "fresh.zarr"
    build(ARCHIVE_START, ARCHIVE_END, fresh, source=archive.root, chunks=CHUNKS,
          mask_from=str(store), progress=False)
    grown, clean = _arrays(store), _arrays(fresh)
    for name in clean:
        assert grown[name].tobytes() == clean[name].tobytes(), name
    ds = xr.open_zarr(store)
    assert ds.sizes["time"] == (ARCHIVE_END - ARCHIVE_START).days + 1
    assert pd_days(ds)[-1] == ARCHIVE_END
    assert update(store, ARCHIVE_END, source=archive.root, progress=False).nothing_to_do


def test_a_daily_update_refills_only_the_days_its_new_day_reaches(archive, tmp_path):
    """Day by day from a cube ending inside a time chunk: each update fills its new day and
    the `time_window` days before it, not their whole time chunks (kept chunks' other days
    stay as stored), and the cube, its flag counts, extent and area included, equals a fresh
    build. So does a refill rerun after a kill that had written every block but recorded
    none (the kept days' counts are read from the store, not corrected by a difference)."""
    tw = 1
    store, fresh = tmp_path / "daily.zarr", tmp_path / "fresh.zarr"
    build(ARCHIVE_START, ARCHIVE_START + dt.timedelta(days=6), store, source=archive.root,
          chunks=CHUNKS, time_window=tw, progress=False)
    ends = [ARCHIVE_START + dt.timedelta(days=n) for n in (7, 8, 9)]
    for end in ends:  # days 7 (chunk 1's last), 8 (chunk 2's first) and 9
        summary = update(store, end, source=archive.root, progress=False)
        assert summary.days_filled == tw + 1, end
        assert f"this run filled {tw + 1} days" in summary.text()

    group = zarr.open_group(str(store), mode="r+")
    state = cube_state.read_state(group)
    assert state.refill == set() and state.filled == {0, 1, 2}
    state.refill = {7, 8, 9}  # as if killed after the refill's writes, before its record
    cube_state.save(group, state)
    assert update(store, ends[-1], source=archive.root, progress=False).days_filled == 3

    build(ARCHIVE_START, ends[-1], fresh, source=archive.root, chunks=CHUNKS, time_window=tw,
          mask_from=str(store), progress=False)
    grown, clean = _arrays(store), _arrays(fresh)
    for name in clean:
        assert grown[name].tobytes() == clean[name].tobytes(), name
    for name in (cube.EXTENT, cube.AREA):
        np.testing.assert_array_equal(zarr.open_array(str(store / name))[:],
                                      zarr.open_array(str(fresh / name))[:], err_msg=name)
    assert _state(store)["flag_counts"] == _state(fresh)["flag_counts"]


def test_killed_update_resumes_to_a_fresh_build(long_archive, tmp_path):
    common = ["--source", str(long_archive.root), "-q"]
    store = tmp_path / "grow.zarr"
    assert main(["build", "--start", "20240101", "--end", "20240115", "--store", str(store),
                 "--chunks", "2,128,128", *common]) == 0
    update_args = ["update", "--store", str(store), "--end", "20240209", *common]
    state = _kill_when(update_args, store, "update")
    assert state["updating_from"] == "2024-01-15"
    code = main(["update", "--store", str(store), "--end", "20240120", *common])
    assert code == 2  # another end while the first update is unfinished
    assert main(update_args) == 0
    fresh = tmp_path / "fresh.zarr"
    assert main(["build", "--start", "20240101", "--end", "20240209", "--store", str(fresh),
                 "--chunks", "2,128,128", "--mask", str(store), *common]) == 0
    grown, clean = _arrays(store), _arrays(fresh)
    for name in clean:
        assert grown[name].tobytes() == clean[name].tobytes(), name
    assert _state(store)["updating_from"] is None and _state(store)["status"] == cube.COMPLETE


def pd_days(ds):
    return [d.astype("datetime64[D]").item() for d in ds["time"].values]


def test_process_cluster_build_equals_threaded_build(archive, tmp_path, built):
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        summary = _build(archive, tmp_path / "cluster.zarr", scheduler=client)
        assert summary.dashboard
    on_cluster, threaded = _arrays(tmp_path / "cluster.zarr"), _arrays(built[0])
    for name in threaded:
        assert on_cluster[name].tobytes() == threaded[name].tobytes(), name


def test_processes_scheduler_gives_the_same_cube(archive, tmp_path, built):
    _build(archive, tmp_path / "proc.zarr", scheduler="processes", workers=2)
    assert _arrays(tmp_path / "proc.zarr")[cube.CONC].tobytes() == \
        _arrays(built[0])[cube.CONC].tobytes()


# --- killed builds ------------------------------------------------------------------------------


def _state(store: Path) -> dict | None:
    """The build record as the store holds it now, with the day lists and the status."""
    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        state = json.loads(attrs[STATE])
    except (OSError, ValueError, KeyError):
        return None
    return {**state, "observed": cube.record_attr(attrs, cube.SOURCE_FILES),
            "status": attrs[cube.STATUS]}


def _kill_when(args: list[str], store: Path, stage: str, timeout: float = 120) -> dict:
    """Run `sicube build` and SIGKILL it as soon as its state shows `stage` under way."""
    proc = subprocess.Popen([sys.executable, "-m", "sicube", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = _state(store)
            if state and _in_stage(state, stage):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return state
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
    pytest.fail(f"build ended (code {proc.returncode}) before it could be killed in {stage}")


def _in_stage(state: dict, stage: str) -> bool:
    if stage == "update":
        return state["updating_from"] and len(state["observed"]) > 16
    if stage == "download":
        return not state["mask_done"]
    if stage == "ingest":
        return len(state["observed"]) >= 1 and not state["mask_done"]
    return len(state["filled"]) >= 1 and state["status"] != cube.COMPLETE


@pytest.fixture(scope="module")
def long_archive(tmp_path_factory):
    """40 days on a finer grid, so each stage lasts long enough to be interrupted."""
    return write_archive(tmp_path_factory.mktemp("long"), 20240101, 20240209, step=8,
                         missing_days=["20240110", "20240111", "20240125"], seed=9)


@pytest.mark.parametrize("stage", ["ingest", "fill"])
def test_killed_build_resumes_to_the_same_arrays(long_archive, tmp_path, stage):
    args = ["--start", "20240101", "--end", "20240209", "--source", str(long_archive.root),
            "--chunks", "2,128,128", "-q"]
    killed = tmp_path / "killed.zarr"
    state = _kill_when(["build", "--store", str(killed), *args], killed, stage)
    assert main(["build", "--store", str(killed), *args]) == 0
    clean = tmp_path / "clean.zarr"
    assert main(["build", "--store", str(clean), *args]) == 0
    resumed, expected = _arrays(killed), _arrays(clean)
    for name in expected:
        assert resumed[name].tobytes() == expected[name].tobytes(), name
    assert _state(killed)["status"] == cube.COMPLETE
    assert not (tmp_path / "killed.zarr.lock").exists()
    assert state["observed"]  # it really was interrupted part-way


# --- refusals -----------------------------------------------------------------------------------


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def test_a_path_that_is_not_a_cube_is_refused_untouched(archive, tmp_path, capsys):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240402", "--store",
                     str(other), "--source", str(archive.root))
    assert code == 2 and "not a sicube cube" in err and len(err.splitlines()) == 1
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_other_arguments_on_an_existing_cube_are_refused(built, archive, capsys):
    before = _arrays(built[0])
    code, err = _cli(capsys, "build", "--start", f"{ARCHIVE_START:%Y%m%d}", "--end",
                     f"{ARCHIVE_END:%Y%m%d}", "--store", str(built[0]), "--source",
                     str(archive.root), "--sigma", "3")
    assert code == 2 and "other arguments" in err
    assert _arrays(built[0])[cube.CONC].tobytes() == before[cube.CONC].tobytes()


def test_a_second_build_on_a_running_store_is_refused(archive, tmp_path, capsys):
    store = tmp_path / "busy.zarr"
    lock = tmp_path / "busy.zarr.lock"
    lock.write_text(f"{os.uname().nodename} {os.getpid()}")  # this live process holds it
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240402", "--store",
                     str(store), "--source", str(archive.root))
    assert code == 2 and "another sicube build is running" in err
    assert not store.exists()


def test_a_stale_lock_from_a_killed_build_is_taken_over(archive, tmp_path):
    store = tmp_path / "stale.zarr"
    (tmp_path / "stale.zarr.lock").write_text(f"{os.uname().nodename} 999999999")
    summary = build("20240401", "20240402", store, source=archive.root, progress=False)
    assert summary.observed


def test_a_file_on_another_grid_is_refused_by_name(archive, tmp_path, capsys):
    source = tmp_path / "mixed"
    write_archive(source, 20240401, 20240402, step=16, missing_days=[])
    write_archive(source / "other", 20240403, 20240403, step=32, missing_days=[])
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240403", "--store",
                     str(tmp_path / "c.zarr"), "--source", str(source), "-q")
    assert code == 2 and "asi-AMSR2-n3125-20240403-v5.4.nc" in err and "grid" in err
    assert len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def two_grids(archive, tmp_path_factory) -> Path:
    """A folder of the archive's n3125 files beside four days of s6250 files."""
    mixed = tmp_path_factory.mktemp("mixed")
    shutil.copytree(archive.root, mixed / "north")
    write_archive(mixed / "south", 20240401, 20240404, step=16, missing_days=[], grid="s6250")
    return mixed


def test_a_folder_of_two_grids_without_grid_is_refused_naming_them(two_grids, tmp_path,
                                                                   capsys):
    store = tmp_path / "c.zarr"
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240404", "--store",
                     str(store), "--source", str(two_grids), "-q")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "several grids" in err and "n3125 (10 files)" in err and "s6250 (4 files)" in err
    assert "--grid" in err and not store.exists()
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240404", "--store",
                     str(store), "--source", str(two_grids), "--grid", "s3125", "-q")
    assert code == 2 and "no s3125 files" in err and len(err.splitlines()) == 1, err
    assert not store.exists()


def test_a_folder_of_two_grids_builds_the_grid_asked_for(two_grids, tmp_path, capsys):
    store = tmp_path / "c.zarr"
    code = main(["build", "--start", "20240401", "--end", "20240404", "--store", str(store),
                 "--source", str(two_grids), "--grid", "s6250", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "other grids: n3125 (10 files)" in out
    south = sorted((two_grids / "south").rglob("*.nc"))
    raw = _arrays(store)[cube.RAW]
    assert raw.shape == (4, *read_day(south[0]).z.shape)
    for i, path in enumerate(south):
        np.testing.assert_array_equal(raw[i], read_day(path).z)
    assert zarr.open_group(str(store), mode="r").attrs["source_grid"] == "s6250"


def test_a_build_with_a_bad_file_inside_its_span_writes_no_store(archive, tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(archive.root, source)
    bad = source / archive.files[dt.date(2024, 4, 10)].relative_to(archive.root)
    os.truncate(bad, bad.stat().st_size // 2)
    store = tmp_path / "c.zarr"
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240412", "--store",
                     str(store), "--source", str(source), "-q")
    assert code == 2 and str(bad) in err and len(err.splitlines()) == 1, err
    assert not store.exists()


@pytest.mark.parametrize("args, message", [
    (["--start", "20240431", "--end", "20240501"], "cannot read"),
    (["--start", "20240405", "--end", "20240401"], "before start"),
    (["--start", "20120101", "--end", "20120105", "--base-url",
      "https://data.seaice.uni-bremen.de/amsr2/asi_daygrid_swath/n3125/netcdf"], "begins"),
    (["--start", "20240401", "--end", "20240402", "--sigma", "0"], "sigma"),
    (["--start", "20240401", "--end", "20240402", "--time-window", "-1"], "time_window"),
    (["--start", "20240401", "--end", "20240402", "--mask-threshold", "1.5"], "threshold"),
    (["--start", "20240401", "--end", "20240402", "--mask", "/nonexistent/mask.nc"], "mask"),
    (["--start", "20240401", "--end", "20240402", "--base-url", "ftp://x"], "http"),
    (["--start", "20240401", "--end", "20240402", "--chunks", "8,x,1"], "chunks"),
])
def test_bad_build_input_is_one_line_and_exit_2(archive, tmp_path, capsys, args, message):
    if "--base-url" not in args:
        args = [*args, "--source", str(archive.root)]
    store = tmp_path / "never.zarr"
    code, err = _cli(capsys, "build", "--store", str(store), "-q", *args)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and not store.exists()


def test_an_unreachable_scheduler_is_refused_before_any_work(archive, tmp_path, capsys):
    store = tmp_path / "c.zarr"
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240402", "--store",
                     str(store), "--source", str(archive.root), "--scheduler",
                     "tcp://127.0.0.1:9", "-q")
    assert code == 2 and "no dask scheduler there" in err and len(err.splitlines()) == 1
    assert not store.exists()


def test_no_source_file_in_the_span_is_refused(archive, tmp_path, capsys):
    code, err = _cli(capsys, "build", "--start", "20200101", "--end", "20200103", "--store",
                     str(tmp_path / "c.zarr"), "--source", str(archive.root))
    assert code == 2 and "no source file" in err


def test_mask_export_writes_the_original_format(built, tmp_path, capsys):
    out = tmp_path / "land_mask.nc"
    assert main(["mask", "--store", str(built[0]), "--output", str(out)]) == 0
    with xr.open_dataset(out) as ds:
        assert ds[cube.LAND].dtype == np.uint8 and ds[cube.NAN_RATIO].dtype == np.float32
        assert ds[cube.LAND].dims == ("y", "x")
        np.testing.assert_array_equal(ds[cube.LAND].values, _arrays(built[0])[cube.LAND])
    code, err = _cli(capsys, "mask", "--store", str(tmp_path), "--output", str(out))
    assert code == 2 and "not a sicube cube" in err


def test_a_mask_on_another_grid_is_refused(archive, tmp_path):
    coarse = write_archive(tmp_path / "coarse", 20240401, 20240402, step=32, missing_days=[])
    build(20240401, 20240402, tmp_path / "coarse.zarr", source=coarse.root, progress=False)
    with pytest.raises(BadInput, match="does not match"):
        build(ARCHIVE_START, ARCHIVE_END, tmp_path / "m.zarr", source=archive.root,
              mask_from=tmp_path / "coarse.zarr", progress=False)
    assert not (tmp_path / "m.zarr").exists()


# --- through the loopback mirror ----------------------------------------------------------------


def test_build_through_a_faulty_mirror_equals_the_local_build(archive, mirror, tmp_path, built):
    mirror.set_faults({"20240402": ["503", "html"], "20240403": ["truncate"],
                       "20240409": ["drop"]})
    store = tmp_path / "web.zarr"
    summary = build(ARCHIVE_START, ARCHIVE_END, store, base_url=mirror.base_url,
                    raw_dir=tmp_path / "raw", chunks=CHUNKS, progress=False)
    assert summary.missing == ARCHIVE_MISSING and not summary.failed
    # aiohttp may resend a GET on a dropped connection by itself: 9 April need not count.
    assert {dt.date(2024, 4, 2), dt.date(2024, 4, 3)} <= set(summary.retried)
    assert summary.retried[dt.date(2024, 4, 2)] == 3 and "retried" in summary.text()
    web, local = _arrays(store), _arrays(built[0])
    for name in local:
        assert web[name].tobytes() == local[name].tobytes(), name
    ds = xr.open_zarr(store)
    assert ds.attrs["source_base_url"] == mirror.base_url
    kept = sorted(p.name for p in (tmp_path / "raw").rglob("*.nc"))
    assert kept == sorted(p.name for p in archive.files.values())


def test_a_failed_day_is_reported_then_fetched_on_rerun(archive, mirror, tmp_path, capsys):
    mirror.set_faults({"20240403": "500"})
    args = ["build", "--start", "20240401", "--end", "20240404", "--store",
            str(tmp_path / "c.zarr"), "--base-url", mirror.base_url, "--raw-dir",
            str(tmp_path / "raw"), "--chunks", "2,64,64", "-q"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED    20240403" in out and "1 failed" in out
    assert list(xr.open_zarr(tmp_path / "c.zarr")[cube.OBSERVED].values) == [1, 1, 0, 1]
    mirror.set_faults({})
    assert main(args) == 0
    assert "0 failed" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "c.zarr")
    assert ds[cube.OBSERVED].values.all()
    np.testing.assert_array_equal(ds[cube.RAW].values[2],
                                  read_day(archive.files[dt.date(2024, 4, 3)]).z)


def test_build_killed_while_downloading_resumes(long_archive, tmp_path):
    from sicube.archive.mirror import Mirror

    args = ["--start", "20240101", "--end", "20240209", "--chunks", "2,128,128", "-q"]
    with Mirror(long_archive.root, latency=0.05, faults={"*": "trickle:0.3"}) as slow:
        killed = tmp_path / "killed.zarr"
        web = ["--base-url", slow.base_url, "--raw-dir", str(tmp_path / "raw")]
        state = _kill_when(["build", "--store", str(killed), *args, *web], killed, "download")
        slow.set_faults({})
        assert main(["build", "--store", str(killed), *args, *web]) == 0
    assert len(state["observed"]) < 37  # killed before every day had arrived
    assert not list((tmp_path / "raw").rglob("*.part"))
    clean = tmp_path / "clean.zarr"
    assert main(["build", "--store", str(clean), *args, "--source", str(long_archive.root)]) == 0
    resumed, expected = _arrays(killed), _arrays(clean)
    for name in expected:
        assert resumed[name].tobytes() == expected[name].tobytes(), name


def _corrupt_data(path: Path) -> bytes:
    """Flip bytes three quarters into a file (in z's compressed data); return the original."""
    original = path.read_bytes()
    damaged = bytearray(original)
    at = len(damaged) * 3 // 4
    damaged[at:at + 64] = bytes(b ^ 0xFF for b in damaged[at:at + 64])
    path.write_bytes(bytes(damaged))
    return original


def test_a_download_whose_data_does_not_decode_is_a_failed_day(archive, tmp_path, capsys):
    import shutil

    from sicube.archive.mirror import Mirror

    served = tmp_path / "served"
    shutil.copytree(archive.root, served)
    bad = served / "2024" / "asi-AMSR2-n3125-20240402-v5.4.nc"
    original = _corrupt_data(bad)
    args = ["build", "--start", "20240401", "--end", "20240404", "--store",
            str(tmp_path / "c.zarr"), "--raw-dir", str(tmp_path / "raw"), "--chunks", "2,64,64",
            "-q"]
    with Mirror(served) as server:
        assert main([*args, "--base-url", server.base_url]) == 1
        assert "FAILED    20240402" in capsys.readouterr().out
        assert not (tmp_path / "raw" / "2024" / bad.name).exists()  # removed: fetched again
        bad.write_bytes(original)
        assert main([*args, "--base-url", server.base_url]) == 0
    ds = xr.open_zarr(tmp_path / "c.zarr")
    np.testing.assert_array_equal(ds[cube.RAW].values[1],
                                  read_day(archive.files[dt.date(2024, 4, 2)]).z)


def test_a_corrupt_download_that_arrives_first_is_a_failed_day(archive, tmp_path, capsys):
    import shutil

    from sicube.archive.mirror import Mirror

    served = tmp_path / "served"
    shutil.copytree(archive.root, served)
    _corrupt_data(served / "2024" / "asi-AMSR2-n3125-20240401-v5.4.nc")
    # The good days answer late, so the corrupt file is the first to arrive (it tells the grid).
    slow = {"20240402": "slow:0.5", "20240403": "slow:0.5"}
    with Mirror(served, faults=slow) as server:
        code = main(["build", "--start", "20240401", "--end", "20240403", "--store",
                     str(tmp_path / "c.zarr"), "--raw-dir", str(tmp_path / "raw"),
                     "--base-url", server.base_url, "--chunks", "2,64,64", "-q"])
    assert code == 1 and "FAILED    20240401" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "c.zarr")
    assert list(ds[cube.OBSERVED].values) == [False, True, True]


def test_a_local_file_whose_data_does_not_decode_is_refused(archive, tmp_path, capsys):
    import shutil

    source = tmp_path / "src"
    shutil.copytree(archive.root, source)
    _corrupt_data(source / "2024" / "asi-AMSR2-n3125-20240402-v5.4.nc")
    code, err = _cli(capsys, "build", "--start", "20240401", "--end", "20240404", "--store",
                     str(tmp_path / "c.zarr"), "--source", str(source), "-q")
    assert code == 2 and "asi-AMSR2-n3125-20240402-v5.4.nc" in err and "cannot be read" in err


def test_build_into_an_fsspec_memory_store_equals_the_local_cube(archive, built):
    store = "memory://sicube-tests/cube.zarr"
    summary = _build(archive, store)
    assert summary.observed and not summary.nothing_to_do
    remote = cube.open_cube(store)
    local = xr.open_zarr(built[0])
    for name in (*cube.CUBE_VARS, *cube.GRID_VARS):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    assert _build(archive, store).nothing_to_do


@pytest.mark.parametrize("storage", ["netcdf-default", "y-descending"])
def test_other_file_layouts_give_the_real_layouts_cube_bit_for_bit(tmp_path, built, storage):
    """The archive fixture is in the real (GDAL) layout; the same days stored the netCDF
    default way, or north to south, build the same cube."""
    other = write_archive(tmp_path / storage, ARCHIVE_START, ARCHIVE_END, step=ARCHIVE_STEP,
                          missing_days=ARCHIVE_MISSING, seed=3, storage=storage)
    _build(other, tmp_path / "other.zarr")
    got, expected = _arrays(tmp_path / "other.zarr"), _arrays(built[0])
    for name in expected:
        assert got[name].tobytes() == expected[name].tobytes(), name
