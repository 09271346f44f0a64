"""A cube's whole life: updates from other sources, late files, crashes, readers in between.

Each test reproduces one way the cube used to lose data (issue 10) and checks the promise
that replaced it: `update` only adds, late files are found, no state lies, every crash
leaves a store that a rerun finishes, and the result equals a fresh build.
"""

from __future__ import annotations

import datetime as dt
import importlib
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
import zarr

from sicube.archive.synthetic import write_archive
from sicube.cli import main
from sicube.datacube import cube
from sicube.errors import BadInput
from sicube.kernels.fill import pole_hole_ring
from sicube.params import FillParams
from sicube.pipeline.build import build, update

from .conftest import ARCHIVE_END, ARCHIVE_START, SMALL_CUBE_CHUNKS

CHUNKS = SMALL_CUBE_CHUNKS  # 4 days x 64 x 64


def _arrays(store) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: group[name][:] for name in (*cube.CUBE_VARS, *cube.GRID_VARS, cube.OBSERVED)}


def _assert_same_cube(store, expected_store) -> None:
    got, expected = _arrays(store), _arrays(expected_store)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        assert got[name].tobytes() == expected[name].tobytes(), name


def _attrs(store) -> dict:
    return dict(zarr.open_group(str(store), mode="r", use_consolidated=False).attrs)


