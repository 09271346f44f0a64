"""Where a build's work runs: one executor per backend, behind one interface.

`LocalExecutor` runs on this process: files arrive here (`ingest.arrivals`), two threads
write the time chunks (`ingest.run`) and the fill's Dask graphs run one batch at a time on
threads or processes. `ClusterExecutor` runs on a `distributed.Client`'s workers: each time
chunk is one task that fetches and writes it (`ingest.run_on_cluster`), a worker probes the
days this process must know about before writing (a new cube's grid, late days), and a
window of fill batches runs at once (`fill_window`). Either way this process plans and is
the one writer of the build's state. `open_executor` picks one for a `scheduler` argument
(the model: rechunker's `executors/`); `distributed` is imported only for a cluster.

The orchestration (`sicube.pipeline.build`) asks an executor for:

- `arrivals(src, days, progress, grid, held)`: what its `ingest` takes for those days;
- `first_grid(arrivals, until_found)`: the grid of the first file, for a new cube;
- `look(arrivals)`: the days' arrivals now, to decide before writing anything;
- `cell_areas(group, cells)`: the cell areas as the stages read them;
- `ingest(...)` and `fill_results(...)`: run the stages' tasks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sicube.archive.sources import GridCoords, read_grid
from sicube.datacube import cube
from sicube.datacube import store as store_location
from sicube.errors import BadInput, BadSourceFile
from sicube.params import OK
from sicube.pipeline import haloed, ingest
from sicube.pipeline.arguments import Source
from sicube.pipeline.fill_stage import FillBatchResult, FillJob
from sicube.pipeline.ingest import Arrival, ChunkResult
from sicube.pipeline.plan import FillBatch
from sicube.pipeline.summary import BuildSummary

log = logging.getLogger(__name__)

# Tasks in flight per worker thread during a cluster's fill: one running, one queued, so a
# thread never waits for the scheduler between tasks.
FILL_TASKS_PER_THREAD = 2

# (grid, CRS) of a source file, or None when no file arrived
FoundGrid = tuple[GridCoords, object] | None


@contextlib.contextmanager
def open_executor(scheduler, workers: int | None, summary: BuildSummary, store: str,
                  storage_options: dict | None = None) -> Iterator[LocalExecutor
                                                                | ClusterExecutor]:
    """The executor of a run: "threads" (default) or "processes" here, or the cluster of a
    given `distributed.Client` or a scheduler address (its dashboard in `summary`). `store`
    as the cluster's workers open it."""
    # The scheduler functions themselves, not their names: dask imports `distributed` (0.7 s)
    # to resolve a name, which a daily update would pay every time.
    if scheduler is None or scheduler == "threads":
        # The fill maps its blocks on these threads itself (`haloed`); the stages that still
        # use Dask (a new cube's cell areas, the mask) set it to the same threads
        # (`haloed.dask_on_threads`): a daily update never imports dask.
        with haloed.threads(workers):
            yield LocalExecutor()
    elif scheduler == "processes":
        import dask
        from dask import multiprocessing

        with dask.config.set(scheduler=multiprocessing.get, num_workers=workers):
            yield LocalExecutor()
    else:
        from distributed import Client

        # The client made current, not put in dask's config: a nanny in this process (a
        # LocalCluster's) copies that config into the worker it restarts, and a Client in
        # it cannot be pickled, so a killed worker would never come back.
        if isinstance(scheduler, Client):
            summary.dashboard = scheduler.dashboard_link
            with scheduler.as_current():
                yield ClusterExecutor(scheduler, store, storage_options)
            return
        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError, ValueError) as err:
            raise BadInput(f"--scheduler {scheduler}: no dask scheduler there ({err})") from err
        summary.dashboard = client.dashboard_link
        log.warning("dask dashboard: %s", client.dashboard_link)
        with client, client.as_current():
            yield ClusterExecutor(client, store, storage_options)


