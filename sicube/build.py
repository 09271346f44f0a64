"""`sicube.build` and `sicube.update`: source files to a filled, masked, resumable Zarr cube.

Stages run in order: ingest (downloads or a local folder, written into `sea_ice_conc_raw`
one time chunk at a time as the days of that chunk arrive), mask (NaN frequency over
observed days, or a given mask), fill (the Gaussian fill through dask, one batch of time
chunks at a time). The store's group attributes record which time chunks each stage has
finished, so a killed build rerun with the same arguments redoes only unfinished work, and
every write covers whole Zarr chunks from one writer, so results never depend on timing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from sicube import __version__, cube, mask, products
from sicube.cache import cache_dir
from sicube.dates import DateLike, day_list_text, day_range, parse_date, parse_span
from sicube.errors import BadInput, BadSourceFile
from sicube.fill import FillFlag, fill_fraction_block, fill_parameters, merge_thin_chunks
from sicube.sources import GridCoords, find_day_files, read_day, read_grid, sha256_file

log = logging.getLogger(__name__)

STATE = "sicube_build"  # group attribute holding the build's progress
FILL_BATCH_CHUNKS = 2  # time chunks filled per resumable step


@dataclass
class Arrival:
    """A day's source: a validated file, or why there is none (missing = 404, failed = error)."""

    day: dt.date
    path: Path | None
    status: str  # "ok", "missing" or "failed"
    error: str = ""
    sha256: str | None = None  # known when the downloader already hashed the file
    downloaded: bool = False
    attempts: int = 0


