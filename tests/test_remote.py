"""Readers on a cube served over http:// (and file://), and datasets on a remote cube
(http:// and s3://) in DataLoader workers, epoch after epoch.

A training script opens a train and a validation dataset on one remote cube and alternates
their epochs, each in fresh DataLoader workers (fork or spawn). Every epoch must finish and
give the items a local copy of the cube gives: a forked worker that frees the file system
it inherited used to close the parent's pooled connections, and the parent's next request
then waited about 5 minutes for a timeout (see `sicube.datacube.store`). The S3 server (moto) is
only needed by the tests that use it: the rest run without s3fs.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import zarr
from torch.utils.data import DataLoader

from sicube.cli import main
from sicube.datacube.store import open_store
from sicube.ml.dataset import SICDataset, SICStream
from sicube.testing import serve_directory, synthetic_cube
from tests.conftest import (
    ARCHIVE_END,
    ARCHIVE_START,
    SMALL_CUBE_CHUNKS,
    SMALL_CUBE_FILL,
    SMALL_CUBE_MASK_THRESHOLD,
)

SPAN = [f"--start={ARCHIVE_START:%Y%m%d}", f"--end={ARCHIVE_END:%Y%m%d}"]
CHUNKS = "{time},{y},{x}".format(**SMALL_CUBE_CHUNKS)
FILL = [f"--time-window={SMALL_CUBE_FILL['time_window']}",
        f"--space-window={SMALL_CUBE_FILL['space_window']}",
        f"--alpha={SMALL_CUBE_FILL['alpha']:g}", f"--sigma={SMALL_CUBE_FILL['sigma']:g}",
        f"--mask-threshold={SMALL_CUBE_MASK_THRESHOLD:g}"]


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"sicube {command}: error: "), err
    return err


def _assert_same_arrays(one, two) -> None:
    """Every array of two Zarr groups equal, NaN for NaN, dtype for dtype."""
    one = zarr.open_group(one, mode="r") if not isinstance(one, zarr.Group) else one
    two = zarr.open_group(two, mode="r") if not isinstance(two, zarr.Group) else two
    names = sorted(name for name, _ in one.arrays())
    assert names == sorted(name for name, _ in two.arrays())
    for name in names:
        a, b = one[name][...], two[name][...]
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)

# The delay added to every answer of the remote cube's server, as a distant store has. Small:
# the hang these tests guard against (a request waiting ~5 minutes on a connection a forked
# worker closed) does not depend on it, and every one of the thousands of requests pays it.
LATENCY = 0.01

TRAIN = dict(start_time=20240401, end_time=20240408, input_length=2, pred_length=1)
VALIDATION = dict(start_time=20240407, end_time=20240412, input_length=2, pred_length=1)


@pytest.fixture(scope="module")
def local_cube(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    synthetic_cube(folder / "cube.zarr", n_days=12, shape=(32, 32), missing=(5,))
    return folder / "cube.zarr"


@pytest.fixture(scope="module")
def slow_http_cube(local_cube):
    """(URL, storage options) of the cube served over HTTP, LATENCY added to every answer."""
    with serve_directory(local_cube.parent, latency=LATENCY) as served:
        yield f"{served.url}/cube.zarr", None


@pytest.fixture(scope="module")
def slow_s3_cube(local_cube, s3_server):
    """(URL, storage options) of the same cube copied to the S3 server, read through a
    proxy that adds LATENCY and keeps connections alive, as a real S3 endpoint does (moto's
    own server closes each one)."""
    import s3fs

    from sicube.testing import delay_proxy

    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    fs.put(str(local_cube), f"{s3_server.bucket}/remote/cube.zarr", recursive=True)
    with delay_proxy(s3_server.endpoint, latency=LATENCY) as served:
        yield (f"s3://{s3_server.bucket}/remote/cube.zarr",
               {**s3_server.storage_options, "endpoint_url": served.url})


def _collect_often(worker_id: int) -> None:
    """A worker that collects garbage often, as one does in a long epoch: it frees early
    what it no longer uses, the copies inherited from the parent included."""
    gc.set_threshold(10)


def _epoch(dataset, context: str) -> list[bytes]:
    """One epoch in two fresh workers: every item as its tensors' bytes, sorted."""
    loader = DataLoader(dataset, batch_size=None, num_workers=2,
                        multiprocessing_context=context, worker_init_fn=_collect_often)
    return sorted(b"".join(t.numpy().tobytes() for t in item) for item in loader)


def _local_items(dataset: SICDataset) -> list[bytes]:
    return sorted(b"".join(t.numpy().tobytes() for t in dataset[i])
                  for i in range(len(dataset)))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("where", "context", "rounds"), [
    ("http", "fork", 5), ("s3", "fork", 5),
    # spawned workers inherit nothing, and each costs seconds to start here: fewer rounds
    pytest.param("http", "spawn", 2, marks=pytest.mark.slow)])