class LocalExecutor:
    """This process: files arrive here; the fill runs on its threads (`haloed`), or on the
    Dask scheduler `open_executor` set (processes)."""

    def arrivals(self, src: Source, days: list[dt.date], progress: bool,
                 grid: GridCoords | None, held: Sequence[Arrival] = ()) -> Iterator[Arrival]:
        """The days' files as they arrive here; `held`, already fetched, come first and are
        not fetched again."""
        if not held:
            return src.arrivals(days, progress, grid)
        got = {a.day for a in held}
        return _chain(held, src.arrivals([d for d in days if d not in got], progress, grid))

    def first_grid(self, arrivals: Iterator[Arrival], until_found: int
                   ) -> tuple[FoundGrid, list[Arrival], Iterator[Arrival]]:
        """(grid and CRS of the first file to arrive or None, the arrivals up to it, the
        arrivals for the ingest: those, then the rest)."""
        held: list[Arrival] = []
        for arrival in arrivals:
            held.append(arrival)
            if arrival.status == OK:
                # Structure only: the data are decoded at ingest, where a corrupt download
                # becomes a failed day (whichever file happens to arrive first).
                try:
                    found = read_grid(arrival.path)
                except BadSourceFile as err:
                    raise BadInput(f"{arrival.path}: {err}") from err
                return found, held, _chain(held, arrivals)
        return None, held, iter(held)

    def look(self, arrivals: Iterator[Arrival]) -> tuple[list[Arrival], Iterator[Arrival]]:
        """(every day's arrival, fetched now; the arrivals for the ingest: the same)."""
        looked = list(arrivals)
        return looked, iter(looked)

    def cell_areas(self, group, cells: np.ndarray | None) -> np.ndarray | None:
        """The cell areas (70 MB at n3125) for the day statistics and the fill's extent and
        area: in memory once and shared by the threads (a read per fill block costs more
        than its sums). `cells`: when the caller has them (it just made the cube)."""
        if cells is None and cube.CELL_AREA in group:
            cells = group[cube.CELL_AREA][:]
        return cells

    def ingest(self, group, days: list[dt.date], looked_for: list[int],
               kept: dict[int, list[int]], arrivals: Iterator[Arrival], grid: GridCoords,
               crs, *, will_write: Callable[[list[int]], None],
               record: Callable[[ChunkResult], None], progress: bool,
               cells: np.ndarray | None = None) -> ingest.NanTally:
        """Ingest the days `looked_for` (indexes into `days`) as they arrive, in two threads
        (`ingest.run`); `will_write(chunks)` before a chunk is written, `record` after."""
        return ingest.run(group, days, looked_for, kept, arrivals, grid, crs,
                          before_write=lambda c: will_write([c]), record=record,
                          progress=progress, cell_area=cells)

    def fill_results(self, todo: list[FillBatch], job: Callable[[FillBatch], FillJob],
                     summary: BuildSummary) -> Iterator[tuple[FillBatch, FillBatchResult]]:
        """Each batch with its result (its `job`'s), one batch after another: each already
        keeps every thread busy."""
        here = haloed.thread_count() is not None  # on threads: without Dask
        for batch in todo:
            work = job(batch)
            yield batch, work.run_here() if here else work.result(work.blocks.compute())


@dataclass(frozen=True)
class ClusterDays:
    """Days for a cluster's tasks to fetch and ingest (no file comes to this process)."""

    days: list[dt.date]
    fetch: ingest.Fetch
    grid: GridCoords | None


