"""The build on a Dask cluster whose workers share no disk with the client.

Workers are separate processes (a `distributed.LocalCluster`, 2 workers x 1 thread), each with
its own temporary folder; they download from the loopback mirror themselves. The client's
raw folder stays empty: no file reaches it. The store is a local path both see (the S3 server
fixture of issue 12 item 1 can take its place). The cube must equal the threaded local build
bit for bit, also when a worker process is killed mid-build (its nanny starts a new one).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
from pathlib import Path

import distributed
import numpy as np
import pytest
import zarr

from sicube.archive.mirror import Mirror
from sicube.archive.synthetic import write_archive
from sicube.datacube import cube
from sicube.datacube.store import open_store
from sicube.pipeline.build import STATE, build

START, END = dt.date(2024, 3, 1), dt.date(2024, 3, 20)  # 20 days: 5 time chunks of 4
MISSING = [dt.date(2024, 3, 6), dt.date(2024, 3, 13)]
CHUNKS = {"time": 4, "y": 64, "x": 64}  # 224 x 152 cells: 12 spatial chunks per fill batch
NAMES = (*cube.CUBE_VARS, *cube.GRID_VARS, cube.OBSERVED, cube.SENSOR, *cube.DAY_VARS,
         cube.CELL_AREA, cube.EXTENT, cube.AREA)
ATTRS = (cube.SOURCE_FILES, cube.MISSING_DAYS, cube.FAILED_DAYS, cube.STATUS,
         cube.SUSPICIOUS_DAYS)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("archive"), START, END, step=16,
                         missing_days=MISSING, seed=12)


@pytest.fixture(scope="module")
def mirror(archive):
    with Mirror(archive.root) as running:
        yield running


def _build(mirror, store: Path, raw_dir: Path, **kwargs):
    return build(START, END, store, base_url=mirror.base_url, raw_dir=raw_dir, chunks=CHUNKS,
                 progress=False, **kwargs)


@pytest.fixture(scope="module")
def local(mirror, tmp_path_factory):
    """The threaded local build: (store, its arrays, its day lists)."""
    root = tmp_path_factory.mktemp("local")
    summary = _build(mirror, root / "local.zarr", root / "raw")
    assert summary.exit_code == 0 and len(summary.missing) == len(MISSING)
    return _contents(root / "local.zarr")


def _contents(store: Path | str, storage_options: dict | None = None
              ) -> tuple[dict[str, bytes], dict]:
    group = zarr.open_group(open_store(store, storage_options=storage_options), mode="r")
    return ({name: group[name][:].tobytes() for name in NAMES},
            {name: group.attrs[name] for name in ATTRS})


def _cluster(workers: Path):
    """2 worker processes x 1 thread under nannies, each with its own folder under
    `workers`; yields (client, that folder)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  local_directory=str(workers), dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        yield client, workers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster for the module's tests (starting one costs seconds); none of them kills a
    worker, so each finds both workers as the last one left them."""
    yield from _cluster(tmp_path_factory.mktemp("workers"))


@pytest.fixture
def fresh_cluster(tmp_path):
    """A cluster of its own: for the test that kills a worker (the shared one stays whole) and
    the one that reads the scheduler's transition log (only its own build's tasks in it)."""
    yield from _cluster(tmp_path / "workers")


def _worker_folders(client) -> dict[str, str]:
    return client.run(lambda dask_worker: dask_worker.local_directory)


def _assert_same(store: Path, local) -> None:
    arrays, attrs = _contents(store)
    for name, data in local[0].items():
        assert arrays[name] == data, name
    assert attrs == local[1]
    assert attrs[cube.STATUS] == cube.COMPLETE


def _assert_no_file_here(raw_dir: Path, workers: Path) -> None:
    """Nothing reached the client's raw folder; nothing is left in the workers' folders."""
    assert not raw_dir.exists() or not any(raw_dir.rglob("*"))
    assert not list(workers.rglob("sicube-*")), "worker temporary folders left behind"


def test_cluster_build_fetches_on_workers_and_equals_the_local_build(
        mirror, local, cluster, tmp_path):
    client, workers = cluster
    folders = _worker_folders(client)
    assert len(set(folders.values())) == 2 and all(
        Path(f).is_relative_to(workers) for f in folders.values())
    before = sum(mirror.requests.values())
    raw_dir = tmp_path / "client-raw"
    summary = _build(mirror, tmp_path / "cluster.zarr", raw_dir, scheduler=client)
    assert summary.exit_code == 0
    assert sum(mirror.requests.values()) > before  # the workers downloaded
    _assert_no_file_here(raw_dir, workers)
    _assert_same(tmp_path / "cluster.zarr", local)
    # 12 spatial chunks per batch, 2 threads: one batch keeps both busy.
    assert summary.fill_in_flight == 12


@pytest.mark.slow
def test_cluster_build_into_an_object_store_equals_the_local_build(
        mirror, local, cluster, s3_server, tmp_path):
    """The no-shared-disk build with the store on the S3 server: the workers write their
    chunks to it with the storage options the client was given."""
    client, workers = cluster
    url = f"s3://{s3_server.bucket}/cluster-{tmp_path.name}.zarr"
    raw_dir = tmp_path / "client-raw"
    summary = _build(mirror, url, raw_dir, scheduler=client,
                     storage_options=s3_server.storage_options)
    assert summary.exit_code == 0
    _assert_no_file_here(raw_dir, workers)
    arrays, attrs = _contents(url, s3_server.storage_options)
    assert arrays == local[0] and attrs == local[1]


def _ingested(store: Path) -> int:
    """Days the client has recorded as ingested so far (0 before the store exists)."""
    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        json.loads(attrs[STATE])
        return len(cube.record_attr(attrs, cube.SOURCE_FILES, {}))
    except (OSError, ValueError, KeyError):
        return 0


def test_a_worker_killed_mid_build_is_replaced_and_the_cube_is_the_same(
        mirror, local, fresh_cluster, tmp_path):
    """After the first chunk is recorded, SIGKILL the worker process running an ingest task
    (days after the first chunk are served slowly, so one is running): its nanny starts a new
    process, the task runs again, and the cube equals the local build."""
    client, workers = fresh_cluster
    pids = client.run(os.getpid)
    later = [d for d in (START + dt.timedelta(n) for n in range(4, 20)) if d not in MISSING]
    mirror.set_faults({f"{d:%Y%m%d}": ["slow:1.0"] for d in later})
    store, raw_dir = tmp_path / "cluster.zarr", tmp_path / "client-raw"
    killed: dict[str, object] = {}

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _ingested(store):
            time.sleep(0.02)
        busy = [w for w, keys in client.processing().items()
                if any(str(k).startswith("sicube-ingest") for k in keys)]
        if busy:
            killed["pid"] = pids[busy[0]]
            killed["ingested"] = _ingested(store)
            os.kill(pids[busy[0]], signal.SIGKILL)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:
        summary = _build(mirror, store, raw_dir, scheduler=client)
    finally:
        killer.join()
        mirror.set_faults(None)
    assert "pid" in killed, "no ingest task was running after the first chunk"
    assert 0 < killed["ingested"] < 20 - len(MISSING)  # killed mid-ingest
    client.wait_for_workers(2, timeout=30)
    now = client.run(os.getpid)
    assert killed["pid"] not in now.values() and len(now) == 2  # the nanny replaced it
    assert summary.exit_code == 0
    _assert_no_file_here(raw_dir, workers)
    _assert_same(store, local)


def test_a_source_folder_on_a_shared_disk_is_read_by_the_workers(archive, local, cluster,
                                                                 tmp_path):
    """`--source` on a cluster: the workers read the folder themselves (it must be on a disk
    they share); the values equal the downloaded build's."""
    client, _ = cluster
    store = tmp_path / "folder.zarr"
    build(START, END, store, source=archive.root, chunks=CHUNKS, progress=False,
          scheduler=client)
    arrays, _ = _contents(store)
    for name in NAMES:
        assert np.array_equal(np.frombuffer(arrays[name], np.uint8),
                              np.frombuffer(local[0][name], np.uint8)), name


