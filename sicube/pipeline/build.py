"""`sicube.build` and `sicube.update`: source files to a filled, masked, resumable Zarr cube.

A run reads the cube's state (`sicube.pipeline.plan.BuildState`, in the store's group attributes),
asks `plan` what is left to do, and executes it in stages: ingest (`ingest`:
every day not yet observed is looked for in the source, and time chunks are written as their
days arrive), mask (NaN frequency over observed days, or a given mask) and fill (the
Gaussian fill through Dask, one batch of time chunks at a time). Every finished step is
recorded, so a killed run rerun with the same arguments redoes only unfinished work. Where
the work runs is the executor's (`sicube.pipeline.executors`: this process's threads, or a
`distributed.Client`'s workers, which fetch and write each time chunk themselves and run
several fill batches at once); this process still plans and is the one writer of the state.

This module is the orchestration: check the arguments (`arguments`), open or create the
cube, ask the plan, run the stages (`stages`, `fill_stage`), record the provenance.

The cube's life is safe by construction: observed days are never read from a source again
(their chunk is rewritten from the store's own values), a day only ever changes from
missing or failed to observed, and a cube says in `sicube_status` whether it is `building`,
`updating` (complete through an earlier day), `complete` or `failed: reason`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator

import numpy as np

from sicube import settings
from sicube._version import __version__
from sicube.archive import products
from sicube.archive.sources import find_day_files
from sicube.datacube import cube, versions
from sicube.datacube import store as store_location
from sicube.datacube.record import CubeRecord
from sicube.dates import DateLike, day_range, parse_date, parse_span
from sicube.errors import BadInput
from sicube.params import (
    FAILED,
    MASK_THRESHOLD,
    MISSING,
    OK,
    SUSPICIOUS_AS_MISSING,
    SUSPICIOUS_POLICIES,
    FillParams,
    QualityRules,
)
from sicube.pipeline import arguments, haloed, mask, stages
from sicube.pipeline import state as cube_state
from sicube.pipeline import update as update_steps
from sicube.pipeline.arguments import Source
from sicube.pipeline.executors import open_executor
from sicube.pipeline.fill_stage import fill
from sicube.pipeline.ingest import Arrival
from sicube.pipeline.plan import BuildArgs, BuildState
from sicube.pipeline.summary import BuildSummary, StageTimer, account, count_flags, progress_bar
from sicube.pipeline.update import MAX_EMPTY_DAYS

# Group attributes of the build (defined in `sicube.datacube.cube`, read through `CubeRecord`).
STATE = cube.BUILD_STATE  # the build's progress (days apart)


# --- public API -----------------------------------------------------------------------------------


def build(
    start: DateLike,
    end: DateLike,
    store: str | os.PathLike,
    *,
    base_url: str | list[str] | tuple[str, ...] | None = None,
    source: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    grid: str | None = None,
    sensor: str = products.AUTO,
    time_window: int = FillParams.time_window,
    space_window: int = FillParams.space_window,
    alpha: float = FillParams.alpha,
    sigma: float = FillParams.sigma,
    mask_threshold: float = MASK_THRESHOLD,
    mask_from: str | os.PathLike | None = None,
    scheduler=None,
    workers: int | None = None,
    chunks: dict | None = None,
    restart_fill: bool = False,
    suspicious: str = SUSPICIOUS_AS_MISSING,
    quality_rules: QualityRules | None = None,
    progress: bool = True,
    storage_options: dict | None = None,
    fill: FillParams | None = None,
    quality: QualityRules | None = None,
) -> BuildSummary:
    """Build the cube (docs/cube-format.md) of every calendar day of [start, end] in `store`.

    Parameters
    ----------
    base_url : server to download from, or several hosts serving the same tree, tried in
        order for each file (default: Bremen's primary and older host; see `sicube.download`);
        `source` reads a local folder instead.
    raw_dir : where downloads are kept and reused (default: a cache folder of the first host).
    grid : the grid to download (default: the one a grid-folder base URL names, else n3125).
    sensor : auto (default: each day from the sensor whose record holds it, so a 6.25 km
        cube may span AMSR-E and AMSR2, the days between them missing), amsr2 or amsre.
        The cube's `sensor` variable says which sensor each day came from.
    mask_from : a NetCDF mask file or another cube whose `land_mask` to use instead of
        computing one from this span with `mask_threshold`.
    scheduler : "threads" (default), "processes", a scheduler address or a `distributed.Client`.
        With a Client (or an address) the cluster does the work: each time chunk is one
        ingest task that downloads its days into the worker's own temporary folder (removed
        after) and writes its chunk to the store, and fill batches run several at once to
        keep every worker thread busy; this process plans and records, and never holds a
        file (`raw_dir` is not used). The store must be one the workers reach (a shared
        path, or an object store); a `source` folder must be on a disk they share.
    chunks : Zarr chunk sizes, e.g. {"time": 8, "y": 512, "x": 512}.
    restart_fill : on an existing cube of the same span, accept other fill or mask
        parameters and redo the mask and the fill (the ingested days are kept).
    suspicious : "missing" (default): a day flagged suspicious (`sicube.pipeline.quality`) keeps its
        raw data and its flag but is left out of the mask and filled like a missing day;
        "keep": it is used as data. `update` keeps the build's choice.
    quality_rules : the thresholds of the suspicious-day rules (default `QualityRules()`);
        the older name of `quality`.
    fill : the fill's parameters as one `FillParams` (``sicube.FillParams``), instead of
        `time_window`, `space_window`, `alpha` and `sigma`; a keyword that contradicts it is
        BadInput.
    quality : the suspicious-day rules as one `QualityRules` (``sicube.QualityRules``).
    storage_options : options of the store's fsspec file system (``endpoint_url``, ``key``,
        ``secret``, ...) when `store` is a URL (``s3://bucket/cube.zarr``); credentials may
        come from the environment instead. Never written into the cube.

    Returns
    -------
    BuildSummary. A rerun finishes an unfinished cube; on a complete cube it looks again for
    its missing and failed days and ingests those that have arrived since (late files).
    """
    first, last = parse_span(start, end)
    store = arguments.store_url(store, storage_options)
    src = arguments.make_source(base_url, source, raw_dir, grid, sensor)
    arguments.check_first_day(first, last, src)
    params = arguments.fill_params(fill, time_window=time_window, space_window=space_window,
                          alpha=alpha, sigma=sigma)
    mask.check_threshold(mask_threshold)
    arguments.check_workers(workers)
    arguments.check_chunks(chunks)
    settings.apply()  # zarr's codec threads, before this process's first Zarr read
    if suspicious not in SUSPICIOUS_POLICIES:
        raise BadInput(f"--suspicious {suspicious}: choose from {', '.join(SUSPICIOUS_POLICIES)}")
    rules = arguments.quality_rules(quality, quality_rules)
    args = BuildArgs(f"{first}", f"{last}", params, mask_threshold,
                     str(mask_from) if mask_from else None, suspicious, rules)
    summary = BuildSummary(store=store, span=(first, last), source=src.where,
                           other_grids=src.other_grids)
    fill_args = [f"--time-window={params.time_window}", f"--space-window={params.space_window}",
                 f"--alpha={params.alpha:g}", f"--sigma={params.sigma:g}"] + (
        [f"--mask={mask_from}"] if mask_from else [f"--mask-threshold={mask_threshold:g}"]) + (
        [f"--suspicious={suspicious}"] if suspicious != SUSPICIOUS_AS_MISSING else []) + (
        [f"--suspicious-k={rules.k:g}", f"--suspicious-window={rules.window}"]
        if (rules.k, rules.window) != (QualityRules.k, QualityRules.window)
        else [])
    finish = arguments.finish_command("build", store, src,
                                      [f"--start={first:%Y%m%d}", f"--end={last:%Y%m%d}",
                                       *fill_args, *([f"--grid={grid}"] if grid else [])])

    # The scheduler is reached first, so a wrong address costs nothing.
    where = open_executor(scheduler, workers, summary, store, storage_options)
    with _parent_folders(store), store_location.build_lock(store), \
            versions.run_session(store, "build", summary, storage_options, scheduler), \
            where as executor:
        group, state, restarted = _resume(store, args, restart_fill, storage_options)
        if group is None:
            days = list(day_range(first, last))
            arguments.check_source_files(src, days)
            group, state, cells, arrivals = _create(store, days, args, chunks, src, executor,
                                                    summary, finish, progress, storage_options)
            if group is None:
                return summary
        else:
            arguments.check_source_files(src, [state.days[i] for i in state.unobserved()],
                                         cube_state.cube_grid(group), cube_state.cube_crs(group))
            if restarted:
                cube_state.save(group, state)
                if cube.cube_status(group.attrs) == cube.COMPLETE:
                    cube.set_status(group, cube.BUILDING)
            cells = None
            arrivals = _look_again(group, state, src, progress, summary, executor)
            if arrivals is None:
                return summary
        with cube_state.failure_recorded(store, storage_options):
            _run(group, state, executor, arrivals, summary, src, progress, cells)
    summary.store_bytes = cube.store_bytes(store, storage_options)
    return summary


def update(
    store: str | os.PathLike,
    end: DateLike | None = None,
    *,
    base_url: str | list[str] | tuple[str, ...] | None = None,
    source: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    sensor: str | None = None,
    allow_gap: bool = False,
    scheduler=None,
    workers: int | None = None,
    progress: bool = True,
    storage_options: dict | None = None,
) -> BuildSummary:
    """Append the days after the cube's last day up to `end`, and recover late days.

    Only adds: days already observed are never read from a source again (the refill of the
    window edge uses the cube's own raw values); every missing or failed day of the span is
    looked for again. The mask is kept. The result equals a fresh build of the whole span
    with the cube's mask, whatever the source holds.

    `end` defaults to the last day the source has (the newest file of a folder; for a server,
    probed backwards from yesterday). More than `MAX_EMPTY_DAYS` consecutive days without a
    file at the end are refused unless `allow_gap`. The hosts, grid and sensor choice are the
    cube's own unless given (`sensor`: the build's choice by default). `store` is a path or
    any fsspec URL, with `storage_options` (see `build`).
    """
    store = arguments.store_url(store, storage_options)
    settings.apply()  # zarr's codec threads, before this process's first Zarr read
    if not cube.is_cube(store, storage_options):
        cube.open_group(store, storage_options=storage_options)  # says why: missing, ...
        raise BadInput(f"{store}: not a sicube cube")
    arguments.check_workers(workers)
    summary = BuildSummary(store=store, span=(dt.date.min, dt.date.min))
    where = open_executor(scheduler, workers, summary, store, storage_options)
    with store_location.build_lock(store), \
            versions.run_session(store, "update", summary, storage_options, scheduler), \
            where as executor:
        group = store_location.open_group_for_writing(store, storage_options=storage_options)
        state = cube_state.read_state(group)
        status = cube.cube_status(group.attrs)
        if status not in (cube.COMPLETE, cube.UPDATING):
            raise BadInput(f"{store}: its build has not finished ({status}); finish it with "
                           f"{group.attrs.get(cube.FINISH, 'the same sicube build command')}")
        src = update_steps.update_source(group, base_url, source, raw_dir, sensor)
        summary.source, summary.other_grids = src.where, src.other_grids
        last = parse_date(state.args.end)
        if state.updating_from is not None:  # an interrupted update: finish it first
            if end is not None and parse_date(end, "end") != last:
                raise BadInput(f"{store}: an interrupted update to {last} is unfinished; "
                               f"run `sicube update --store {store} --end {last:%Y%m%d}` first")
            wanted = last
        else:
            wanted = update_steps.update_end(end, last, src, allow_gap)
        # Nothing is written before the files are checked: a folder's files for the days the
        # run reads (late and new days) refuse the update when one is bad; a server's new
        # days are downloaded (each validated) before the time axis grows.
        grid = cube_state.cube_grid(group)
        arguments.check_source_files(src, [*(state.days[i] for i in state.unobserved()),
                                           *day_range(last + dt.timedelta(days=1), wanted)],
                                     grid, cube_state.cube_crs(group))
        fetched: list[Arrival] = []
        if wanted > last and src.base_urls and state.updating_from is None:
            wanted, fetched = update_steps.fetch_new_days(src, last, wanted, end is None,
                                                          allow_gap, grid, progress, executor)
        chunk = group[cube.RAW].chunks[0]
        if wanted > last:
            cube.set_status(group, cube.UPDATING, **{
                cube.FINISH: arguments.finish_command("update", store, src, [])})
            with cube_state.failure_recorded(store, storage_options):
                update_steps.extend_time(group,
                                         list(day_range(parse_date(state.args.start), wanted)))
                state.mask_frozen = True  # the cube's mask stays the mask
                state.extend(wanted, chunk)
                cube_state.save(group, state)
            looked = [state.days[i] for i in state.unobserved()]
            arrivals = executor.arrivals(src, looked, progress, grid, held=fetched)
        else:
            state.mask_frozen = True
            arrivals = _look_again(group, state, src, progress, summary, executor)
            if arrivals is None:
                return summary
        with cube_state.failure_recorded(store, storage_options):
            _run(group, state, executor, arrivals, summary, src, progress)
    summary.store_bytes = cube.store_bytes(store, storage_options)
    return summary


@contextlib.contextmanager
def _parent_folders(store: str) -> Iterator[None]:
    """Make the folders a new local store goes in (``--store runs/2024/cube.zarr``), as
    zarr itself would, for the block; those it made are removed again when the block ends
    without the store (a build refused for a bad source leaves no empty folders behind).
    BadInput when they cannot be made."""
    folder = store_location.local_path(store)
    made = [] if folder is None else [p for p in folder.parents if not p.exists()]
    if made:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInput(f"{store}: cannot make its folder {folder.parent} "
                           f"({err.strerror})") from None
    try:
        yield
    finally:
        if made and not folder.exists():
            with contextlib.suppress(OSError):  # one not empty: another run's, kept
                for path in made:  # the deepest first
                    path.rmdir()


# --- one run: open or create, look again, ingest, mask, fill, finish -----------------------------


def _resume(store: str, args: BuildArgs, restart_fill: bool,
            storage_options: dict | None = None):
    """(group, state, restarted) of an existing cube built with `args`; (None, None, False)
    for a new store. Writes nothing.

    Refuses a path that is not a sicube cube and a cube of another span; other fill or mask
    parameters only with `restart_fill`, which forgets the mask and every fill (`restarted`:
    the state is changed so, for the caller to save).
    """
    if not store_location.exists(store, storage_options):
        return None, None, False
    if not cube.is_cube(store, storage_options):
        raise BadInput(f"{store}: exists and is not a sicube cube; refusing to touch it")
    group = store_location.open_group_for_writing(store, storage_options=storage_options)
    state = cube_state.read_state(group)
    if state.args != args:
        same_span = (state.args.start, state.args.end) == (args.start, args.end)
        if not (restart_fill and same_span):
            if same_span:
                hint = "add --restart-fill to redo the mask and the fill with these"
            elif state.args.start == args.start and state.args.end > args.end:
                hint = (f"it now ends {state.args.end} (extended by `sicube update`): give "
                        "that --end, or run `sicube update` on it")
            else:
                hint = "use a new store, or `sicube update` to extend it"
            raise BadInput(f"{store}: holds a cube built with other arguments "
                           f"({arguments.describe_args(state.args)}); {hint}")
        arguments.check_window_fits(args.fill, cube_state.cube_grid(group))
        state.args = args
        state.forget_every_fill()
        state.mask_done = state.mask_frozen = False
        state.mask_days.clear()
        return group, state, True
    return group, state, False


def _look_again(group, state: BuildState, src: Source, progress: bool,
                summary: BuildSummary, executor):
    """The arrivals (the executor's) of every day the cube still lacks; None when nothing
    can change.

    On a complete cube only days that have arrived since change it: their chunks are
    rewritten and their fills redone. Until the run ends the cube is `updating`, readable
    through the day it was complete through. The executor fetches those days first to
    decide (on a cluster a worker, and the ingest tasks fetch the ones that arrived again:
    a few late days).
    """
    days = [state.days[i] for i in state.unobserved()]
    complete = state.is_complete(group[cube.RAW].chunks[0]) and not state.rewrite
    if complete and src.directory is not None:
        present = find_day_files(src.directory, src.grid)  # a folder is looked at without reading
        if not any(d in present for d in days):
            _nothing_to_do(group, state, summary)
            return None
        # Still every missing day: a chunk is written once all its looked-for days are in.
    arrivals = executor.arrivals(src, days, progress, cube_state.cube_grid(group))
    if complete:
        # downloads first: decide before writing anything
        looked, arrivals = executor.look(arrivals)
        if not any(a.status == OK for a in looked):
            _nothing_to_do(group, state, summary)
            for a in looked:  # a failure now replaces an old reason
                state.record_day(f"{a.day:%Y%m%d}", a.status, a.error)
            cube_state.save(group, state)
            store_location.consolidate(group.store)
            return None
        state.updating_from = state.complete_through = state.args.end
        cube_state.save(group, state)
        cube.set_status(group, cube.UPDATING)
    return arrivals


def _nothing_to_do(group, state: BuildState, summary: BuildSummary) -> None:
    summary.nothing_to_do = True
    summary.looked_again = len(state.missing) + len(state.failed)
    summary.shape = group[cube.RAW].shape
    account(state, summary)
    count_flags(state, summary)


def _create(store: str, days: list[dt.date], args: BuildArgs, chunks: dict | None,
            src: Source, executor, summary: BuildSummary, finish: str, progress: bool,
            storage_options: dict | None = None):
    """Create the empty cube once the first file has arrived (it tells the grid; on a
    cluster a worker fetches days, a time chunk's at a time, until one has a file).

    (group, state, the cell areas written, the arrivals for the ingest); Nones when no file
    arrived and some day failed (the summary names them, exit 1); BadInput when every day
    is simply absent from the source.
    """
    found, held, arrivals = executor.first_grid(
        executor.arrivals(src, days, progress, None),
        until_found=(chunks or {}).get("time", cube.DEFAULT_CHUNKS["time"]))
    if found is None:
        failed = {a.day: a.error for a in held if a.status == FAILED}
        if failed:
            summary.failed, summary.no_cube = failed, True
            summary.missing = [a.day for a in held if a.status == MISSING]
            return None, None, None, None
        # the first day's error names the URLs asked (a 404's too)
        first = min((a for a in held if a.error), key=lambda a: a.day, default=None)
        raise BadInput(f"no source file for any day of {days[0]} .. {days[-1]} at "
                       f"{summary.source}" + (f" ({first.day:%Y%m%d}: {first.error})"
                                              if first else ""))
    grid, crs = found
    arguments.check_window_fits(args.fill, grid)
    if args.mask is not None:  # refuse a bad mask before anything is written
        mask.load_mask(args.mask, grid)
    state = BuildState(args)
    attrs = {**cube_state.state_attrs(state), cube.STATUS: cube.BUILDING, cube.FINISH: finish}
    cells = cube.create(store, days, grid.x, grid.y, crs, chunks, attrs, storage_options)
    group = store_location.open_group_for_writing(store, storage_options=storage_options)
    return group, state, cells, arrivals


def _run(group, state: BuildState, executor, arrivals, summary: BuildSummary, src: Source,
         progress: bool, cells: np.ndarray | None = None) -> None:
    """Execute what the state says is left on `executor`: ingest what arrives (`arrivals`,
    the executor's), mask, fill, finish. `cells`: the cube's cell areas when the caller has
    them (it just made the cube)."""
    timer = StageTimer(summary)
    grid = cube_state.cube_grid(group)
    summary.shape = group[cube.RAW].shape
    # for the day statistics and the fill's extent and area
    cells = executor.cell_areas(group, cells)
    with timer("ingest"):
        stages.clean_rewrites(group, state, grid)
        tally = stages.ingest_days(group, state, executor, arrivals, grid, summary, progress,
                                   cells)
    with timer("quality"):
        flags = stages.judge_days(group, state, grid)
    if not state.mask_done:
        with timer("mask"), progress_bar(progress, total=1, desc="mask", unit="mask") as bar, \
                haloed.dask_on_threads():
            stages.make_mask(group, state, grid, tally)
            bar.update(1)
    del tally  # the counts are in the store now; the fill needs the memory
    with timer("fill"):
        fill(group, state, summary, progress, executor, cells)
    _finish(group, state, summary, src, flags)


def _finish(group, state: BuildState, summary: BuildSummary, src: Source,
            flags: np.ndarray) -> None:
    """Write the provenance, and record the finished state and `complete` in one write of
    the root attributes (a decade's state is 1.7 MB: each write, and the consolidation after
    it, costs ~0.1 s), consolidated for readers."""
    account(state, summary)
    stages.write_observed(group, state)
    stages.write_day_quality(group, state, flags)
    state.complete_through = state.args.end
    state.updating_from = None
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # CF's history: one line per build or update that finished, the newest last.
    earlier = CubeRecord.from_attrs(group.attrs, ["history"]).history
    history = "\n".join(filter(None, (earlier or "",
                                       f"{now}: sicube {__version__} filled the days "
                                       f"{state.args.start} to {state.args.end} from {src.where}")))
    found = products.grid_of_coords(group["x"][:], group["y"][:])
    cube.set_status(group, cube.COMPLETE, **cube_state.state_attrs(state), **CubeRecord(
        last_error="",
        source_base_url=src.base_url or "",
        source_base_urls=tuple(src.base_urls or ()),
        # The grid fetched, else (a folder) the product grid the cube's cells are.
        source_grid=src.grid or (found.name if found else ""),
        source_sensor=src.sensor,
        source_directory=str(src.directory or ""),
        fill_parameters=state.args.fill.to_dict(),
        mask_threshold=state.args.mask_threshold,
        mask_source=state.args.mask or "nan frequency of this cube's observed days",
        mask_span=state.mask_span,
        suspicious_policy=state.args.suspicious,
        quality_rules=state.args.quality.to_dict(),
        sicube_version=__version__,
        build_time=now,
        history=history,
    ).to_attrs())


__all__ = ["build", "update", "BuildSummary", "MAX_EMPTY_DAYS"]
