"""The ingest stage: source files into the cube's `sea_ice_conc_raw`, a time chunk at a time.

It executes the part of a plan (`sicube.pipeline.plan`) that reads sources: the days to look for
arrive (at once from a folder, or as they download), and as soon as every looked-for day of
a time chunk has arrived the chunk is written whole, its days already observed copied from
the store itself. Decoding and writing run in two threads; the calling thread alone records
progress, so the state has one writer. On a Dask cluster (`run_on_cluster`) each time chunk
is one task that fetches its days and writes the chunk (`chunk_task`); the caller still
records every result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sicube.archive import products
from sicube.archive.products import GridCRS
from sicube.archive.sources import GridCoords, find_day_files, read_day, sha256_file
from sicube.datacube import cube
from sicube.errors import BadInput, BadSourceFile
from sicube.params import FAILED, MISSING, OK
from sicube.pipeline import mask, quality
from sicube.pipeline.summary import progress_bar


@dataclass
class Arrival:
    """A day's source: a validated file, or why there is none (missing = 404, failed = error)."""

    day: dt.date
    path: Path | None
    status: str  # OK, MISSING or FAILED
    error: str = ""
    sha256: str | None = None  # known when the downloader already hashed the file
    downloaded: bool = False
    attempts: int = 0
    url: str | None = None  # the URL that served a downloaded file (which host)
    version: str | None = None  # the product version of the file (v5.4, or a fallback)
    sensor: str | None = None  # amsr2 or amsre


def arrivals(days: list[dt.date], source: str | os.PathLike | None,
             base_url: str | tuple[str, ...] | None, raw_dir: Path, progress: bool,
             grid: GridCoords | None, *, grid_name: str | None = None,
             sensor: str = "auto") -> Iterator[Arrival]:
    """The days' files as they become available: at once from a folder, or as downloaded
    (from the hosts `base_url`, on grid `grid_name`, from the sensor chosen per day)."""
    if source is not None:
        files = find_day_files(source, grid_name)
        for day in days:
            path = files.get(day)
            parts = products.file_name_parts(path.name) if path else None
            yield Arrival(day, path, OK if path else MISSING,
                          "" if path else "no file in the source folder",
                          version=parts.version if parts else None,
                          sensor=parts.sensor if parts else None)
        return
    if not days:
        return
    from sicube.archive.download import iter_downloads

    # full_check=False: ingest decodes every file right after; decoding twice is wasted work.
    for record in iter_downloads(days, raw_dir, base_url=base_url, grid=grid_name,
                                 sensor=sensor, progress=progress, expected_grid=grid,
                                 full_check=False):
        yield _arrival(record)


def _arrival(record) -> Arrival:
    """The arrival of a downloader's `DayRecord`."""
    return Arrival(record.day, Path(record.path) if record.path else None, record.status,
                   record.error or "", record.sha256, downloaded=True,
                   attempts=record.attempts, url=record.source, version=record.version,
                   sensor=record.sensor)


@dataclass
class NanTally:
    """NaN counts per cell over the days newly observed in this run (feeds the mask)."""

    missing: np.ndarray
    days: set[str] = field(default_factory=set)


@dataclass
class ChunkResult:
    """What writing one time chunk found: each looked-for day's arrival and provenance."""

    chunk: int
    arrivals: list[Arrival]
    provenance: dict[str, dict]


def stat_cells(group, grid: GridCoords, crs: GridCRS,
               cell_area: np.ndarray | None = None) -> quality.StatCells:
    """Where the days' statistics are taken (`sicube.pipeline.quality`): the cells not land on the
    product's shipped coastline (fixed, unlike the cube's own mask, which is computed after
    ingest from the days being judged: so a first build, a resumed one and an update give a
    day the same statistics), with the cube's `cell_area` when it has one, else the
    nominal cell area. `cell_area`: the cube's, when the caller has it in memory."""
    land = mask.coastline_land(grid.x, grid.y, south=crs.south)
    area = cell_area
    if area is None and "cell_area" in group:
        area = group["cell_area"][:]
    return quality.StatCells.make(land, grid.x, grid.y, area)


