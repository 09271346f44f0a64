"""Versioned cubes in icechunk repositories (issue 23): one commit per run, snapshots, tags,
copy, kill -9 and two writers at once. Real repositories in tmp_path and on moto's S3."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from sicube.cli import main
from sicube.datacube import cube, versions
from sicube.errors import BadInput
from sicube.pipeline.build import build

from .conftest import ARCHIVE_END, ARCHIVE_START, SMALL_CUBE_CHUNKS
from .test_life import _split

CHUNKS = SMALL_CUBE_CHUNKS
EARLY_END = dt.date(2024, 4, 8)
# Attributes that name the store or the moment of the run: the only ones two builds differ in.
VOLATILE = {cube.FINISH, cube.HISTORY, cube.BUILD_TIME}


def _arrays(zstore) -> dict[str, np.ndarray]:
    group = zarr.open_group(zstore, mode="r", use_consolidated=False)
    return {name: group[name][...] for name in group.array_keys()}


def _attrs(zstore) -> dict:
    group = zarr.open_group(zstore, mode="r", use_consolidated=False)
    return {k: v for k, v in group.attrs.items() if k not in VOLATILE}


def _assert_same(store, expected, storage_options=None, attrs: bool = True) -> None:
    """Equal arrays, and equal attributes but for VOLATILE when `attrs` (an update records
    how its mask was made differently from a build given that mask)."""
    from sicube.datacube.store import open_store

    got = open_store(store, storage_options=storage_options)
    want = open_store(expected)
    a, b = _arrays(got), _arrays(want)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name
    if attrs:
        assert _attrs(got) == _attrs(want)


def _sicube(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sicube", *args], capture_output=True,
                          text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def halves(archive, tmp_path_factory):
    """Folders of the archive's days up to EARLY_END and after it."""
    root = tmp_path_factory.mktemp("halves")
    return (_split(archive, root / "early", ARCHIVE_START, EARLY_END),
            _split(archive, root / "late", EARLY_END + dt.timedelta(days=1), ARCHIVE_END))


@pytest.fixture(scope="module")
def plain_early(halves, tmp_path_factory):
    store = tmp_path_factory.mktemp("plain") / "early.zarr"
    build(ARCHIVE_START, EARLY_END, store, source=halves[0], chunks=CHUNKS, progress=False)
    return store


@pytest.fixture(scope="module")
def plain_whole(archive, plain_early, tmp_path_factory):
    """A fresh build of the whole span with the early cube's mask (what an update equals)."""
    store = tmp_path_factory.mktemp("plain") / "whole.zarr"
    build(ARCHIVE_START, ARCHIVE_END, store, source=archive.root, chunks=CHUNKS,
          mask_from=str(plain_early), progress=False)
    return store


def _icechunk_early(halves, where: Path) -> str:
    url = f"icechunk://{where / 'repo'}"
    build(ARCHIVE_START, EARLY_END, url, source=halves[0], chunks=CHUNKS, progress=False)
    return url


def test_build_equals_plain_zarr_an_update_adds_a_snapshot_and_old_snapshots_still_read(
        halves, plain_early, plain_whole, tmp_path):
    url = _icechunk_early(halves, tmp_path)
    _assert_same(url, plain_early)
    first = versions.log(url)
    assert "sicube build" in first[0].message and "added 8 days" in first[0].message
    assert first[0].days == f"{ARCHIVE_START}..{EARLY_END}"

    # A reader opening main in a loop while an update runs in another process: it never
    # fails and always sees a complete cube, the old one or the new one.
    proc = subprocess.Popen([sys.executable, "-m", "sicube", "update", "--store", url,
                             "--source", str(halves[1]), "-q"], stderr=subprocess.PIPE,
                            text=True)
    seen = set()
    while proc.poll() is None:
        ds = cube.open_cube(url)
        assert ds.attrs[cube.STATUS] == cube.COMPLETE
        assert ds.sizes["time"] in (8, 12)
        assert bool(ds[cube.OBSERVED].values[-1])  # the last day of either cube is observed
        seen.add(ds.sizes["time"])
        time.sleep(0.05)
    assert proc.wait() == 0, proc.stderr.read()
    assert 8 in seen
    _assert_same(url, plain_whole, attrs=False)

    log = versions.log(url)
    assert len(log) == len(first) + 1
    assert log[0].message.startswith("sicube update; added 4 days 2024-04-09..2024-04-12")
    assert log[0].days == f"{ARCHIVE_START}..{ARCHIVE_END}"
    old = cube.open_cube(url, snapshot=log[1].id)
    assert old.sizes["time"] == 8 and old.encoding["sicube_snapshot"] == log[1].id
    _assert_same(versions.at_snapshot(url, log[1].id), plain_early)
    assert cube.open_cube(url).encoding["sicube_snapshot"] == log[0].id


