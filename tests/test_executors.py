"""The builder's executor seam (`sicube.pipeline.executors`): this process's threads or a
real `distributed.LocalCluster` answer the orchestration's questions alike, a fill batch's
typed result survives the trip from a worker, and the orchestration runs every stage
through the executor it opened."""

from __future__ import annotations

import contextlib
import importlib
import pickle
import shutil

import distributed
import numpy as np
import pytest

from sicube.archive.sources import find_day_files
from sicube.datacube import cube
from sicube.datacube.store import open_group_for_writing
from sicube.params import MISSING, OK
from sicube.pipeline import arguments, executors
from sicube.pipeline.executors import ClusterExecutor, LocalExecutor
from sicube.pipeline.fill_stage import FillBatchResult, excluded_days, fill_job, fill_layout
from sicube.pipeline.plan import fill_batches
from sicube.pipeline.state import read_state
from sicube.pipeline.summary import BuildSummary

from .conftest import ARCHIVE_END, ARCHIVE_MISSING, ARCHIVE_START, SMALL_CUBE_CHUNKS


@pytest.fixture(scope="module")
def client():
    """A real cluster in this process (workers on threads: they see this machine's disk)."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as running:
        yield running


def test_a_batch_result_is_the_sum_of_its_packed_blocks_and_pickles():
    n_chunks, n_days, n_flags = 2, 3, len(cube.FillFlag)
    rng = np.random.default_rng(1)
    counts = [rng.integers(0, 1000, (n_chunks, n_flags)) for _ in range(4)]
    sums = [rng.random((n_days, 2)) for _ in range(4)]
    blocks = np.concatenate([FillBatchResult.pack_block(c, s)
                             for c, s in zip(counts, sums, strict=True)], axis=1)
    result = FillBatchResult.from_blocks(blocks, n_chunks, n_days, with_area=True)
    assert result.flag_counts.dtype == np.int64
    assert (result.flag_counts == sum(counts)).all()
    assert np.allclose(result.extent, sum(s[:, 0] for s in sums))
    assert np.allclose(result.area, sum(s[:, 1] for s in sums))
    back = pickle.loads(pickle.dumps(result))
    assert (back.flag_counts == result.flag_counts).all()
    assert (back.extent == result.extent).all() and (back.area == result.area).all()
    without_area = FillBatchResult.from_blocks(
        np.concatenate([FillBatchResult.pack_block(c, None) for c in counts], axis=1),
        n_chunks, n_days, with_area=False)
    assert (without_area.flag_counts == sum(counts)).all() and without_area.extent is None


def test_both_executors_look_at_the_same_days_and_find_the_same_grid(archive, client):
    src = arguments.make_source(None, archive.root, None)
    days = [*ARCHIVE_MISSING, ARCHIVE_END]  # no file, no file, a file
    here, there = LocalExecutor(), ClusterExecutor(client, "unused")
    answers = []
    for executor in (here, there):
        looked, _ = executor.look(executor.arrivals(src, days, False, None))
        found, held, _ = executor.first_grid(executor.arrivals(src, days, False, None),
                                             until_found=2)
        answers.append(([(a.day, a.status) for a in looked], found, [a.day for a in held]))
    (looked_here, (grid_here, crs_here), held_here), (looked_there, (grid_there, crs_there),
                                                      held_there) = answers
    assert looked_here == looked_there
    assert [status for _, status in looked_here] == [MISSING, MISSING, OK]
    assert (grid_here.x == grid_there.x).all() and (grid_here.y == grid_there.y).all()
    assert crs_here == crs_there
    assert set(held_here) <= set(held_there) and ARCHIVE_END in held_here


def _fill_every_batch(executor, store) -> tuple[dict, np.ndarray]:
    """Every fill batch of the cube at `store` run by `executor`: (batch -> result, the
    filled concentration)."""
    group = open_group_for_writing(str(store))
    state = read_state(group)
    raw, params = group[cube.RAW], state.args.fill
    todo = fill_batches(raw.shape[0], raw.chunks[0], params.time_window)
    cells = executor.cell_areas(group, None)
    layout, drop = fill_layout(raw, params.space_window), excluded_days(state)

    def job(batch):
        return fill_job(group, batch, params, layout, cells, drop)

    summary = BuildSummary(store=str(store), span=(ARCHIVE_START, ARCHIVE_END))
    results = dict(executor.fill_results(todo, job, summary))
    return results, group[cube.CONC][:]


def test_both_executors_fill_every_batch_alike(small_cube, tmp_path, client):
    for name in ("here", "there"):
        shutil.copytree(small_cube, tmp_path / f"{name}.zarr")
    here, conc_here = _fill_every_batch(LocalExecutor(), tmp_path / "here.zarr")
    there, conc_there = _fill_every_batch(ClusterExecutor(client, str(tmp_path / "there.zarr")),
                                          tmp_path / "there.zarr")
    assert here.keys() == there.keys() and len(here) > 1
    for batch, result in here.items():
        assert isinstance(there[batch], FillBatchResult)  # made on the worker, sent back
        assert (result.flag_counts == there[batch].flag_counts).all()
        assert result.extent.tobytes() == there[batch].extent.tobytes()
        assert result.area.tobytes() == there[batch].area.tobytes()
    assert conc_here.tobytes() == conc_there.tobytes()


def test_the_orchestration_runs_every_stage_through_its_executor(archive, tmp_path,
                                                                   monkeypatch):
    builder = importlib.import_module("sicube.pipeline.build")  # the module, not the function
    calls: list[str] = []

    class Recording(LocalExecutor):
        def __getattribute__(self, name):
            if not name.startswith("_"):
                calls.append(name)
            return super().__getattribute__(name)

    real = executors.open_executor

    @contextlib.contextmanager
    def recording(*args, **kwargs):
        with real(*args, **kwargs):  # its dask scheduler
            yield Recording()

    monkeypatch.setattr(builder, "open_executor", recording)
    source = tmp_path / "source"
    shutil.copytree(archive.root, source)
    late = find_day_files(source, None)[ARCHIVE_END]  # published late: gone at first
    late.rename(tmp_path / late.name)
    store = tmp_path / "cube.zarr"
    summary = builder.build(ARCHIVE_START, ARCHIVE_END, store, source=source,
                            chunks=SMALL_CUBE_CHUNKS, progress=False)
    assert summary.exit_code == 0 and summary.cells_filled > 0 and ARCHIVE_END in summary.missing
    assert {"arrivals", "first_grid", "cell_areas", "ingest", "fill_results"} <= set(calls)
    calls.clear()
    (tmp_path / late.name).rename(late)
    summary = builder.update(store, progress=False)
    assert summary.recovered == [ARCHIVE_END]
    assert {"arrivals", "look", "cell_areas", "ingest", "fill_results"} <= set(calls)


def test_a_fill_batch_is_one_task_per_spatial_chunk(small_cube, tmp_path):
    # each task reads its own haloed window from the store: no halo-exchange tasks, so a
    # decade at full resolution stays ~8,000 tasks (benchmarks/fill_graph_tasks.py)
    group = open_group_for_writing(str(small_cube))  # nothing is computed or written
    state = read_state(group)
    raw, params = group[cube.RAW], state.args.fill
    layout = fill_layout(raw, params.space_window)
    (batch, *_) = fill_batches(raw.shape[0], raw.chunks[0], params.time_window)
    job = fill_job(group, batch, params, layout, group[cube.CELL_AREA][:], excluded_days(state))
    assert len(layout[0][0]) > 1 and len(layout[0][1]) > 1  # a halo on both axes
    assert job.tasks == len(layout[0][0]) * len(layout[0][1])
    assert len(job.blocks.__dask_graph__()) == job.tasks