def _decode(arrival: Arrival, grid: GridCoords, crs: GridCRS, out: np.ndarray,
            cells: quality.StatCells | None = None) -> dict | None:
    """Decode `arrival` into `out`; its provenance, or None when the file turned out bad.

    A downloaded file that does not decode is removed and its day marked failed (a rerun
    fetches it again); a bad file in a local --source folder is the user's input: BadInput.
    """
    try:
        day_field = read_day(arrival.path, grid, out=out, expected_crs=crs)
    except BadSourceFile as err:
        if not arrival.downloaded:
            raise BadInput(f"{arrival.path}: {err}") from err
        arrival.path.unlink(missing_ok=True)
        arrival.status, arrival.error = FAILED, str(err)
        return None
    provenance = {"name": arrival.path.name,
                  "sha256": arrival.sha256 or sha256_file(arrival.path),
                  "out_of_range_cells": day_field.out_of_range}
    # Which host served it, which version and which sensor (as the file's name says when
    # it came from a folder): the per-day record of where the data came from.
    parts = products.file_name_parts(arrival.path.name)
    provenance["version"] = arrival.version or (parts.version if parts else None)
    provenance["sensor"] = arrival.sensor or (parts.sensor if parts else None)
    if arrival.url:
        provenance["url"] = arrival.url
    if day_field.crs.ellipsoid != crs.ellipsoid:  # same projection, other ellipsoid: noted
        provenance["crs"] = day_field.crs.name
    if cells is not None:  # one pass over the decoded day, a few ms at full resolution
        provenance["stats"] = quality.day_stats(out, cells, day_field.out_of_range)
    return provenance


def write_chunk(group, chunk: int, days: list[dt.date], looked: list[Arrival],
                kept: list[int], grid: GridCoords, crs: GridCRS, tally: NanTally,
                tally_lock: threading.Lock, cells: quality.StatCells | None = None
                ) -> ChunkResult:
    """Write time chunk `chunk` whole: `kept` days (offsets in the chunk) copied from the store,
    arrived days decoded (with their statistics over `cells` in their provenance), every
    other day NaN.

    The chunk is put together and written a band of chunk rows at a time (~40 MB at full
    resolution), not as one block: a daily update's chunk is one new day among seven kept
    ones, and a whole block would be 280 MB of fresh memory, which costs a process more to
    touch than to decode the day (~1.7 ms per MB on the benchmark machine).
    """
    raw = group[cube.RAW]
    first_day = chunk * raw.chunks[0]
    n = min(raw.chunks[0], raw.shape[0] - first_day)
    rows = raw.chunks[1]
    provenance = {}
    new: list[int] = []  # offsets of the arrived days, in order, and their decoded fields
    decoded = np.empty((sum(a.status == OK for a in looked), *grid.shape), np.float32)
    # Days observed before keep the store's own values, never a source's: their first band
    # is read on a second thread while the arrived days decode here, each next band while
    # this one is written.
    with ThreadPoolExecutor(1) as reader:
        next_band = reader.submit(_kept_band, raw, first_day, n, kept, 0) if kept else None
        for arrival in looked:
            if arrival.status != OK:
                continue
            found = _decode(arrival, grid, crs, decoded[len(new)], cells)
            if found is not None:
                provenance[f"{arrival.day:%Y%m%d}"] = found
                new.append((arrival.day - days[first_day]).days)
        whole = new == list(range(n))  # every day arrived: the decoded days are the chunk
        observed = np.isin(np.arange(n), new)
        target = cube.for_writing(raw)
        for y0 in range(0, grid.shape[0], rows):
            y1 = min(y0 + rows, grid.shape[0])
            if whole:
                band = decoded[:, y0:y1]
            else:  # the kept days as stored (NaN elsewhere), then the arrived ones
                band = (next_band.result() if kept else
                        np.full((n, y1 - y0, grid.shape[1]), np.nan, np.float32))
                if kept and y1 < grid.shape[0]:
                    next_band = reader.submit(_kept_band, raw, first_day, n, kept, y1)
                band[new] = decoded[:len(new), y0:y1]
            _write_band(target, first_day, y0, band)
            with tally_lock:
                mask.add_missing(tally.missing[y0:y1], band, observed)
    with tally_lock:
        tally.days.update(provenance)
    return ChunkResult(chunk, looked, provenance)


def _kept_band(raw, first_day: int, n: int, kept: list[int], y0: int) -> np.ndarray:
    """Chunk rows `y0` .. of the `n` days from `first_day` as the store has them, NaN but
    on the offsets `kept` (the days observed before)."""
    band = raw[first_day:first_day + n, y0:y0 + raw.chunks[1]]
    band[np.isin(np.arange(n), kept, invert=True)] = np.nan
    return band