def test_train_and_validation_epochs_on_one_remote_cube_never_hang(
        request, local_cube, where, context, rounds):
    url, options = request.getfixturevalue(f"slow_{where}_cube")
    want = {name: _local_items(SICDataset(local_cube, **span))
            for name, span in (("train", TRAIN), ("validation", VALIDATION))}
    assert _epoch(SICStream(SICDataset(local_cube, **TRAIN), shuffle=False),
                  context) == want["train"]  # a local epoch first, as a script may do
    train = SICDataset(url, storage_options=options, **TRAIN)
    validation = SICDataset(url, storage_options=options, **VALIDATION)
    for _ in range(rounds):
        assert _epoch(train, context) == want["train"]
        assert _epoch(SICStream(validation, shuffle=False), context) == want["validation"]
    for _ in range(10):  # datasets made and dropped, over HTTP each in its own workers
        dataset = SICDataset(url, storage_options=options, **VALIDATION)
        if where == "http" and context == "fork":
            assert _epoch(dataset, context) == want["validation"]
        else:  # spawned workers, and s3fs in a new process, cost seconds each here
            assert _local_items(dataset) == want["validation"]
        del dataset


# In a script (not under pytest, which captures the log records aiohttp writes them as).
UNCLOSED_SCRIPT = """
import gc, sys
from torch.utils.data import DataLoader
from sicube.ml.dataset import SICDataset
for store in sys.argv[1:]:  # the local cube, then the remote one twice
    ds = SICDataset(store, 20240401, 20240412, input_length=2, pred_length=1)
    loader = DataLoader(ds.stream(), batch_size=None, num_workers=2, multiprocessing_context="fork",
                        worker_init_fn=lambda _: gc.set_threshold(10))
    assert len(list(loader)) == len(ds)
print("done")
"""


@pytest.mark.timeout(300)
def test_no_unclosed_session_is_reported(local_cube, slow_http_cube):
    """aiohttp prints "Unclosed client session" for a session collected open: a forked
    worker used to collect its parent's; a process must close only the ones it opened."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", UNCLOSED_SCRIPT, str(local_cube),
                           slow_http_cube[0], slow_http_cube[0]],
                          capture_output=True, text=True, timeout=150,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr[-2000:]
    assert "Unclosed" not in done.stderr, done.stderr[-2000:]


# ------------------------------------------------------------------ http:// and file://


@pytest.fixture(scope="module")
def http_cube(http_root, small_cube):
    import shutil

    folder, url = http_root
    shutil.copytree(small_cube, folder / "cube.zarr", dirs_exist_ok=True)
    return f"{url}/cube.zarr"


def test_readers_take_an_http_url(http_cube, small_cube, tmp_path, capsys):
    assert main(["info", http_cube]) == 0
    assert http_cube in capsys.readouterr().out  # never http:/host (a Path of the URL)
    assert main(["plot", "day", "--store", http_cube, "--date", "20240403", "-o",
                 str(tmp_path / "day.png")]) == 0
    for store in (http_cube, str(small_cube)):
        capsys.readouterr()
        assert main(["roi", "--store", store, *SPAN, "--ymin=100", "--ymax=160", "--xmin=40",
                     "--xmax=100"]) == 0
        assert main(["evaluate", "--store", store, "--hide-fraction=0.05"]) == 0
        (tmp_path / f"{store == http_cube}.txt").write_text(
            capsys.readouterr().out.replace(store, "STORE"))
    assert (tmp_path / "True.txt").read_text() == (tmp_path / "False.txt").read_text()
    _assert_same_arrays(zarr.open_group(open_store(http_cube), mode="r"), str(small_cube))


def test_bad_http_stores_are_one_line(http_root, capsys):
    _, url = http_root
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/cube.zarr"
    for store, expected in ((f"{url}/missing.zarr", "does not exist"),
                            (closed, "cannot reach the server")):
        for argv in (["info", store], ["evaluate", "--store", store],
                     ["plot", "mask", "--store", store, "-o", "/tmp/never.png"]):
            assert main(argv) == 2
            assert expected in _one_error_line(capsys, argv[0]), argv


def test_build_to_a_file_url(archive, small_cube, tmp_path, capsys):
    url = (tmp_path / "cube.zarr").as_uri()
    assert url.startswith("file:///")
    assert main(["build", *SPAN, "--store", url, "--source", str(archive.root),
                 f"--chunks={CHUNKS}", *FILL, "-q"]) == 0
    _assert_same_arrays(str(tmp_path / "cube.zarr"), str(small_cube))
    assert main(["info", url]) == 0