def _split(archive, where: Path, first: dt.date, last: dt.date) -> Path:
    """A folder holding only the archive's files of [first, last]."""
    for day, path in archive.files.items():
        if first <= day <= last:
            target = where / path.relative_to(archive.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    where.mkdir(exist_ok=True)
    return where


def _fresh(archive, store, start, end, mask_store) -> Path:
    build(start, end, store, source=archive.root, chunks=CHUNKS, mask_from=str(mask_store),
          progress=False)
    return store


# --- finding 1: update wiped observed days --------------------------------------------------


def test_update_from_a_folder_of_new_days_only_keeps_every_observed_day(archive, tmp_path):
    early_end = dt.date(2024, 4, 7)  # inside a time chunk (4..7): its days must stay
    early = _split(archive, tmp_path / "early", ARCHIVE_START, early_end)
    late = _split(archive, tmp_path / "late", early_end + dt.timedelta(days=1), ARCHIVE_END)
    store = tmp_path / "cube.zarr"
    build(ARCHIVE_START, early_end, store, source=early, chunks=CHUNKS, progress=False)
    before = _arrays(store)
    summary = update(store, ARCHIVE_END, source=late, progress=False)
    assert summary.exit_code == 0
    after = _arrays(store)
    n_old = before[cube.OBSERVED].size
    assert (after[cube.OBSERVED][:n_old] == before[cube.OBSERVED]).all()
    assert after[cube.RAW][:n_old].tobytes() == before[cube.RAW].tobytes()
    observed = [d for d in archive.files if ARCHIVE_START <= d <= ARCHIVE_END]
    assert summary.observed == sorted(observed)  # the summary counts what the cube holds
    _assert_same_cube(store, _fresh(archive, tmp_path / "fresh.zarr", ARCHIVE_START,
                                    ARCHIVE_END, store))
    attrs = _attrs(store)
    assert attrs[cube.SOURCE_DIRECTORY] == str(late.resolve())
    assert attrs["mask_span"].startswith(f"{ARCHIVE_START}/{early_end}")  # the mask was kept
    assert attrs[cube.STATUS] == cube.COMPLETE


def test_update_while_the_old_source_is_gone(archive, tmp_path, capsys):
    old = _split(archive, tmp_path / "old", ARCHIVE_START, dt.date(2024, 4, 9))
    store = tmp_path / "cube.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 9), store, source=old, chunks=CHUNKS, progress=False)
    before = _arrays(store)
    shutil.rmtree(old)
    code = main(["update", "--store", str(store), "--end", f"{ARCHIVE_END:%Y%m%d}", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is gone" in err and len(err.splitlines()) == 1
    assert _arrays(store)[cube.RAW].tobytes() == before[cube.RAW].tobytes()
    assert main(["update", "--store", str(store), "--end", f"{ARCHIVE_END:%Y%m%d}",
                 "--source", str(archive.root), "-q"]) == 0
    _assert_same_cube(store, _fresh(archive, tmp_path / "fresh.zarr", ARCHIVE_START,
                                    ARCHIVE_END, store))


def test_relative_source_is_recorded_absolute(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(archive.root.parent)
    store = tmp_path / "cube.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 3), store, source=archive.root.name, chunks=CHUNKS,
          progress=False)
    assert _attrs(store)[cube.SOURCE_DIRECTORY] == str(archive.root.resolve())
    monkeypatch.chdir(tmp_path)  # replayed from another folder: still the same source
    assert update(store, dt.date(2024, 4, 4), progress=False).exit_code == 0
    assert _arrays(store)[cube.OBSERVED].all()


# --- finding 3: late files ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["build", "update"])
def test_a_day_published_late_is_recovered(archive, tmp_path, how):
    late_day = dt.date(2024, 4, 10)
    source = _split(archive, tmp_path / "src", ARCHIVE_START, ARCHIVE_END)
    late_file = source / archive.files[late_day].relative_to(archive.root)
    late_file.unlink()
    store = tmp_path / "cube.zarr"
    first = build(ARCHIVE_START, ARCHIVE_END, store, source=source, chunks=CHUNKS,
                  progress=False)
    assert late_day in first.missing
    again = build(ARCHIVE_START, ARCHIVE_END, store, source=source, chunks=CHUNKS,
                  progress=False)
    assert again.nothing_to_do and "looked again" in again.text()
    shutil.copy(archive.files[late_day], late_file)  # published late
    if how == "build":
        summary = build(ARCHIVE_START, ARCHIVE_END, store, source=source, chunks=CHUNKS,
                        progress=False)
        expected = build(ARCHIVE_START, ARCHIVE_END, tmp_path / "fresh.zarr", source=source,
                         chunks=CHUNKS, progress=False)
        assert summary.observed == expected.observed
        _assert_same_cube(store, tmp_path / "fresh.zarr")  # mask included: a fresh build
    else:
        summary = update(store, progress=False)  # no --end: the newest file of the folder
        _assert_same_cube(store, _fresh(archive, tmp_path / "fresh.zarr", ARCHIVE_START,
                                        ARCHIVE_END, store))
    assert summary.recovered == [late_day] and "recovered" in summary.text()
    assert late_day not in summary.missing


def test_a_late_day_beside_a_day_still_missing_in_its_chunk_is_recovered(archive, tmp_path):
    """The folder is looked at for every day still missing, not only the ones that arrived:
    otherwise the chunk would wait for its other missing day and never be written."""
    late_day, still_missing = dt.date(2024, 4, 10), dt.date(2024, 4, 11)  # one time chunk
    source = _split(archive, tmp_path / "src", ARCHIVE_START, ARCHIVE_END)
    late_file = source / archive.files[late_day].relative_to(archive.root)
    late_file.unlink()
    (source / archive.files[still_missing].relative_to(archive.root)).unlink()
    store = tmp_path / "cube.zarr"
    first = build(ARCHIVE_START, ARCHIVE_END, store, source=source, chunks=CHUNKS,
                  progress=False)
    assert {late_day, still_missing} <= set(first.missing)
    shutil.copy(archive.files[late_day], late_file)  # published late
    summary = build(ARCHIVE_START, ARCHIVE_END, store, source=source, chunks=CHUNKS,
                    progress=False)
    assert summary.recovered == [late_day] and still_missing in summary.missing
    build(ARCHIVE_START, ARCHIVE_END, tmp_path / "fresh.zarr", source=source, chunks=CHUNKS,
          progress=False)
    _assert_same_cube(store, tmp_path / "fresh.zarr")


def test_a_day_that_failed_is_recovered_as_failed_before_not_published_late(archive, tmp_path):
    """A day the server answered with HTTP 500 or an HTML page was there all along: once
    read, it is reported as failed before; only a day that was missing (404) is late."""
    from sicube.archive.mirror import Mirror

    late_day, error_day, html_day = (dt.date(2024, 4, 10), dt.date(2024, 4, 3),
                                     dt.date(2024, 4, 8))
    served = _split(archive, tmp_path / "served", ARCHIVE_START, ARCHIVE_END)
    late_file = served / archive.files[late_day].relative_to(archive.root)
    late_file.unlink()
    store = tmp_path / "cube.zarr"
    with Mirror(served, faults={f"{error_day:%Y%m%d}": "500",
                                f"{html_day:%Y%m%d}": "html"}) as server:
        web = dict(base_url=server.base_url, raw_dir=tmp_path / "raw", chunks=CHUNKS,
                   progress=False)
        first = build(ARCHIVE_START, ARCHIVE_END, store, **web)
        assert set(first.failed) == {error_day, html_day} and late_day in first.missing
        shutil.copy(archive.files[late_day], late_file)  # published late
        server.set_faults({})  # the server answers again
        summary = build(ARCHIVE_START, ARCHIVE_END, store, **web)
    assert summary.recovered == [error_day, html_day, late_day]
    text = summary.text()
    assert f"recovered {late_day:%Y%m%d} (published late" in text
    assert f"recovered {error_day:%Y%m%d}, {html_day:%Y%m%d} (failed before" in text
    assert summary.recovered_after_failure == [error_day, html_day]


# --- finding 4 and 5: unfinished cubes, crashes inside a stage ------------------------------


def test_a_crash_in_the_fill_leaves_a_failed_cube_that_a_rerun_finishes(archive, tmp_path,
                                                                       monkeypatch, built):
    builder = importlib.import_module("sicube.pipeline.fill_stage")  # where the fill runs
    real = builder.fill_fraction_block
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("simulated: out of memory in the fill")
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "fill_fraction_block", crash_on_third)
    store = tmp_path / "cube.zarr"
    with pytest.raises(MemoryError):
        build(ARCHIVE_START, ARCHIVE_END, store, source=archive.root, chunks=CHUNKS,
              progress=False)
    status = _attrs(store)[cube.STATUS]
    assert status.startswith("failed") and "out of memory" in status
    with pytest.raises(cube.IncompleteCube, match="failed"):
        cube.open_cube(store)
    monkeypatch.setattr(builder, "fill_fraction_block", real)
    assert build(ARCHIVE_START, ARCHIVE_END, store, source=archive.root, chunks=CHUNKS,
                 progress=False).exit_code == 0
    _assert_same_cube(store, built)


def test_other_fill_parameters_restart_the_fill_and_keep_the_days(archive, tmp_path, capsys):
    store = tmp_path / "cube.zarr"
    args = ["build", "--start", f"{ARCHIVE_START:%Y%m%d}", "--end", f"{ARCHIVE_END:%Y%m%d}",
            "--store", str(store), "--source", str(archive.root), "--chunks", "4,64,64", "-q"]
    assert main(args) == 0
    code = main([*args, "--sigma", "3"])
    assert code == 2 and "--restart-fill" in capsys.readouterr().err
    assert main([*args, "--sigma", "3", "--restart-fill"]) == 0
    assert main([*args, "--sigma", "3"]) == 0  # now it is that cube's argument
    other = tmp_path / "other.zarr"
    build(ARCHIVE_START, ARCHIVE_END, other, source=archive.root, chunks=CHUNKS, sigma=3,
          progress=False)
    _assert_same_cube(store, other)


@pytest.fixture
def built(small_cube):
    return small_cube


# --- finding 6: every download failed --------------------------------------------------------


def test_every_download_failing_is_exit_1_naming_days_and_reason(archive, tmp_path, capsys):
    from sicube.archive.mirror import Mirror

    store = tmp_path / "c.zarr"
    with Mirror(archive.root, faults={"*": "500"}) as server:
        code = main(["build", "--start", "20240401", "--end", "20240402", "--store", str(store),
                     "--base-url", server.base_url, "--raw-dir", str(tmp_path / "raw"), "-q"])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED    20240401" in out and "HTTP 500" in out
    assert "no cube written" in out and not store.exists()


# --- finding 7: update without --end ---------------------------------------------------------


def test_update_without_end_stops_at_the_newest_file_and_gaps_are_refused(archive, tmp_path,
                                                                          capsys):
    store = tmp_path / "cube.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 8), store, source=archive.root, chunks=CHUNKS,
          progress=False)
    summary = update(store, progress=False)
    assert summary.span == (ARCHIVE_START, ARCHIVE_END)  # not yesterday: the newest file
    far = ARCHIVE_END + dt.timedelta(days=200)
    code = main(["update", "--store", str(store), "--end", f"{far:%Y%m%d}", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--allow-gap" in err and len(err.splitlines()) == 1
    assert _arrays(store)[cube.OBSERVED].size == (ARCHIVE_END - ARCHIVE_START).days + 1
    future = dt.date.today() + dt.timedelta(days=3)
    assert main(["update", "--store", str(store), "--end", f"{future:%Y%m%d}", "-q"]) == 2
    assert "future" in capsys.readouterr().err
    near = ARCHIVE_END + dt.timedelta(days=5)
    assert main(["update", "--store", str(store), "--end", f"{near:%Y%m%d}", "-q"]) == 0
    assert _arrays(store)[cube.OBSERVED].size == (near - ARCHIVE_START).days + 1


# --- finding 9: refused before any work; the lock ------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--space-window", "5000"], "larger than the grid"),
    (["--workers", "0"], "at least 1"),
    (["--chunks", "0,64,64"], "positive"),
])
def test_parameters_that_would_crash_later_are_refused_before_work(archive, tmp_path, capsys,
                                                                   args, message):
    store = tmp_path / "never.zarr"
    code = main(["build", "--start", "20240401", "--end", "20240403", "--store", str(store),
                 "--source", str(archive.root), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not store.exists()


def test_a_file_url_store_builds(archive, tmp_path):
    store = tmp_path / "url.zarr"
    summary = build(ARCHIVE_START, dt.date(2024, 4, 3), f"file://{store}", source=archive.root,
                    chunks=CHUNKS, progress=False)
    assert summary.exit_code == 0 and cube.open_cube(store)[cube.OBSERVED].values.all()


def test_the_lock_is_keyed_on_the_real_path(archive, tmp_path, capsys):
    real = tmp_path / "real.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 2), real, source=archive.root, progress=False)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    (tmp_path / "real.zarr.lock").write_text(f"{os.uname().nodename} {os.getpid()}")
    with pytest.raises(BadInput, match="another sicube build is running"):
        update(link, dt.date(2024, 4, 3), source=archive.root, progress=False)


def test_update_of_an_unfinished_build_is_refused_with_the_finishing_command(archive,
                                                                            tmp_path):
    store = tmp_path / "cube.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 3), store, source=archive.root, progress=False)
    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    group.attrs[cube.STATUS] = "failed: simulated"
    with pytest.raises(BadInput, match="sicube build"):
        update(store, dt.date(2024, 4, 4), source=archive.root, progress=False)


# --- the whole life -----------------------------------------------------------------------------


def _status(store: Path) -> str | None:
    try:
        return json.loads((store / "zarr.json").read_text())["attributes"][cube.STATUS]
    except (OSError, ValueError, KeyError):
        return None


class _Reader:
    """A training job's view between steps: what it may read, checked never to shrink."""

    def __init__(self):
        self.observed: dict[int, np.ndarray] = {}

    def look(self, store: Path) -> None:
        ds = cube.open_cube(store)
        observed = ds[cube.OBSERVED].values
        for i, raw in self.observed.items():
            assert observed[i], f"day {i} was observed and is not any more"
            np.testing.assert_array_equal(ds[cube.RAW][i].values, raw)
        for i in np.flatnonzero(observed):
            if i not in self.observed:
                self.observed[i] = ds[cube.RAW][i].values
                assert np.isfinite(ds[cube.CONC][i].values).all()  # observed = filled


@pytest.mark.slow
def test_a_cubes_life_build_then_daily_updates_with_faults_and_a_kill(tmp_path):
    """Build 30 days, then 10 daily updates from a faulty mirror: a day published late, a day
    failing then succeeding, a kill -9 during one update, a reader between updates. The cube
    ends equal to a fresh build with the same mask; no reader saw an observed day go."""
    from sicube.archive.mirror import Mirror

    full = write_archive(tmp_path / "full", 20240101, 20240209, step=16,
                         missing_days=["20240105", "20240120"], seed=11)
    served = tmp_path / "served"
    late_day = "20240203"
    for day, path in full.files.items():
        if f"{day:%Y%m%d}" != late_day:
            target = served / path.relative_to(full.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    store = tmp_path / "cube.zarr"
    reader = _Reader()
    with Mirror(served) as server:
        web = ["--base-url", server.base_url, "--raw-dir", str(tmp_path / "raw"), "-q"]
        assert main(["build", "--start", "20240101", "--end", "20240130", "--store",
                     str(store), "--chunks", "4,64,64", *web]) == 0
        reader.look(store)
        day = dt.date(2024, 1, 31)
        for _ in range(10):
            end = f"{day:%Y%m%d}"
            faults = {}
            if end == "20240202":
                faults = {"20240202": "500"}  # fails for a whole update ...
            if end == "20240204":
                faults = {"20240204": ["500", "500"]}  # ... and twice within one
            if end == "20240205":
                shutil.copy(full.files[dt.date(2024, 2, 3)],
                            served / "2024" / full.files[dt.date(2024, 2, 3)].name)
            server.set_faults(faults)
            args = ["update", "--store", str(store), "--end", end, *web]
            if end == "20240207":  # killed while it runs, then run again
                server.set_faults({"*": "trickle:0.5"})
                _kill_when_updating([sys.executable, "-m", "sicube", *args], store)
                assert _status(store) == "updating"
                reader.look(store)  # an interrupted update: readable through its old end
                server.set_faults({})
            code = main(args)
            assert code == (1 if end == "20240202" else 0), end
            reader.look(store)
            day += dt.timedelta(days=1)
    final = _arrays(store)
    assert final[cube.OBSERVED].sum() == len(full.files)
    fresh = tmp_path / "fresh.zarr"
    assert main(["build", "--start", "20240101", "--end", "20240209", "--store", str(fresh),
                 "--chunks", "4,64,64", "--source", str(full.root), "--mask", str(store),
                 "-q"]) == 0
    _assert_same_cube(store, fresh)


def _kill_when_updating(command: list[str], store: Path, timeout: float = 60) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _status(store) == "updating":
                time.sleep(0.2)  # well inside the slow downloads
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
    pytest.fail(f"update ended (code {proc.returncode}) before it could be killed")


# --- finding 2: the download cache is per server ----------------------------------------------


def test_two_servers_with_the_same_file_names_never_share_cached_files(archive, tmp_path,
                                                                       monkeypatch):
    from sicube.archive.mirror import Mirror
    from sicube.archive.sources import read_day

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default cache
    other = write_archive(tmp_path / "other", ARCHIVE_START, dt.date(2024, 4, 4), step=16,
                          missing_days=[], seed=5)  # same names, other data
    span = (ARCHIVE_START, dt.date(2024, 4, 4))
    with Mirror(archive.root) as a, Mirror(other.root) as b:
        build(*span, tmp_path / "a.zarr", base_url=a.base_url, chunks=CHUNKS, progress=False)
        summary = build(*span, tmp_path / "b.zarr", base_url=b.base_url, chunks=CHUNKS,
                        progress=False)
    assert summary.exit_code == 0
    raw = _arrays(tmp_path / "b.zarr")[cube.RAW]
    for i, day in enumerate(sorted(other.files)):
        np.testing.assert_array_equal(raw[i], read_day(other.files[day]).z)
    assert not np.array_equal(raw, _arrays(tmp_path / "a.zarr")[cube.RAW], equal_nan=True)


# --- the server down during a cron update ------------------------------------------------------


def test_update_with_the_server_down_says_so_and_keeps_the_cube(archive, tmp_path, capsys):
    from sicube.archive.mirror import Mirror

    store = tmp_path / "cube.zarr"
    with Mirror(archive.root) as server:
        build(ARCHIVE_START, dt.date(2024, 4, 8), store, base_url=server.base_url,
              raw_dir=tmp_path / "raw", chunks=CHUNKS, progress=False)
    before = _arrays(store)  # the server is gone now: its port refuses connections
    code = main(["update", "--store", str(store), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "127.0.0.1" in err
    after = _arrays(store)
    assert all(after[k].tobytes() == before[k].tobytes() for k in before)
    assert _attrs(store)[cube.STATUS] == cube.COMPLETE


# --- a full disk -----------------------------------------------------------------------------


def _limit_file_size(limit: int):
    """In the child: files may not grow past `limit` bytes, and writes past it fail with
    EFBIG instead of a signal, as on a disk that is full."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_the_rerun_finishes(archive, tmp_path, built):
    store = tmp_path / "cube.zarr"
    args = [sys.executable, "-m", "sicube", "build", "--start", f"{ARCHIVE_START:%Y%m%d}",
            "--end", f"{ARCHIVE_END:%Y%m%d}", "--store", str(store), "--source",
            str(archive.root), "--chunks", "4,64,64", "-q"]
    done = subprocess.run(args, capture_output=True, text=True,
                          preexec_fn=_limit_file_size(12_000))
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "too large" in err.lower() or "no space" in err.lower()
    assert subprocess.run(args, capture_output=True).returncode == 0
    _assert_same_cube(store, built)


def test_ctrl_c_while_the_cube_is_created_leaves_nothing_and_the_rerun_builds(
        archive, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # while the new store's cell areas are written

    monkeypatch.setattr(cube, "write_cell_area", interrupted)
    store = tmp_path / "cube.zarr"
    with pytest.raises(KeyboardInterrupt):
        build(ARCHIVE_START, ARCHIVE_END, store, source=archive.root, chunks=CHUNKS,
              progress=False)
    assert list(tmp_path.iterdir()) == []  # no store, no half-made temp folder, no lock
    monkeypatch.undo()
    summary = build(ARCHIVE_START, ARCHIVE_END, store, source=archive.root, chunks=CHUNKS,
                    progress=False)
    assert summary.exit_code == 0 and _attrs(store)[cube.STATUS] == cube.COMPLETE


def test_an_update_that_crashes_stays_readable_says_why_and_finishes(archive, tmp_path,
                                                                    monkeypatch):
    from sicube.analysis.report import info

    builder = importlib.import_module("sicube.pipeline.fill_stage")
    store = tmp_path / "cube.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 8), store, source=archive.root, chunks=CHUNKS,
          progress=False)
    before = _arrays(store)
    real = builder.fill_fraction_block

    def out_of_memory(*args, **kwargs):
        raise MemoryError("simulated: out of memory in the fill")

    monkeypatch.setattr(builder, "fill_fraction_block", out_of_memory)
    with pytest.raises(MemoryError):
        update(store, ARCHIVE_END, source=archive.root, progress=False)
    attrs = _attrs(store)
    assert attrs[cube.STATUS] == cube.UPDATING and "out of memory" in attrs[cube.LAST_ERROR]
    assert info(store).status.startswith("updating (stopped: MemoryError")
    ds = cube.open_cube(store)  # readable: every day it calls observed is filled
    n_old = before[cube.OBSERVED].size
    assert (ds[cube.OBSERVED].values[:n_old] == before[cube.OBSERVED]).all()
    assert not ds[cube.OBSERVED].values[n_old:].any()
    monkeypatch.setattr(builder, "fill_fraction_block", real)
    assert update(store, progress=False).exit_code == 0
    assert _attrs(store)[cube.STATUS] == cube.COMPLETE and not _attrs(store)[cube.LAST_ERROR]
    _assert_same_cube(store, _fresh(archive, tmp_path / "fresh.zarr", ARCHIVE_START,
                                    ARCHIVE_END, store))


# --- issue 20: bad input never changes a cube ------------------------------------------------


def _store_hashes(store: Path) -> dict[str, str]:
    """sha256 of every file of a local store, by its path inside it."""
    import hashlib

    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def early_cube(archive, tmp_path_factory) -> Path:
    """A complete cube of the archive's first eight days (read-only: tests copy it)."""
    store = tmp_path_factory.mktemp("early") / "cube.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 8), store, source=archive.root, chunks=CHUNKS,
          progress=False)
    return store


def _junk_future_day(source: Path, archive) -> str:
    (source / "2024" / "asi-AMSR2-n3125-20241231-v5.4.nc").write_text("junk\n")
    return "not a netCDF file"


def _truncated_new_day(source: Path, archive) -> str:
    path = source / archive.files[dt.date(2024, 4, 10)].relative_to(archive.root)
    os.truncate(path, path.stat().st_size // 2)
    return "cannot be opened as netCDF"


def _day_outside_the_sensors_record(source: Path, archive) -> str:
    # a good file, named as AMSR-E's (its record ended in 2011, and never had n3125)
    shutil.copy(archive.files[ARCHIVE_END], source / "2024" / "asi-n3125-20240413-v5.4.nc")
    return "outside the AMSR-E 2002-06-01..2011-10-04 on n6250, s6250 record"


def _another_grids_folder(source: Path, archive) -> str:
    shutil.rmtree(source)
    write_archive(source, ARCHIVE_START, ARCHIVE_END, step=16, missing_days=[], seed=4,
                  grid="s6250")
    return "holds no n3125 files, only s6250 (12 files)"


@pytest.mark.parametrize("spoil", [_junk_future_day, _truncated_new_day,
                                   _day_outside_the_sensors_record, _another_grids_folder])
def test_an_update_refused_for_a_bad_source_leaves_the_store_byte_identical(
        archive, early_cube, tmp_path, capsys, spoil):
    store = tmp_path / "cube.zarr"
    shutil.copytree(early_cube, store)
    source = _split(archive, tmp_path / "src", ARCHIVE_START, ARCHIVE_END)
    message = spoil(source, archive)
    before = _store_hashes(store)
    code = main(["update", "--store", str(store), "--source", str(source), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert _store_hashes(store) == before


def test_an_update_after_a_refused_one_adds_only_the_days_of_valid_files(archive, early_cube,
                                                                          tmp_path, capsys):
    """The issue's story: a junk file dated months ahead refused the update after the time
    axis had grown to its date; the next update then appended months of empty days."""
    store = tmp_path / "cube.zarr"
    shutil.copytree(early_cube, store)
    source = _split(archive, tmp_path / "src", ARCHIVE_START, ARCHIVE_END)
    junk = source / "2024" / "asi-AMSR2-n3125-20241231-v5.4.nc"
    junk.write_text("junk\n")
    assert main(["update", "--store", str(store), "--source", str(source), "-q"]) == 2
    junk.unlink()
    # another grid's files beside the cube's, the newest months ahead: not the cube's days
    write_archive(source / "south", dt.date(2024, 8, 20), dt.date(2024, 8, 20), step=16,
                  missing_days=[], grid="s6250")
    summary = update(store, source=source, progress=False)
    assert summary.span == (ARCHIVE_START, ARCHIVE_END) and summary.exit_code == 0
    assert "s6250 (1 file)" in summary.text()
    _assert_same_cube(store, _fresh(archive, tmp_path / "fresh.zarr", ARCHIVE_START,
                                    ARCHIVE_END, store))


def test_a_build_rerun_refused_for_a_bad_late_file_leaves_the_store_byte_identical(
        archive, tmp_path, capsys):
    source = _split(archive, tmp_path / "src", ARCHIVE_START, ARCHIVE_END)
    late = source / archive.files[dt.date(2024, 4, 10)].relative_to(archive.root)
    late.unlink()
    store = tmp_path / "cube.zarr"
    args = ["build", "--start", f"{ARCHIVE_START:%Y%m%d}", "--end", f"{ARCHIVE_END:%Y%m%d}",
            "--store", str(store), "--source", str(source), "--chunks", "4,64,64", "-q"]
    assert main(args) == 0
    late.write_bytes(b"<html>Service unavailable</html>")  # the missing day, now junk
    before = _store_hashes(store)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(late) in err and len(err.splitlines()) == 1, err
    assert _store_hashes(store) == before


def test_a_server_update_grows_the_cube_only_to_the_newest_valid_download(tmp_path):
    """The server's newest day is found by HEAD requests, which an HTML error page served
    for a file passes: the update ends at the newest day whose download validated."""
    from sicube.archive.mirror import Mirror

    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    first = yesterday - dt.timedelta(days=7)
    recent = write_archive(tmp_path / "recent", first, yesterday, step=16, missing_days=[],
                           seed=8)
    store = tmp_path / "cube.zarr"
    with Mirror(recent.root) as server:
        web = dict(base_url=server.base_url, raw_dir=tmp_path / "raw", progress=False)
        build(first, first + dt.timedelta(days=3), store, chunks=CHUNKS, **web)
        server.set_faults({f"{yesterday:%Y%m%d}": "html"})
        summary = update(store, **web)  # no --end: the newest day the server has
    assert summary.span == (first, yesterday - dt.timedelta(days=1))
    assert summary.exit_code == 0 and not summary.failed


def test_the_gap_guard_counts_only_the_cubes_grid(archive, early_cube, tmp_path, capsys):
    """Another grid's file months ahead is no file of the cube's: appending up to it is a gap."""
    store = tmp_path / "cube.zarr"
    shutil.copytree(early_cube, store)
    source = _split(archive, tmp_path / "src", ARCHIVE_START, ARCHIVE_END)
    write_archive(source / "south", dt.date(2024, 8, 20), dt.date(2024, 8, 20), step=16,
                  missing_days=[], grid="s6250")
    before = _store_hashes(store)
    code = main(["update", "--store", str(store), "--source", str(source), "--end", "20240820",
                 "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--allow-gap" in err and f"no file after {ARCHIVE_END}" in err, err
    assert _store_hashes(store) == before


def test_an_update_rewrites_only_the_chunks_its_refill_changes(archive, tmp_path):
    """Adding 9 April (the first day of a time chunk) refills 6-8 April, in the chunk before.
    That chunk's blocks the refill leaves as they were keep their stored files untouched
    (but those holding the pole hole and its ring, which is set after the fill); every
    block it changes is rewritten, and the cube equals a fresh build."""
    end = dt.date(2024, 4, 8)  # the end of time chunk 1 (5-8 April)
    store = tmp_path / "cube.zarr"
    build(ARCHIVE_START, end, store, source=archive.root, chunks=CHUNKS, progress=False)
    chunk_files = sorted(p for name in (cube.CONC, cube.FLAG)
                         for p in (store / name / "c" / "1").rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in chunk_files}
    group = zarr.open_group(str(store), mode="r")
    values_before = {name: group[name][4:8] for name in (cube.CONC, cube.FLAG)}
    hole = group[cube.POLE_HOLE][:].astype(bool)
    hole |= pole_hole_ring(hole, group[cube.LAND][:], FillParams().space_window)

    summary = update(store, end + dt.timedelta(days=1), source=archive.root, progress=False)

    assert summary.exit_code == 0 and summary.days_filled == 4  # 6-9 April
    _assert_same_cube(store, _fresh(archive, tmp_path / "fresh.zarr", ARCHIVE_START,
                                    end + dt.timedelta(days=1), store))
    group = zarr.open_group(str(store), mode="r")
    kept = rewritten = 0
    for path, stat in before.items():
        name, (_, _, iy, ix) = path.parts[-5], path.relative_to(store).parts[1:]
        chunks = group[name].chunks
        block = (slice(int(iy) * chunks[1], (int(iy) + 1) * chunks[1]),
                 slice(int(ix) * chunks[2], (int(ix) + 1) * chunks[2]))
        same = (group[name][(slice(4, 8), *block)].tobytes()
                == values_before[name][(slice(None), *block)].tobytes())
        untouched = (path.stat().st_mtime_ns, path.stat().st_ino) == stat
        if not same:
            assert not untouched, path  # a changed block is never left stale
            rewritten += 1
        elif not hole[block].any():
            assert untouched, path  # one the refill left as it was is not written again
            kept += 1
    assert kept and rewritten  # both happen on this archive