def _as_from_a_terminal() -> None:
    """A child started as a user's shell starts it: Ctrl-C (SIGINT) at its default, not
    ignored or blocked as the test worker may have inherited or left it (in CI's full suite
    the update, signalled this way, twice finished and exited 0 as if it never got the
    signal; it passed alone), and at a low priority, so that on busy cores this process sees
    its first chunks and signals it mid-work."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    os.nice(10)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_kill_9_during_an_update_leaves_main_and_the_rerun_completes(
        halves, plain_whole, tmp_path, how):
    url = _icechunk_early(halves, tmp_path)
    tip = versions.log(url)[0].id
    chunks = tmp_path / "repo" / "chunks"
    before = len(list(chunks.iterdir()))
    proc = subprocess.Popen([sys.executable, "-m", "sicube", "update", "--store", url,
                             "--source", str(halves[1]), "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_as_from_a_terminal)
    try:  # killed once it has written chunks of the new days into the repository
        deadline = time.monotonic() + 300
        while len(list(chunks.iterdir())) == before and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert proc.poll() is None, "the update ended before it could be killed"
        os.kill(proc.pid, how)  # Ctrl-C: the run records "interrupted", then stops
        assert proc.wait(120) == (130 if how == signal.SIGINT else -signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert versions.log(url)[0].id == tip
    assert cube.open_cube(url).sizes["time"] == 8
    assert main(["update", "--store", url, "--source", str(halves[1]), "-q"]) == 0
    _assert_same(url, plain_whole, attrs=False)


def test_snapshots_tags_and_one_line_errors_on_the_command_line(halves, tmp_path, capsys):
    url = _icechunk_early(halves, tmp_path)
    snapshot = versions.log(url)[0].id
    assert main(["log", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(snapshot) and "sicube build" in out[0]
    assert main(["tag", url, "first-model"]) == 0
    assert snapshot in capsys.readouterr().out
    assert cube.open_cube(url, snapshot="first-model").encoding["sicube_snapshot"] == snapshot
    assert main(["info", url, "--snapshot", "first-model"]) == 0
    assert "2024-04-08" in capsys.readouterr().out

    wrong = [(["info", url, "--snapshot", "NOTASNAPSHOT"], "--snapshot NOTASNAPSHOT: no "
              "snapshot or tag of that name"),
             (["log", f"icechunk://{tmp_path / 'none'}"], "does not exist (no icechunk "
              "repository there)"),
             (["tag", url, "first-model"], "tag first-model: cannot be made"),
             (["info", str(tmp_path), "--snapshot", "x"], "is not an icechunk repository"),
             (["update", "--store", versions.at_snapshot(url, snapshot)], "a snapshot is "
              "read-only")]
    for argv, text in wrong:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(BadInput, match="no snapshot or tag"):
        cube.open_cube(url, snapshot="0" * 20)
    for writer in (["update", "--store", url], ["build", "--start", "20240101", "--end",
                                                 "20240102", "--store", url]):
        # a command that writes does not offer --snapshot: a usage error, one line naming it
        assert main([*writer, "--snapshot", snapshot]) == 2
        err = capsys.readouterr().err
        assert err == (f"sicube {writer[0]}: error: unrecognized arguments: --snapshot "
                       f"{snapshot}\n"), err


def test_dataset_reads_one_snapshot_and_names_it(halves, tmp_path):
    pytest.importorskip("torch")
    from sicube.ml.dataset import SICDataset

    url = _icechunk_early(halves, tmp_path)
    tip = versions.log(url)[0].id
    ds = SICDataset(url, 20240401, 20240408, input_length=2, pred_length=1,
                    allow_unobserved=True, quality_cache=False)
    assert ds.snapshot == tip
    assert versions.split(ds.store)[1] == tip
    old = SICDataset(url, 20240401, 20240408, input_length=2, pred_length=1, snapshot=tip,
                     allow_unobserved=True, quality_cache=False)
    assert old.snapshot == tip
    np.testing.assert_array_equal(old[0][0].numpy(), ds[0][0].numpy())
    # icechunk does not survive a fork: the loader spawns its workers; a forked one says so
    batches = list(ds.loader(2, num_workers=1))
    np.testing.assert_array_equal(batches[0][0][0].numpy(), ds[0][0].numpy())
    from torch.utils.data import DataLoader

    forked = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(Exception, match="forked after its parent read one"):
        next(iter(forked))


def test_copy_moves_a_cube_into_icechunk_and_back(plain_early, tmp_path, capsys):
    url = f"icechunk://{tmp_path / 'repo'}"
    assert main(["copy", str(plain_early), url]) == 0
    _assert_same(url, plain_early)
    assert "sicube copy" in versions.log(url)[0].message
    back = tmp_path / "back.zarr"
    assert main(["copy", url, str(back)]) == 0
    _assert_same(back, plain_early)
    assert cube.open_cube(back).sizes["time"] == 8
    assert main(["copy", str(plain_early), url]) == 2
    assert "already holds a cube" in capsys.readouterr().err


def test_two_updates_at_once_on_s3_one_wins_the_other_names_the_conflict(
        halves, plain_whole, s3_server):
    url = f"icechunk+s3://{s3_server.bucket}/versions/cube"
    options = s3_server.storage_options
    build(ARCHIVE_START, EARLY_END, url, source=halves[0], chunks=CHUNKS, progress=False,
          storage_options=options)
    tip = versions.log(url, options)[0].id
    command = ["update", "--store", url, "--source", str(halves[1]), "-q",
               "--storage-options", json.dumps(options)]
    results: list[subprocess.CompletedProcess] = []
    runs = [threading.Thread(target=lambda: results.append(_sicube(*command)))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 2).stderr.strip()
    assert "conflict: another run committed to main" in loser and len(loser.splitlines()) == 1
    log = versions.log(url, options)
    assert log[1].id == tip and "sicube update" in log[0].message
    _assert_same(url, plain_whole, options, attrs=False)