def _most_batches_processing(dask_scheduler) -> int:
    """The most fill batches the scheduler had handed to workers at one moment, from its
    transition log: a batch's task is `fill-batch-...` (with dask's finalize step fused in
    when the batch is one task), processing from its move to "processing" until it leaves.
    Runs on the scheduler (`client.run_on_scheduler`)."""
    busy, most = set(), 0
    for key, start, finish, *_ in dask_scheduler.transition_log:
        name = key[0] if isinstance(key, tuple) else key
        if not str(name).startswith("fill-batch"):
            continue
        if finish == "processing":
            busy.add(name)
        elif start == "processing":
            busy.discard(name)
        most = max(most, len(busy))
    return most


def test_fill_batches_run_at_once_to_keep_every_thread_busy(mirror, fresh_cluster, tmp_path):
    """One spatial chunk per batch and 2 threads: 4 batches in flight (2 tasks per thread),
    recorded as they finish in any order; the cube still equals the threaded build. The
    scheduler's own record shows fill tasks of several batches handed to the workers at
    once (one batch at a time would leave a thread idle). Not timed: a task of this small
    grid runs in ~20 ms, so when two ran on the workers is a matter of luck."""
    client, _ = fresh_cluster
    whole = {"time": 2, "y": 256, "x": 256}  # 10 time chunks, 5 fill batches of 1 task
    kwargs = dict(base_url=mirror.base_url, chunks=whole, progress=False)
    build(START, END, tmp_path / "local.zarr", raw_dir=tmp_path / "raw", **kwargs)
    summary = build(START, END, tmp_path / "cluster.zarr", raw_dir=tmp_path / "client-raw",
                    scheduler=client, **kwargs)
    assert summary.fill_in_flight == 4
    batches = client.run_on_scheduler(
        lambda dask_scheduler: {str(k[0] if isinstance(k, tuple) else k)
                                for k, *_ in dask_scheduler.transition_log
                                if str(k[0] if isinstance(k, tuple) else k
                                       ).startswith("fill-batch")})
    assert len(batches) == 5  # every batch's task went through the scheduler
    assert client.run_on_scheduler(_most_batches_processing) >= 2
    _assert_same(tmp_path / "cluster.zarr", _contents(tmp_path / "local.zarr"))


def test_update_on_the_cluster_equals_the_threaded_update(mirror, cluster, tmp_path):
    """`update` with a Client appends on the workers too: the same cube as a threaded update."""
    from sicube.pipeline.build import update

    client, workers = cluster
    cut = END - dt.timedelta(days=7)
    for name, scheduler in (("local", None), ("cluster", client)):
        store = tmp_path / f"{name}.zarr"
        build(START, cut, store, base_url=mirror.base_url, raw_dir=tmp_path / f"raw-{name}",
              chunks=CHUNKS, progress=False, scheduler=scheduler)
        summary = update(store, END, raw_dir=tmp_path / f"raw-{name}", progress=False,
                         scheduler=scheduler)
        assert summary.exit_code == 0
    _assert_no_file_here(tmp_path / "raw-cluster", workers)
    _assert_same(tmp_path / "cluster.zarr", _contents(tmp_path / "local.zarr"))