@dataclass
class BuildSummary:
    """What a build or update did, for the one-screen summary."""

    store: str
    span: tuple[dt.date, dt.date]
    shape: tuple[int, int, int] = (0, 0, 0)
    observed: list[dt.date] = field(default_factory=list)
    missing: list[dt.date] = field(default_factory=list)
    failed: dict[dt.date, str] = field(default_factory=dict)
    retried: dict[dt.date, int] = field(default_factory=dict)  # day -> download attempts
    cells_filled: int = 0
    cells_unfilled: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    store_bytes: int = 0
    nothing_to_do: bool = False
    dashboard: str | None = None

    @property
    def exit_code(self) -> int:
        """0 when every day is observed or missing, 1 when some day failed."""
        return 1 if self.failed else 0

    def text(self) -> str:
        """The one-screen summary printed at the end of a command."""
        first, last = self.span
        if self.nothing_to_do:
            return f"{self.store}: already complete for {first} .. {last}; nothing to do"
        nt, ny, nx = self.shape
        lines = [
            f"cube      {self.store}",
            f"span      {first} .. {last}  ({nt} days, grid {ny} x {nx})",
            f"days      {len(self.observed)} observed, {len(self.missing)} missing, "
            f"{len(self.failed)} failed",
        ]
        if self.missing:
            lines.append("missing   " + day_list_text(self.missing))
        if self.retried:
            lines.append(f"retried   {len(self.retried)} downloads succeeded after faults: "
                         + ", ".join(f"{d:%Y%m%d} ({n} attempts)"
                                     for d, n in sorted(self.retried.items())[:6]))
        for day, error in sorted(self.failed.items()):
            lines.append(f"FAILED    {day:%Y%m%d}: {error}")
        lines.append(f"filled    {self.cells_filled:,} cells "
                     f"({self.cells_unfilled:,} with no observed neighbour, set to 0)")
        lines.append("time      " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        lines.append(f"size      {self.store_bytes / 1e6:,.1f} MB on disk")
        if self.dashboard:
            lines.append(f"dashboard {self.dashboard}")
        return "\n".join(lines)


# --- arguments -----------------------------------------------------------------------------------


def _check_source_args(base_url: str | None, source: str | os.PathLike | None) -> None:
    if base_url is not None and source is not None:
        raise BadInput("give either --base-url or --source, not both")
    if source is not None and not Path(source).is_dir():
        raise BadInput(f"--source {source}: no such folder")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise BadInput(f"--base-url {base_url!r}: must start with http:// or https://")


def default_raw_dir() -> Path:
    """Where downloaded files are kept between runs unless --raw-dir says otherwise."""
    return cache_dir("raw")


# --- store: lock, create, state -----------------------------------------------------------------


def _is_local(store: str) -> bool:
    return "://" not in store or store.startswith("file://")


@contextlib.contextmanager
def _build_lock(store: str) -> Iterator[None]:
    """Refuse a second build on the same store while one runs (a lock file beside the store)."""
    if not _is_local(store):
        log.warning("%s: remote store, no build lock; do not run two builds on it at once", store)
        yield
        return
    lock = Path(store.removeprefix("file://")).with_name(Path(store).name + ".lock")
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_is_live(lock):
                raise BadInput(f"{store}: another sicube build is running on it "
                               f"({lock.read_text().strip()}); wait for it or stop it") from None
            lock.unlink(missing_ok=True)  # left by a killed build
            continue
        except OSError as err:
            raise BadInput(f"{store}: cannot write beside the store ({err.strerror})") from err
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_is_live(lock: Path) -> bool:
    try:
        host, pid = lock.read_text().split()
        if host != socket.gethostname():
            return True  # cannot tell; play safe
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _open_group(store: str, mode: str = "r+"):
    """Open the store for building: fresh metadata, never the consolidated copy."""
    import zarr

    return zarr.open_group(store, mode=mode, use_consolidated=False)


def _exists(store: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(store)
    return fs.exists(path)


def _create_store(store: str, days: list[dt.date], grid: GridCoords, epsg: int,
                  chunks: dict | None, state: dict) -> None:
    """Write the empty cube; locally into a temp folder renamed at the end: all or nothing."""
    ds = cube.template(days, grid.x, grid.y, epsg, chunks=chunks, attrs={STATE: json.dumps(state)})
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        if _is_local(store):
            final = Path(store.removeprefix("file://"))
            tmp = final.with_name(f".{final.name}.creating-{os.getpid()}")
            ds.to_zarr(str(tmp), mode="w", compute=False, zarr_format=3)
            os.rename(tmp, final)
        else:
            ds.to_zarr(store, mode="w-", compute=False, zarr_format=3)


def _read_state(group) -> dict:
    return json.loads(group.attrs[STATE])


def _write_state(group, state: dict) -> None:
    group.attrs[STATE] = json.dumps(state)


def _consolidate(store) -> None:
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(store)


# --- ingest ---------------------------------------------------------------------------------------


def _read_block(arrivals: list[Arrival], grid: GridCoords) -> tuple[np.ndarray, dict]:
    """Stack the days of one time chunk (NaN for days with no file) and their provenance.

    A downloaded file that does not decode is removed and its day marked failed (a rerun
    fetches it again); a bad file in a local --source folder is the user's input: BadInput.
    """
    block = np.empty((len(arrivals), *grid.shape), np.float32)
    provenance = {}
    for i, arrival in enumerate(arrivals):
        if arrival.status == "ok":
            try:
                field_ = read_day(arrival.path, grid, out=block[i])
            except BadSourceFile as err:
                if not arrival.downloaded:
                    raise BadInput(f"{arrival.path}: {err}") from err
                arrival.path.unlink(missing_ok=True)
                arrival.status, arrival.error = "failed", str(err)
        if arrival.status != "ok":
            block[i] = np.nan
            continue
        provenance[f"{arrival.day:%Y%m%d}"] = {
            "name": arrival.path.name, "sha256": arrival.sha256 or sha256_file(arrival.path),
            "out_of_range_cells": field_.out_of_range,
        }
    return block, provenance


def _arrivals(days: list[dt.date], source: str | os.PathLike | None, base_url: str | None,
              raw_dir: str | os.PathLike | None, progress: bool,
              grid: GridCoords | None) -> Iterator[Arrival]:
    """The days' files as they become available: at once from a folder, or as downloaded."""
    if source is not None:
        files = find_day_files(source)
        for day in days:
            path = files.get(day)
            yield Arrival(day, path, "ok" if path else "missing")
        return
    from sicube.download import iter_downloads

    # full_check=False: ingest decodes every file right after; decoding twice is wasted work.
    raw = Path(raw_dir) if raw_dir else default_raw_dir()
    for record in iter_downloads(days, raw, base_url=base_url, progress=progress,
                                 expected_grid=grid, full_check=False):
        yield Arrival(record.day, Path(record.path) if record.path else None, record.status,
                      record.error or "", record.sha256, downloaded=True,
                      attempts=record.attempts)


def _first_file(arrivals: Iterator[Arrival], held: list[Arrival]) -> Arrival | None:
    """Pull arrivals until one has a file (keeping the others) to learn the grid."""
    for arrival in arrivals:
        held.append(arrival)
        if arrival.status == "ok":
            return arrival
    return None


@dataclass
class _NanTally:
    """NaN counts per cell over the observed days ingested in this run (feeds the mask)."""

    missing: np.ndarray
    days: int = 0
    chunks: set = field(default_factory=set)


def _ingest(group, state: dict, days: list[dt.date], arrivals: Iterator[Arrival],
            grid: GridCoords, summary: BuildSummary, progress: bool) -> _NanTally:
    """Write raw days chunk by chunk as soon as every day of a chunk has arrived."""
    chunk = group[cube.RAW].chunks[0]
    index = {day: i for i, day in enumerate(days)}
    todo = {c for c in range(_n_chunks(len(days), chunk)) if c not in state["ingested"]}
    waiting: dict[int, list[Arrival]] = {}
    tally = _NanTally(np.zeros(grid.shape, np.int32))
    # position=1: under the download bar, which runs at the same time
    bar = _bar(progress, total=sum(min(chunk, len(days) - c * chunk) for c in todo),
               desc="ingest", unit="day", position=1)

    counting = threading.Lock()

    def write(c: int, chunk_arrivals: list[Arrival]):
        block, provenance = _read_block(chunk_arrivals, grid)
        t0 = c * chunk
        raw = cube.for_writing(group[cube.RAW])
        _, ys, xs = raw.chunks
        # Chunk by chunk: given a whole block, zarr encodes all its chunks at once, ~0.1 GB
        # of buffers per writer.
        for y0 in range(0, block.shape[1], ys):
            for x0 in range(0, block.shape[2], xs):
                raw[t0:t0 + len(block), y0:y0 + ys, x0:x0 + xs] = \
                    block[:, y0:y0 + ys, x0:x0 + xs]
        observed = np.array([a.status == "ok" for a in chunk_arrivals])
        with counting:
            mask.add_missing(tally.missing, block, observed)
        return c, chunk_arrivals, provenance, observed

    def record(future) -> None:  # runs in this thread only: the state has one writer
        c, chunk_arrivals, provenance, observed = future.result()
        t0 = c * chunk
        group[cube.OBSERVED][t0:t0 + observed.size] = observed
        state["sources"].update(provenance)
        for a in chunk_arrivals:
            if a.status == "failed":
                state["failed"][f"{a.day:%Y%m%d}"] = a.error
        state["ingested"].append(c)
        _write_state(group, state)
        tally.days += int(observed.sum())
        tally.chunks.add(c)
        _release_memory()
        bar.update(observed.size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for arrival in arrivals:
            c = index[arrival.day] // chunk
            if c not in todo:
                continue
            waiting.setdefault(c, []).append(arrival)
            if arrival.attempts > 1 and arrival.status == "ok":
                summary.retried[arrival.day] = arrival.attempts
            if len(waiting[c]) == min(chunk, len(days) - c * chunk):
                pending.append(pool.submit(write, c, sorted(waiting.pop(c), key=_by_day)))
            # At most two chunks in memory: when downloads outrun ingest, files wait on disk.
            while pending and (pending[0].done() or len(pending) > 2):
                record(pending.pop(0))
        for future in pending:
            record(future)
    bar.close()
    _account(state, days, summary)
    return tally


def _by_day(arrival: Arrival) -> dt.date:
    return arrival.day


def _account(state: dict, days: list[dt.date], summary: BuildSummary) -> None:
    observed = {parse_date(k) for k in state["sources"]}
    failed = {parse_date(k): v for k, v in state["failed"].items()}
    summary.observed = [d for d in days if d in observed]
    summary.failed = {d: failed[d] for d in days if d in failed}
    summary.missing = [d for d in days if d not in observed and d not in failed]


def _n_chunks(n: int, chunk: int) -> int:
    return -(-n // chunk)


def _bar(progress: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(disable=not progress, **kwargs)


# --- mask and fill --------------------------------------------------------------------------------


def _make_mask(group, state: dict, grid: GridCoords, mask_from: str | None,
               threshold: float, tally: _NanTally) -> None:
    """Store land_mask and nan_ratio: given, counted during this run's ingest, or read back."""
    if mask_from is not None:
        given = mask.load_mask(mask_from, grid)
        land, ratio = given.land_mask, given.nan_ratio
    else:
        if len(tally.chunks) == _n_chunks(group[cube.RAW].shape[0], group[cube.RAW].chunks[0]):
            ratio = mask.ratio_from_counts(tally.missing, tally.days)
        else:  # a resumed build saw only part of the days: count them from the store
            observed = group[cube.OBSERVED][:]
            ratio = mask.nan_ratio(da.from_zarr(group[cube.RAW]), observed).compute()
        land = mask.land_from_ratio(ratio, threshold)
    group[cube.NAN_RATIO][:] = ratio
    group[cube.LAND][:] = land
    state["mask_done"] = True
    _write_state(group, state)


def _fill(group, state: dict, params: dict, summary: BuildSummary, progress: bool) -> None:
    """Fill the time chunks not yet filled, a batch at a time, recording each batch."""
    chunk, nt = group[cube.RAW].chunks[0], group[cube.RAW].shape[0]
    batches = [c for c in range(0, _n_chunks(nt, chunk), FILL_BATCH_CHUNKS)
               if c not in state["filled"]]
    bar = _bar(progress, total=len(batches), desc="fill", unit="batch")
    for c in batches:
        t0, t1 = c * chunk, min(nt, (c + FILL_BATCH_CHUNKS) * chunk)
        counts = _fill_batch(group, t0, t1, params).compute()
        state["flag_counts"][str(c)] = [int(n) for n in counts.reshape(-1, len(FillFlag)).sum(0)]
        state["filled"].append(c)
        _write_state(group, state)
        _release_memory()
        bar.update(1)
    bar.close()
    _count_flags(state, summary)


def _fill_batch(group, t0: int, t1: int, params: dict) -> da.Array:
    """Lazily fill days [t0, t1) into `sea_ice_conc` and `fill_flag`; the flag counts per block.

    Each task reads one spatial chunk of the batch's days and `time_window` days either side,
    gets its `space_window` halo from its neighbours through `map_overlap`, and writes whole
    Zarr chunks of both outputs. Every batch reads the same number of days (at the ends of
    the span the window shifts inwards rather than shrinks), so the graph and the memory of
    a batch are the same whatever the span and wherever the batch lies in it.
    """
    raw = group[cube.RAW]
    nt = raw.shape[0]
    tw, sw = params["time_window"], params["space_window"]
    window = FILL_BATCH_CHUNKS * raw.chunks[0] + 2 * tw
    a = max(0, min(t0 - tw, nt - window))
    b = min(nt, a + window)
    spatial = tuple(merge_thin_chunks(c, sw)
                    for c in da.core.normalize_chunks(raw.chunks[1:], raw.shape[1:]))
    source = da.from_zarr(raw, chunks=(tuple(n for n in (a, b - a, nt - b) if n), *spatial))
    land = da.from_zarr(group[cube.LAND], chunks=spatial)[None]
    return da.map_overlap(
        _fill_store_block, source[a:b], land, depth={0: 0, 1: sw, 2: sw}, boundary="none",
        trim=False, align_arrays=False, dtype=np.int64,
        chunks=((1,), (1,) * len(spatial[0]), (len(FillFlag),) * len(spatial[1])),
        params=params, core_t=(t0 - a, t1 - a), t0=t0,
        bounds=tuple(np.cumsum((0, *c)) for c in spatial),
        targets=(cube.for_writing(group[cube.CONC]), cube.for_writing(group[cube.FLAG])),
    )


def _fill_store_block(block, land, block_info=None, *, params, core_t, t0, bounds, targets):
    """Fill one haloed block's core, write its fraction and flags; its flag counts."""
    iy, ix = block_info[0]["chunk-location"][1:]
    (y0, y1), (x0, x1) = bounds[0][iy : iy + 2], bounds[1][ix : ix + 2]
    sw = params["space_window"]
    ly, lx = (sw if iy else 0), (sw if ix else 0)  # no halo beyond the array's edges
    core = (*core_t, ly, ly + y1 - y0, lx, lx + x1 - x0)
    fraction, flags, counts = fill_fraction_block(block, land[0], core, **params)
    region = (slice(t0, t0 + fraction.shape[0]), slice(y0, y1), slice(x0, x1))
    targets[0][region] = fraction
    targets[1][region] = flags
    return counts.reshape(1, 1, -1)


def _release_memory() -> None:
    """Give freed heap back to the OS (glibc keeps it in per-thread arenas otherwise).

    Without it the resident size after each fill batch drifts up with the number of
    batches, so long spans would look as if they used more memory than they do.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once; None elsewhere (macOS, musl, Windows).

    Looked up in the symbols the process already has loaded: `ctypes.util.find_library`
    would run `ldconfig` in a child process at every call, a fork of a ~1 GB process.
    """
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def _count_flags(state: dict, summary: BuildSummary) -> None:
    """Cells filled and left without neighbour, from the per-batch counts in the state."""
    totals = np.zeros(len(cube.FLAG_MEANINGS), np.int64)
    for counts in state["flag_counts"].values():
        totals += counts
    summary.cells_filled = int(totals[FillFlag.FILLED])
    summary.cells_unfilled = int(totals[FillFlag.NO_NEIGHBOUR])


@contextlib.contextmanager
def _scheduler(scheduler, workers: int | None, summary: BuildSummary) -> Iterator[None]:
    """Run dask work on threads, processes, a given Client or a scheduler address."""
    if scheduler is None or scheduler == "threads":
        with dask.config.set(scheduler="threads", num_workers=workers):
            yield
    elif scheduler == "processes":
        with dask.config.set(scheduler="processes", num_workers=workers):
            yield
    else:
        from distributed import Client

        if isinstance(scheduler, Client):
            summary.dashboard = scheduler.dashboard_link
            with dask.config.set(scheduler=scheduler):
                yield
            return
        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError, ValueError) as err:
            raise BadInput(f"--scheduler {scheduler}: no dask scheduler there ({err})") from err
        summary.dashboard = client.dashboard_link
        log.warning("dask dashboard: %s", client.dashboard_link)
        with client, dask.config.set(scheduler=client):
            yield


def _finish(group, state: dict, summary: BuildSummary, base_url: str | None,
            source: str | None) -> None:
    days = summary.observed
    first, last = summary.span
    group.attrs.update({
        "source_base_url": base_url or "",
        "source_directory": str(source or ""),
        "source_files": {k: state["sources"][k] for k in sorted(state["sources"])},
        "failed_days": state["failed"],
        "fill_parameters": state["args"]["fill"],
        "mask_threshold": state["args"]["mask_threshold"],
        "mask_source": state["args"]["mask"] or "nan frequency of this cube's observed days",
        "mask_span": f"{first:%Y-%m-%d}/{last:%Y-%m-%d} ({len(days)} observed days)"
        if not state["args"]["mask"] else state.get("mask_span", ""),
        "sicube_version": __version__,
        "build_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    state["complete"] = True
    _write_state(group, state)
    # Readers (xarray, HTTP clients that cannot list) get all metadata in one document.
    _consolidate(group.store)


# --- public API -----------------------------------------------------------------------------------


def build(
    start: DateLike,
    end: DateLike,
    store: str | os.PathLike,
    *,
    base_url: str | None = None,
    source: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    time_window: int = 3,
    space_window: int = 7,
    alpha: float = 15.0,
    sigma: float = 7.0,
    mask_threshold: float = mask.DEFAULT_THRESHOLD,
    mask_from: str | os.PathLike | None = None,
    scheduler=None,
    workers: int | None = None,
    chunks: dict | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Build the cube of SPEC section 3 for every calendar day of [start, end] into `store`.

    Parameters
    ----------
    base_url : server to download from (default: Bremen); `source` reads a local folder instead.
    raw_dir : where downloads are kept and reused (default: a user cache folder).
    mask_from : a NetCDF mask file or another cube whose `land_mask` to use instead of
        computing one from this span with `mask_threshold`.
    scheduler : "threads" (default), "processes", a scheduler address or a `distributed.Client`.
    chunks : Zarr chunk sizes, e.g. {"time": 8, "y": 512, "x": 512}.

    Returns
    -------
    BuildSummary; a rerun of a finished build with the same arguments does nothing.
    """
    first, last = parse_span(start, end)
    store = str(store)
    _check_source_args(base_url, source)
    if source is None:
        base_url = base_url or products.DEFAULT_BASE_URL
        if base_url == products.DEFAULT_BASE_URL and first < products.DATA_START:
            raise BadInput(f"start {first}: the Bremen AMSR2 record begins "
                           f"{products.DATA_START}")
    params = fill_parameters(time_window, space_window, alpha, sigma)
    mask.check_threshold(mask_threshold)
    args = {"start": f"{first}", "end": f"{last}", "fill": params,
            "mask_threshold": mask_threshold, "mask": str(mask_from) if mask_from else None}
    days = list(day_range(first, last))
    summary = BuildSummary(store=store, span=(first, last))
    timer = _Timer(summary)

    # The scheduler is reached first, so a wrong address costs nothing.
    with _build_lock(store), _scheduler(scheduler, workers, summary):
        group, state = _resume(store, args, days, summary)
        if summary.nothing_to_do:
            return summary
        if group is None:
            arrivals = _arrivals(days, source, base_url, raw_dir, progress, None)
            held: list[Arrival] = []
            with timer("ingest"):
                group, state = _create(store, days, args, chunks, mask_from, arrivals, held,
                                       where=source or base_url)
            arrivals = _chain(held, arrivals)
        else:
            arrivals = _arrivals(_days_to_ingest(group, state, days), source, base_url,
                                 raw_dir, progress, _grid(group))
        grid = _grid(group)
        summary.shape = group[cube.RAW].shape
        with timer("ingest"):
            tally = _ingest(group, state, days, arrivals, grid, summary, progress)
        if not state["mask_done"]:
            with timer("mask"), _bar(progress, total=1, desc="mask", unit="mask") as bar:
                _make_mask(group, state, grid, args["mask"], mask_threshold, tally)
                bar.update(1)
        del tally  # the counts are in the store now; the fill needs the memory
        with timer("fill"):
            _fill(group, state, params, summary, progress)
        _finish(group, state, summary, base_url if source is None else None, source)
    summary.store_bytes = cube.store_bytes(store)
    return summary


def _grid(group) -> GridCoords:
    return GridCoords(group["x"][:], group["y"][:])


def _resume(store: str, args: dict, days: list[dt.date], summary: BuildSummary):
    """(group, state) of an existing cube built with `args`; (None, None) for a new store.

    Refuses a path that is not a sicube cube and a cube built with other arguments; marks
    the summary `nothing_to_do` when the cube is complete.
    """
    if not _exists(store):
        return None, None
    if not cube.is_cube(store):
        raise BadInput(f"{store}: exists and is not a sicube cube; refusing to touch it")
    group = _open_group(store)
    state = _read_state(group)
    if state["args"] != args:
        raise BadInput(f"{store}: holds a cube built with other arguments "
                       f"({_describe_args(state['args'])}); use a new store, or "
                       "`sicube update` to extend it")
    if state.get("complete") and not state["failed"]:
        summary.nothing_to_do = True
        summary.shape = group[cube.RAW].shape
        _account(state, days, summary)
        _count_flags(state, summary)
    elif state["failed"]:
        _forget_failed(group, state, days)
    return group, state


def _create(store: str, days: list[dt.date], args: dict, chunks: dict | None,
            mask_from: str | None, arrivals: Iterator[Arrival], held: list[Arrival],
            where: str):
    """Create the empty cube once the first file has arrived (it tells the grid)."""
    found = _first_file(arrivals, held)
    if found is None:
        raise BadInput(f"no source file for any day of {days[0]} .. {days[-1]} at {where}")
    # Structure only: the data are decoded at ingest, where a corrupt download becomes a
    # failed day (whichever file happens to arrive first).
    try:
        grid, epsg = read_grid(found.path)
    except BadSourceFile as err:
        raise BadInput(f"{found.path}: {err}") from err
    if mask_from is not None:  # refuse a bad mask before anything is written
        mask.load_mask(mask_from, grid)
    state = {"args": args, "ingested": [], "sources": {}, "failed": {}, "mask_done": False,
             "filled": [], "flag_counts": {}, "complete": False}
    _create_store(store, days, grid, epsg or products.GRIDS["n3125"].epsg_hughes, chunks, state)
    return _open_group(store), state


def _forget_failed(group, state: dict, days: list[dt.date]) -> None:
    """Mark the chunks of failed days for ingest again; mask and fill follow from them."""
    chunk = group[cube.RAW].chunks[0]
    index = {f"{d:%Y%m%d}": i for i, d in enumerate(days)}
    again = {index[key] // chunk for key in state["failed"]}
    log.warning("retrying %d failed days", len(state["failed"]))
    state.update(ingested=[c for c in state["ingested"] if c not in again], failed={},
                 mask_done=False, filled=[], flag_counts={}, complete=False)
    _write_state(group, state)


def _days_to_ingest(group, state: dict, days: list[dt.date]) -> list[dt.date]:
    chunk = group[cube.RAW].chunks[0]
    done = set(state["ingested"])
    return [d for i, d in enumerate(days) if i // chunk not in done]


def _chain(held: list[Arrival], rest: Iterator[Arrival]) -> Iterator[Arrival]:
    yield from held
    yield from rest


def _describe_args(args: dict) -> str:
    fill = args["fill"]
    return (f"{args['start']} .. {args['end']}, time_window {fill['time_window']}, "
            f"space_window {fill['space_window']}, alpha {fill['alpha']}, sigma {fill['sigma']}, "
            f"mask {args['mask'] or 'threshold ' + str(args['mask_threshold'])}")


class _Timer:
    """Adds the wall time of each stage to the summary."""

    def __init__(self, summary: BuildSummary):
        self.summary = summary

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - began
            self.summary.seconds[stage] = self.summary.seconds.get(stage, 0.0) + seconds


def update(
    store: str | os.PathLike,
    end: DateLike | None = None,
    *,
    base_url: str | None = None,
    source: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    scheduler=None,
    workers: int | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Append the days after the cube's last day up to `end` (default: yesterday, UTC).

    Ingests the new days, keeps the cube's mask, and refills only the time chunks whose
    fill window changed (from `time_window` days before the old end on). The result
    equals a fresh build of the whole span with the cube's mask.
    """
    store = str(store)
    if not cube.is_cube(store):
        raise BadInput(f"{store}: not a sicube cube")
    _check_source_args(base_url, source)
    wanted = parse_date(end, "end") if end is not None else \
        dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    summary = BuildSummary(store=store, span=(wanted, wanted))
    with _build_lock(store), _scheduler(scheduler, workers, summary):
        group = _open_group(store)
        state = _read_state(group)
        first = parse_date(state["args"]["start"])
        if state.get("complete"):
            last = parse_date(state["args"]["end"])
            summary.span = (first, max(last, wanted))
            if wanted <= last:
                summary.nothing_to_do = True
                summary.shape = group[cube.RAW].shape
                _account(state, list(day_range(first, last)), summary)
                _count_flags(state, summary)
                return summary
            _start_update(group, state, first, last, wanted)
        elif "updating_from" in state:  # an interrupted update: finish it first
            last = parse_date(state["args"]["end"])
            if end is not None and wanted != last:
                raise BadInput(f"{store}: an interrupted update to {last} is unfinished; "
                               f"run `sicube update --end {last:%Y%m%d}` first")
            summary.span = (first, last)
        else:
            raise BadInput(f"{store}: its build has not finished; rerun `sicube build` first")
        if source is None and base_url is None:
            # By default, update from where the cube came from.
            source = group.attrs.get("source_directory") or None
            if source is None:
                base_url = group.attrs.get("source_base_url") or products.DEFAULT_BASE_URL
        days = list(day_range(*summary.span))
        timer = _Timer(summary)
        grid = _grid(group)
        arrivals = _arrivals(_days_to_ingest(group, state, days), source, base_url, raw_dir,
                             progress, grid)
        summary.shape = group[cube.RAW].shape
        with timer("ingest"):
            _ingest(group, state, days, arrivals, grid, summary, progress)
        with timer("fill"):
            _fill(group, state, state["args"]["fill"], summary, progress)
        del state["updating_from"]
        _finish(group, state, summary, base_url if source is None else None, source)
    summary.store_bytes = cube.store_bytes(store)
    return summary


def _start_update(group, state: dict, first: dt.date, last: dt.date, new_last: dt.date) -> None:
    """Extend the time axis to `new_last` and mark what must be ingested and filled again.

    The partly filled last time chunk is ingested again (its old days from the same
    sources) and every fill batch from `time_window` days before the old end is redone;
    the mask stays. The state records the update, so an interrupted one can be resumed.
    """
    days = list(day_range(first, new_last))
    old_n = (last - first).days + 1
    _extend_time(group, days)
    chunk = group[cube.RAW].chunks[0]
    first_new_chunk = old_n // chunk
    refill_from = max(0, old_n - state["args"]["fill"]["time_window"]) // chunk
    refill_batch = refill_from - refill_from % FILL_BATCH_CHUNKS
    state.update(
        ingested=[c for c in state["ingested"] if c < first_new_chunk],
        filled=[c for c in state["filled"] if c < refill_batch],
        flag_counts={k: v for k, v in state["flag_counts"].items() if int(k) < refill_batch},
        complete=False, updating_from=f"{last}",
    )
    state["args"]["end"] = f"{new_last}"
    _write_state(group, state)


def _extend_time(group, days: list[dt.date]) -> None:
    """Grow the time axis to `days` (new cells empty until ingested and filled)."""
    from sicube.dates import to_datetime64

    n = len(days)
    for name in (*cube.CUBE_VARS, cube.OBSERVED):
        array = group[name]
        array.resize((n, *array.shape[1:]))
    time_array = group["time"]
    time_array.resize((n,))
    epoch = np.datetime64("1970-01-01", "D")
    time_array[:] = (to_datetime64(days).astype("datetime64[D]") - epoch).astype(np.int32)


__all__ = ["build", "update", "BuildSummary", "default_raw_dir"]