def _write_band(target, first_day: int, y0: int, band: np.ndarray) -> None:
    """Write `band` (days from `first_day`, chunk rows from `y0`) into the store's `target`,
    `WRITE_CHUNKS` chunks at a time: given a whole band, zarr encodes all its chunks at
    once, ~0.1 GB of buffers per writer; one at a time, a daily update's one chunk being
    written encodes on one thread."""
    xs = target.chunks[2] * WRITE_CHUNKS
    for x0 in range(0, band.shape[2], xs):
        target[first_day:first_day + band.shape[0], y0:y0 + band.shape[1], x0:x0 + xs] = \
            band[:, :, x0:x0 + xs]


# Chunks a band is written in at once: two keep a small machine's cores encoding.
WRITE_CHUNKS = 2


def run(group, days: list[dt.date], looked_for: list[int], kept: dict[int, list[int]],
        source: Iterator[Arrival], grid: GridCoords, crs: GridCRS, *,
        before_write: Callable[[int], None], record: Callable[[ChunkResult], None],
        progress: bool, cell_area: np.ndarray | None = None) -> NanTally:
    """Ingest the days `looked_for` (indexes into `days`) as they arrive from `source`.

    A chunk none of whose days arrived is not written (`record` still gets its arrivals);
    `before_write(chunk)` runs before a chunk's raw data are written, `record(result)`
    after, both in the calling thread. `kept[chunk]` are the offsets of its observed days;
    `cell_area` the cube's, when the caller has it in memory (else read from the store).
    """
    chunk = group[cube.RAW].chunks[0]
    index = {days[i]: i for i in looked_for}
    expected: dict[int, int] = {}
    for i in looked_for:
        expected[i // chunk] = expected.get(i // chunk, 0) + 1
    waiting: dict[int, list[Arrival]] = {}
    tally = NanTally(np.zeros(grid.shape, np.int32))
    tally_lock = threading.Lock()
    cells = stat_cells(group, grid, crs, cell_area) if looked_for else None
    bar = progress_bar(progress, total=len(looked_for), desc="ingest", unit="day", position=1)

    def finish(future: Future) -> None:
        result = future.result()
        record(result)
        bar.update(len(result.arrivals))

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: list[Future] = []
        for arrival in source:
            c = index[arrival.day] // chunk
            waiting.setdefault(c, []).append(arrival)
            if len(waiting[c]) < expected[c]:
                continue
            looked = sorted(waiting.pop(c), key=_by_day)
            if not any(a.status == OK for a in looked):
                # Nothing new: the chunk stays as it is (NaN where never written).
                done: Future = Future()
                done.set_result(ChunkResult(c, looked, {}))
                pending.append(done)
            else:
                before_write(c)
                pending.append(pool.submit(write_chunk, group, c, days, looked,
                                           kept.get(c, []), grid, crs, tally, tally_lock,
                                           cells))
            # At most two chunks in memory: when downloads outrun ingest, files wait on disk.
            while pending and (pending[0].done() or len(pending) > 2):
                finish(pending.pop(0))
        for future in pending:
            finish(future)
    bar.close()
    return tally


def _by_day(arrival: Arrival) -> dt.date:
    return arrival.day


# --- on a Dask cluster: each time chunk is one task that fetches and writes it ----------------


@dataclass(frozen=True)
class Fetch:
    """Where a worker task gets its days: a folder every worker can read (a shared disk), or
    hosts to download from (tried in order; `grid_name` and `sensor` as for `arrivals`)."""

    directory: str | None
    base_urls: tuple[str, ...] | None
    grid_name: str | None = None
    sensor: str = "auto"

    def arrivals(self, days: list[dt.date], tmp: Path,
                 grid: GridCoords | None) -> Iterator[Arrival]:
        """The days' files: read from the folder, or downloaded into `tmp`."""
        return arrivals(days, self.directory, self.base_urls, tmp, False, grid,
                        grid_name=self.grid_name, sensor=self.sensor)


def _worker_tmp() -> str | None:
    """The Dask worker's own folder (`local_directory`), else the system's temporary folder."""
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return None


def chunk_task(open_group: Callable[[], object], chunk: int, days: list[dt.date],
               looked_days: list[dt.date], kept: list[int], grid: GridCoords, crs: GridCRS,
               fetch: Fetch) -> tuple[ChunkResult, np.ndarray | None]:
    """One worker task: fetch the chunk's looked-for days into worker-local temporary space
    (removed after), write the chunk to the store (`write_chunk`); its result and the NaN
    counts of its new days (None when nothing arrived and nothing was written).

    Idempotent (the chunk is written whole from the store's kept days and the sources), so
    a task rerun after its worker died writes the same bytes. The counts come back as the
    smallest unsigned type that holds the chunk's length: 17 MB, not 35, on the full grid.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sicube-ingest-", dir=_worker_tmp()) as tmp:
        looked = sorted(fetch.arrivals(looked_days, Path(tmp), grid), key=_by_day)
        if not any(a.status == OK for a in looked):
            return ChunkResult(chunk, looked, {}), None
        tally = NanTally(np.zeros(grid.shape, np.int32))
        group = open_group()
        # The days' statistics as the threaded ingest takes them (made here, on the worker:
        # a lookup in the shipped coastline, cheaper than shipping the cells to every task).
        result = write_chunk(group, chunk, days, looked, kept, grid, crs, tally,
                             contextlib.nullcontext(), stat_cells(group, grid, crs))
    return result, tally.missing.astype(np.min_scalar_type(len(days) + 1))


@dataclass
class GridProbe:
    """What a probe task found: the days' arrivals (files gone), and the grid and CRS of the
    first good file, or why its grid could not be read."""

    arrivals: list[Arrival]
    grid: GridCoords | None = None
    crs: GridCRS | None = None
    error: str = ""


def probe_task(days: list[dt.date], fetch: Fetch, grid: GridCoords | None,
               until_found: int = 0) -> GridProbe:
    """One worker task: fetch `days` (in groups of `until_found`, stopping at the first group
    with a file, when given) into temporary space, read the grid of the first good file;
    the arrivals without their files. The builder asks it what it cannot know without a
    file: the grid of a new cube, or whether a late day has arrived at all."""
    import tempfile

    step = until_found or max(1, len(days))
    found = GridProbe([])
    with tempfile.TemporaryDirectory(prefix="sicube-probe-", dir=_worker_tmp()) as tmp:
        for i in range(0, len(days), step):
            looked = sorted(fetch.arrivals(days[i:i + step], Path(tmp), grid), key=_by_day)
            found.arrivals += looked
            first = next((a for a in looked if a.status == OK), None)
            if first is not None and found.grid is None:
                from sicube.archive.sources import read_grid

                try:
                    found.grid, found.crs = read_grid(first.path)
                except BadSourceFile as err:
                    found.error = f"{first.path.name}: {err}"
                if until_found:
                    break
    for arrival in found.arrivals:
        arrival.path = None  # gone with the worker's temporary folder
    return found


def run_on_cluster(client, open_group: Callable[[], object], days: list[dt.date],
                   looked_for: list[int], kept: dict[int, list[int]], chunk: int,
                   fetch: Fetch, grid: GridCoords, crs: GridCRS, *,
                   before_submit: Callable[[list[int]], None],
                   record: Callable[[ChunkResult], None], progress: bool) -> NanTally:
    """Ingest the days `looked_for` on the workers of `client`, one task per time chunk.

    Each task fetches its days itself and writes its chunk straight to the store
    (`chunk_task`); this process never sees a file. It plans, submits every chunk at once
    (`before_submit(chunks)` first, so a killed run knows which chunks may be half-written),
    and is the one writer of the state: `record(result)` runs here as each result comes
    back. Memory: a worker holds, per thread, one time chunk of the grid in float32 (the
    chunk's days x grid: 8 x 3584 x 2432 x 4 B = 0.28 GB at full resolution) and its
    downloaded files; a finished task's counts wait on its worker until gathered.
    """
    from distributed import as_completed

    wanted: dict[int, list[dt.date]] = {}
    for i in looked_for:
        wanted.setdefault(i // chunk, []).append(days[i])
    tally = NanTally(np.zeros(grid.shape, np.int32))
    if not wanted:
        return tally
    before_submit(sorted(wanted))
    run = uuid.uuid4().hex  # task keys unique to this run: a rerun must not reuse results
    # Sent once to every worker, not pickled into each of a decade's 457 tasks.
    days_f, grid_f = client.scatter([days, grid], broadcast=True)
    futures = [client.submit(chunk_task, open_group, c, days_f, looked, kept.get(c, []), grid_f,
                             crs, fetch, key=f"sicube-ingest-{c}-{run}",
                             pure=False)
               for c, looked in sorted(wanted.items())]
    bar = progress_bar(progress, total=len(looked_for), desc="ingest", unit="day", position=1)
    try:
        for _, (result, missing) in as_completed(futures, with_results=True):
            if missing is not None:
                tally.missing += missing
                tally.days.update(result.provenance)
            record(result)
            bar.update(len(result.arrivals))
    finally:
        client.cancel(futures)
        bar.close()
    return tally