class ClusterExecutor:
    """A `distributed.Client`'s workers, and the store as they open it."""

    def __init__(self, client, store: str, storage_options: dict | None = None):
        self.client = client
        self.store = store
        self.storage_options = storage_options

    def open_group(self) -> Callable[[], object]:
        """A picklable opener of the store for read-write, for worker tasks."""
        return functools.partial(store_location.open_group_for_writing, self.store,
                                 storage_options=self.storage_options)

    def probe(self, days: list[dt.date], fetch: ingest.Fetch, grid: GridCoords | None,
              until_found: int = 0) -> ingest.GridProbe:
        """`ingest.probe_task` run on a worker."""
        return self.client.submit(ingest.probe_task, days, fetch, grid, until_found,
                                  pure=False).result()

    def arrivals(self, src: Source, days: list[dt.date], progress: bool,
                 grid: GridCoords | None, held: Sequence[Arrival] = ()) -> ClusterDays:
        """The days for the workers to fetch: `held` too (their files were a probe's,
        gone with its worker; the ingest tasks fetch them again, a few days)."""
        return ClusterDays(days, src.fetch, grid)

    def first_grid(self, arrivals: ClusterDays, until_found: int
                   ) -> tuple[FoundGrid, list[Arrival], ClusterDays]:
        """A worker fetches days, `until_found` at a time, until one has a file, and reads
        its grid: (grid and CRS or None, the days it looked at, the days for the ingest)."""
        probe = self.probe(arrivals.days, arrivals.fetch, None, until_found=until_found)
        if probe.error:
            raise BadInput(probe.error)
        found = (probe.grid, probe.crs) if probe.grid is not None else None
        return found, probe.arrivals, arrivals

    def look(self, arrivals: ClusterDays) -> tuple[list[Arrival], ClusterDays]:
        """(every day's arrival, fetched now by a worker; the days for the ingest)."""
        return self.probe(arrivals.days, arrivals.fetch, arrivals.grid).arrivals, arrivals

    def cell_areas(self, group, cells: np.ndarray | None):
        """The store's cell-area array: each worker reads its own block."""
        return group[cube.CELL_AREA] if cube.CELL_AREA in group else None

    def ingest(self, group, days: list[dt.date], looked_for: list[int],
               kept: dict[int, list[int]], arrivals: ClusterDays, grid: GridCoords,
               crs, *, will_write: Callable[[list[int]], None],
               record: Callable[[ChunkResult], None], progress: bool,
               cells=None) -> ingest.NanTally:
        """Ingest the days of `arrivals` (the days `looked_for`), one task per time chunk
        on the workers (`ingest.run_on_cluster`, whose tasks read their own cell areas);
        `will_write(chunks)` once, before any is submitted."""
        position = {day: i for i, day in enumerate(days)}
        return ingest.run_on_cluster(
            self.client, self.open_group(), days, [position[d] for d in arrivals.days], kept,
            group[cube.RAW].chunks[0], arrivals.fetch, grid, crs, before_submit=will_write,
            record=record, progress=progress)

    def fill_results(self, todo: list[FillBatch], job: Callable[[FillBatch], FillJob],
                     summary: BuildSummary) -> Iterator[tuple[FillBatch, FillBatchResult]]:
        """Each batch with its result (its `job`'s, made on a worker) as it finishes, a
        window of `fill_window` batches at once (in completion order); the tasks in flight
        in `summary.fill_in_flight`."""
        from distributed import as_completed

        pending = iter(todo)
        running = as_completed()
        batches = {}

        def submit() -> int:
            batch = next(pending, None)
            if batch is None:
                return 0
            work = job(batch)
            future = self.client.submit(work.result, self.client.compute(work.blocks),
                                        pure=False)
            batches[future.key] = batch
            running.add(future)
            return work.tasks

        tasks = submit()
        window = fill_window(self.client, tasks)
        summary.fill_in_flight = window * tasks
        for _ in range(window - 1):
            submit()
        for future in running:
            yield batches.pop(future.key), future.result()
            del future  # its flag counts are read: let the cluster forget them
            submit()


def fill_window(client, tasks_per_batch: int) -> int:
    """How many fill batches a cluster runs at once: enough for `FILL_TASKS_PER_THREAD`
    tasks per worker thread (each batch has one task per spatial chunk), at least one.

    Memory per worker stays bounded by its threads, not by the window: a worker runs one
    task per thread, each holding one haloed spatial block of a batch's read window
    (`FILL_BATCH_CHUNKS` x 8 days + 2 x time_window days, e.g. 30 x 540 x 540 float32 =
    35 MB, with the fill's float64 work arrays ~4x that: ~0.15 GB per thread on the default
    chunks); the loads wait in the scheduler's queue (distributed's root-task queuing), and
    a finished task's result is a few flag counts.
    """
    threads = sum(client.nthreads().values()) or 1
    return max(1, math.ceil(FILL_TASKS_PER_THREAD * threads / max(1, tasks_per_batch)))


def _chain(held: Sequence[Arrival], rest: Iterator[Arrival]) -> Iterator[Arrival]:
    yield from held
    yield from rest
