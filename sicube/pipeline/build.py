"""`sicube.build` and `sicube.update`: source files to a filled, masked, resumable Zarr cube.

A run reads the cube's state (`sicube.pipeline.plan.BuildState`, in the store's group attributes),
asks `plan` what is left to do, and executes it in stages: ingest (`ingest`:
every day not yet observed is looked for in the source, and time chunks are written as their
days arrive), mask (NaN frequency over observed days, or a given mask) and fill (the
Gaussian fill through Dask, one batch of time chunks at a time). Every finished step is
recorded, so a killed run rerun with the same arguments redoes only unfinished work. With a
`distributed.Client` the workers fetch and write each time chunk themselves
(`ingest.run_on_cluster`) and several fill batches run at once (`_fill_window`); this
process still plans and is the one writer of the state.

The cube's life is safe by construction: observed days are never read from a source again
(their chunk is rewritten from the store's own values), a day only ever changes from
missing or failed to observed, and a cube says in `sicube_status` whether it is `building`,
`updating` (complete through an earlier day), `complete` or `failed: reason`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import shlex
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sicube import settings
from sicube._version import __version__
from sicube.archive import products
from sicube.archive.sources import (
    GridCoords,
    check_file_header,
    find_day_files,
    folder_grids,
    read_grid,
)
from sicube.datacube import cube, versions
from sicube.datacube import store as store_location
from sicube.datacube.cube import FillFlag
from sicube.datacube.record import CubeRecord, check_format
from sicube.dates import DateLike, count_text, day_list_text, day_range, parse_date, parse_span
from sicube.errors import BadInput, BadSourceFile
from sicube.kernels import area
from sicube.kernels.fill import (
    core_in_block,
    fill_fraction_block,
    fill_pole_hole,
    halo_layout,
    pole_hole_ring,
)
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
from sicube.pipeline import haloed, ingest, mask, quality
from sicube.pipeline.ingest import Arrival
from sicube.pipeline.plan import BuildArgs, BuildState, FillBatch, fill_batches

if TYPE_CHECKING:
    import dask.array as da

log = logging.getLogger(__name__)

# Group attributes of the build (defined in `sicube.datacube.cube`, read through `CubeRecord`).
STATE = cube.BUILD_STATE  # the build's progress (days apart)
SOURCE_URLS, SOURCE_GRID, SOURCE_SENSOR = cube.SOURCE_URLS, cube.SOURCE_GRID, cube.SOURCE_SENSOR
# `update` refuses to append more consecutive days without any file than this, unless told
# (`allow_gap`): a cron job against a dead source must not grow the cube by empty days.
MAX_EMPTY_DAYS = 30


@dataclass
class BuildSummary:
    """What a build or update did, for the one-screen summary."""

    store: str
    span: tuple[dt.date, dt.date]
    shape: tuple[int, int, int] = (0, 0, 0)
    observed: list[dt.date] = field(default_factory=list)
    missing: list[dt.date] = field(default_factory=list)
    failed: dict[dt.date, str] = field(default_factory=dict)
    suspicious: dict[dt.date, str] = field(default_factory=dict)  # day -> why
    suspicious_policy: str = SUSPICIOUS_AS_MISSING
    retried: dict[dt.date, int] = field(default_factory=dict)  # day -> download attempts
    recovered: list[dt.date] = field(default_factory=list)  # missing/failed before, now observed
    recovered_after_failure: list[dt.date] = field(default_factory=list)  # of those: failed
    looked_again: int = 0  # days looked for again on a cube that had them missing or failed
    source: str = ""
    other_grids: str = ""  # a source folder's files of other grids, not read
    cells_filled: int = 0
    cells_unfilled: int = 0
    cells_pole_hole: int = 0  # cell-days of the north pole hole set from its ring (flag 4)
    seconds: dict[str, float] = field(default_factory=dict)
    store_bytes: int = 0
    nothing_to_do: bool = False
    fill_in_flight: int = 0  # on a cluster: fill tasks submitted at once
    no_cube: bool = False  # every download failed: nothing could be written
    dashboard: str | None = None

    @property
    def exit_code(self) -> int:
        """0 when every day is observed or missing, 1 when some day failed."""
        return 1 if self.failed else 0

    def text(self) -> str:
        """The one-screen summary printed at the end of a command."""
        first, last = self.span
        if self.no_cube:
            lines = [f"{self.store}: no cube written: no day of {first} .. {last} could be "
                     f"fetched from {self.source}"]
            lines += [f"FAILED    {d:%Y%m%d}: {e}" for d, e in sorted(self.failed.items())[:12]]
            if len(self.failed) > 12:
                lines.append(f"FAILED    ... and {count_text(len(self.failed) - 12, 'more day')}")
            lines.append("rerun the same command when the source is reachable")
            return "\n".join(lines)
        if self.nothing_to_do:
            text = f"{self.store}: already complete for {first} .. {last}; nothing to do"
            if self.looked_again:
                text += (f" (looked again for {self.looked_again} missing or failed "
                         f"day{'' if self.looked_again == 1 else 's'}: none has arrived)")
            return text
        nt, ny, nx = self.shape
        lines = [
            f"cube      {self.store}",
            f"span      {first} .. {last}  ({count_text(nt, 'day')}, grid {ny} x {nx})",
            f"source    {self.source}",
            f"days      {len(self.observed)} observed, {len(self.missing)} missing, "
            f"{len(self.failed)} failed",
        ]
        if self.other_grids:
            lines.append(f"ignored   the folder's files of other grids: {self.other_grids}")
        # A day missing before (404) was published late; one that failed (a server error,
        # a bad download) was there all along and is now read.
        late = [d for d in self.recovered if d not in self.recovered_after_failure]
        if late:
            lines.append("recovered " + day_list_text(late) + " (published late: now observed)")
        if self.recovered_after_failure:
            lines.append("recovered " + day_list_text(self.recovered_after_failure)
                         + " (failed before: now observed)")
        if self.missing:
            lines.append("missing   " + day_list_text(self.missing))
        if self.retried:
            lines.append(f"retried   {len(self.retried)} downloads succeeded after faults: "
                         + ", ".join(f"{d:%Y%m%d} ({n} attempts)"
                                     for d, n in sorted(self.retried.items())[:6]))
        for day, error in sorted(self.failed.items()):
            lines.append(f"FAILED    {day:%Y%m%d}: {error}")
        if self.suspicious:
            how = ("filled as missing days" if self.suspicious_policy == SUSPICIOUS_AS_MISSING
                   else "kept as data (--suspicious keep)")
            lines.append(f"suspect   {count_text(len(self.suspicious), 'day')} flagged, {how}:")
            lines += [f"suspect   {day:%Y%m%d}: {why}"
                      for day, why in sorted(self.suspicious.items())]
        lines.append(f"filled    {self.cells_filled:,} cells "
                     f"({self.cells_unfilled:,} with no observed neighbour, set to 0)"
                     + (f"; pole hole {self.cells_pole_hole:,} cells from its ring"
                        if self.cells_pole_hole else ""))
        lines.append("time      " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        lines.append(f"size      {self.store_bytes / 1e6:,.1f} MB on disk")
        if self.dashboard:
            lines.append(f"dashboard {self.dashboard}")
        return "\n".join(lines)


# --- arguments ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where days come from: a local folder (absolute) or the hosts of a server (tried in
    order for each file), the grid and sensor to fetch, and the download cache."""

    directory: Path | None
    base_urls: tuple[str, ...] | None
    raw_dir: Path | None
    grid: str | None = None  # the grid fetched from a server, or read from a folder
    sensor: str = products.AUTO
    other_grids: str = ""  # a folder's files of other grids, left alone: "n3125 (12 files)"

    @property
    def base_url(self) -> str | None:
        """The first (primary) host, or None for a folder."""
        return self.base_urls[0] if self.base_urls else None

    @property
    def where(self) -> str:
        return str(self.directory) if self.directory else ", ".join(self.base_urls or ())

    def finish_args(self) -> list[str]:
        """The command-line arguments that name this source again."""
        if self.directory:
            return ["--source", str(self.directory)]
        args = [x for url in self.base_urls or () for x in ("--base-url", url)]
        if self.sensor != products.AUTO:
            args += ["--sensor", self.sensor]
        return args + (["--raw-dir", str(self.raw_dir)] if self.raw_dir else [])

    @property
    def fetch(self) -> ingest.Fetch:
        """The source as a worker task fetches it (`ingest.Fetch`)."""
        return ingest.Fetch(str(self.directory) if self.directory else None, self.base_urls,
                            self.grid, self.sensor)

    def arrivals(self, days: list[dt.date], progress: bool, grid: GridCoords | None,
                 cluster: _Cluster | None = None) -> Iterator[Arrival] | _OnCluster:
        """The days' files as they become available (`ingest.arrivals`); on a cluster, the
        days for its workers to fetch (no file comes here)."""
        if cluster is not None:
            return _OnCluster(cluster, days, self.fetch)
        return ingest.arrivals(days, self.directory, self.base_urls,
                               _raw_dir(self) if self.base_urls else None, progress, grid,
                               grid_name=self.grid, sensor=self.sensor)


@dataclass(frozen=True)
class _Cluster:
    """A `distributed.Client` and the store as its workers open it."""

    client: object
    store: str
    storage_options: dict | None = None

    def open_group(self):
        """A picklable opener of the store for read-write, for worker tasks."""
        return functools.partial(_open_group, self.store, storage_options=self.storage_options)

    def probe(self, days: list[dt.date], fetch: ingest.Fetch, grid: GridCoords | None,
              until_found: int = 0) -> ingest.GridProbe:
        """`ingest.probe_task` run on a worker."""
        return self.client.submit(ingest.probe_task, days, fetch, grid, until_found,
                                  pure=False).result()


@dataclass(frozen=True)
class _OnCluster:
    """Days to look for, each time chunk fetched and written by a task on the cluster."""

    cluster: _Cluster
    days: list[dt.date]
    fetch: ingest.Fetch


def _source(base_url: str | list[str] | tuple[str, ...] | None,
            source: str | os.PathLike | None, raw_dir: str | os.PathLike | None,
            grid: str | None = None, sensor: str = products.AUTO) -> Source:
    """The checked source: one of a folder (made absolute) or http(s) hosts (default:
    Bremen's primary and older host), with the grid they are asked for."""
    if base_url is not None and source is not None:
        raise BadInput("give either --base-url or --source, not both")
    try:
        products.check_sensor(sensor)
    except ValueError as err:
        raise BadInput(str(err)) from None
    if source is not None:
        if not Path(source).is_dir():
            raise BadInput(f"--source {source}: no such folder")
        folder = Path(source).resolve()
        grid, others = _folder_grid(folder, grid)
        return Source(folder, None, None, grid, sensor, others)
    from sicube.archive.download import check_base_urls, check_grid  # a folder needs neither

    hosts = check_base_urls(base_url or None)
    return Source(None, hosts, Path(raw_dir).resolve() if raw_dir else None,
                  check_grid(hosts, grid), sensor)


def _folder_grid(folder: Path, grid: str | None) -> tuple[str | None, str]:
    """(the grid whose files a run reads from `folder`, the folder's other grids as text).

    `grid` (asked, or the cube's) when the folder has its files, else the folder's only
    grid; a folder mixing grids without `grid`, or lacking `grid`'s files, is refused
    naming the grids it holds. A folder without product files is left to the run to refuse.
    """
    counts = folder_grids(folder)

    def listed(names) -> str:
        return ", ".join(f"{name} ({count_text(counts[name], 'file')})" for name in names)

    found = listed(counts)
    if not counts:
        return grid, ""
    if grid is None:
        if len(counts) > 1:
            raise BadInput(f"--source {folder}: holds files of several grids ({found}); "
                           "give --grid to choose one")
        return next(iter(counts)), ""
    if grid not in counts:
        raise BadInput(f"--source {folder}: holds no {grid} files, only {found}")
    return grid, listed(name for name in counts if name != grid)


def _check_source_files(src: Source, days: list[dt.date], grid: GridCoords | None = None,
                        crs: products.GridCRS | None = None) -> None:
    """Refuse a run, before it touches the store, when a folder's file for one of `days` (the
    days it will read) is one the ingest would fail on (`sources.check_file_header`): a
    headers-only pass over those files, against the cube's grid and CRS when it has them.
    Downloads are validated as they arrive, so a server needs nothing here."""
    if src.directory is None or not days:
        return
    files = find_day_files(src.directory, src.grid)
    for day in sorted(set(days) & files.keys()):
        try:
            grid, crs = check_file_header(files[day], src.sensor, grid, crs)
        except BadSourceFile as err:  # its message begins with the file's name
            raise BadInput(f"{files[day].parent}/{err}; nothing was changed: replace or "
                           "remove the file") from None


def _raw_dir(src: Source) -> Path:
    """Where downloads from `src` are kept: --raw-dir, or the cache folder of its first host
    (`download.default_raw_dir`: fallback hosts serve the same tree, so one folder)."""
    if src.raw_dir is not None:
        return src.raw_dir
    from sicube.archive.download import default_raw_dir

    return default_raw_dir(src.base_urls)


def _check_first_day(first: dt.date, last: dt.date, src: Source) -> None:
    """Days before the first day of the sensors asked for are refused up front, in one line."""
    if src.base_urls:
        from sicube.archive.download import check_span

        check_span(first, last, src.grid, src.sensor)


def _check_workers(workers: int | None) -> None:
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise BadInput(f"--workers {workers}: must be at least 1")


def _check_chunks(chunks: dict | None) -> None:
    for name, size in (chunks or {}).items():
        if name not in cube.DEFAULT_CHUNKS:
            raise BadInput(f"chunks: unknown dimension {name!r} (time, y or x)")
        if not isinstance(size, int) or size < 1:
            raise BadInput(f"chunks: {name} must be a positive integer, got {size!r}")


def _check_window_fits(params: FillParams, grid: GridCoords) -> None:
    """A space window must fit in the grid: the halo exchange cannot reach past its edges."""
    ny, nx = grid.shape
    if params.space_window >= min(ny, nx):
        raise BadInput(f"--space-window {params.space_window}: larger than the grid "
                       f"({ny} x {nx} cells); give at most {min(ny, nx) - 1}")


def _local_path(store: str) -> Path | None:
    """The store's local folder, or None for a remote store."""
    return store_location.local_path(store)


def _store_url(store: str | os.PathLike, storage_options: dict | None = None) -> str:
    """The store as zarr and fsspec take it: local stores (``file://`` too) as plain absolute
    paths; BadInput for a URL whose file system cannot be made."""
    store = store_location.location(store)
    if _local_path(store) is None:
        store_location.filesystem(store, storage_options)
    return store


# --- store: lock, create, state ------------------------------------------------------------------


def _open_group(store: str, mode: str = "r+", storage_options: dict | None = None):
    """Open the store for building: fresh metadata, never the consolidated copy."""
    import zarr

    zstore = store_location.open_store(store, storage_options=storage_options, mode=mode)
    return zarr.open_group(zstore, mode=mode, use_consolidated=False)


def _exists(store: str, storage_options: dict | None = None) -> bool:
    if versions.is_versioned(store):
        return versions.exists(store, storage_options)
    local = _local_path(store)
    if local is not None:
        return local.exists()
    fs, path = store_location.filesystem(store, storage_options)
    try:
        return fs.exists(path)
    except Exception as err:  # noqa: BLE001 - unreachable server, no permission
        raise store_location.failure(store, err) from None


def _create_store(store: str, days: list[dt.date], grid: GridCoords, crs: products.GridCRS,
                  chunks: dict | None, attrs: dict, storage_options: dict | None = None
                  ) -> np.ndarray:
    """Write the empty cube; locally into a temp folder renamed at the end: all or nothing.
    Returns the cell areas it wrote, so that the run need not read them back."""
    ds = cube.template(days, grid.x, grid.y, crs, chunks=chunks, attrs=attrs)
    with store_location.consolidated_quietly():
        local = _local_path(store)
        if local is not None:  # Ctrl-C, a full disk: no half-made folder stays behind
            with store_location.atomic_folder(local) as tmp:
                ds.to_zarr(str(tmp), mode="w", compute=False, zarr_format=3)
                cells = _write_cell_area(str(tmp), ds)
        else:
            target = store_location.open_store(store, storage_options=storage_options, mode="w-")
            ds.to_zarr(target, mode="w-", compute=False, zarr_format=3)
            cells = _write_cell_area(store, ds, storage_options)
    return cells


def _write_cell_area(store: str, ds, storage_options: dict | None = None) -> np.ndarray:
    """Compute and write the grid's cell areas (lazy in `cube.template`) once, at the cube's
    birth, on this machine's threads (a cluster's workers may not reach a store this
    process just made); returns them."""
    from dask import threaded

    # threaded.get itself, not "threads": dask imports `distributed` (0.7 s) to resolve a name
    cells = ds[cube.CELL_AREA].data.compute(scheduler=threaded.get,
                                            num_workers=haloed.thread_count())
    target = cube.for_writing(_open_group(store, storage_options=storage_options)[cube.CELL_AREA])
    target[...] = cells
    return cells


def _read_state(group) -> BuildState:
    """The build's state from the cube's record, for a run that writes to it: a cube of a
    newer format, or one from before the day lists, is refused."""
    check_format(group.attrs, group.store, writing=True)
    record = CubeRecord.from_attrs(group.attrs)
    if "args" not in (record.build or {}) or not record.has_day_lists:
        raise BadInput(f"{group.store}: a cube from an older sicube (no day lists); "
                       "rebuild it into a new store")
    data = {**record.build, "observed": record.source_files or {},
            "missing": list(record.missing_days), "failed": record.failed_days or {},
            "suspicious": record.suspicious_days or {}}
    return BuildState.from_json(json.dumps(data))


def _state_attrs(state: BuildState) -> dict:
    """The state as group attributes: the day lists under their own names (so that `info`
    and other readers see them without knowing the builder's record), in this release's
    form (`cube.FORMAT_VERSION`): an update of a cube from an earlier release rewrites its
    record so."""
    data = json.loads(state.to_json())
    return CubeRecord(
        format=cube.FORMAT_VERSION, source_files=data.pop("observed"),
        missing_days=tuple(data.pop("missing")), failed_days=data.pop("failed"),
        suspicious_days=data.pop("suspicious"), build=data).to_attrs()


def _save(group, state: BuildState) -> None:
    """Record the state, and republish the consolidated metadata (writing the group's
    attributes drops it; readers over HTTP cannot open a cube without it)."""
    group.update_attributes(_state_attrs(state))  # one write (attrs.update: one per key)
    _consolidate(group.store)


def _set_status(group, status: str, **attrs) -> None:
    """Say the cube's state, and republish the consolidated metadata that readers use."""
    group.update_attributes({cube.STATUS: status, **attrs})
    _consolidate(group.store)


def _consolidate(store) -> None:
    import zarr

    if not getattr(store, "supports_consolidated_metadata", True):
        return  # icechunk: lists fast, keeps none
    with store_location.consolidated_quietly():
        zarr.consolidate_metadata(store)


def _finish_command(command: str, store: str, src: Source, extra: list[str]) -> str:
    return "`" + shlex.join(["sicube", command, *extra, "--store", store,
                             *src.finish_args()]) + "`"


# --- stages ---------------------------------------------------------------------------------------


def _ingest(group, state: BuildState, arrivals: Iterator[Arrival] | _OnCluster,
            grid: GridCoords, summary: BuildSummary, progress: bool,
            cells=None) -> ingest.NanTally:
    """Look for every unobserved day in the source and write the chunks whose days arrived
    (here in two threads, or on a cluster's workers: `ingest.run_on_cluster`, whose tasks
    read their own cell areas; here `cells`, the grid's, for the day statistics)."""
    chunk = group[cube.RAW].chunks[0]
    days = state.days
    looked_for = state.unobserved()
    kept = {}
    for i, day in enumerate(days):
        if f"{day:%Y%m%d}" in state.observed:
            kept.setdefault(i // chunk, []).append(i % chunk)
    failed_before = set(state.failed)
    before = set(state.missing) | failed_before
    summary.looked_again = len(before)
    position = {day: i for i, day in enumerate(days)}

    def before_write(c: int) -> None:
        # Said before the write: a run killed during it rewrites the chunk next time.
        state.rewrite.add(c)
        _save(group, state)

    def record(result: ingest.ChunkResult) -> None:
        changed = []
        news = result.chunk in state.rewrite
        for arrival in result.arrivals:
            key = f"{arrival.day:%Y%m%d}"
            if arrival.status == OK:
                state.record_day(key, OK, result.provenance[key])
                changed.append(position[arrival.day])
                if key in before:
                    summary.recovered.append(arrival.day)
                if key in failed_before:
                    summary.recovered_after_failure.append(arrival.day)
                if arrival.attempts > 1:
                    summary.retried[arrival.day] = arrival.attempts
            else:
                news |= state.record_day(key, arrival.status, arrival.error)
        state.invalidate(changed, chunk)
        state.rewrite.discard(result.chunk)
        if news or changed:  # a day still missing for the same reason changes nothing
            _save(group, state)

    if isinstance(arrivals, _OnCluster):
        def before_submit(chunks: list[int]) -> None:
            # Every chunk a task may write, said before any is submitted (one save).
            state.rewrite.update(chunks)
            _save(group, state)

        tally = ingest.run_on_cluster(
            arrivals.cluster.client, arrivals.cluster.open_group(), days,
            [position[d] for d in arrivals.days], kept, chunk, arrivals.fetch, grid,
            _crs(group), before_submit=before_submit, record=record, progress=progress)
    else:
        tally = ingest.run(group, days, looked_for, kept, arrivals, grid, _crs(group),
                           before_write=before_write, record=record, progress=progress,
                           cell_area=cells)
    summary.recovered.sort()
    summary.recovered_after_failure.sort()
    return tally


def _clean_rewrites(group, state: BuildState, grid: GridCoords) -> None:
    """Rewrite the chunks a killed run was writing: its observed days, NaN elsewhere."""
    chunk = group[cube.RAW].chunks[0]
    for c in sorted(state.rewrite):
        days = state.days[c * chunk:(c + 1) * chunk]
        kept = [i for i, d in enumerate(days) if f"{d:%Y%m%d}" in state.observed]
        tally = ingest.NanTally(np.zeros(grid.shape, np.int32))
        ingest.write_chunk(group, c, state.days, [], kept, grid, _crs(group), tally,
                           contextlib.nullcontext())
        state.invalidate(range(c * chunk, c * chunk + len(days)), chunk)
        state.rewrite.discard(c)
        _save(group, state)


def _judge_days(group, state: BuildState, grid: GridCoords) -> np.ndarray:
    """Flag the suspicious days of the whole span from the days' statistics
    (`sicube.pipeline.quality`), and forget the fills that depend on a day whose verdict changed.

    Run after every ingest, over every day: a day's rules look at its neighbours, so days
    added by an update (or a late file) change the verdict of the days before them. Days
    ingested before statistics existed get theirs from the store, once. Returns the
    per-day `day_quality` flags.
    """
    days = [f"{d:%Y%m%d}" for d in state.days]
    lacking = [i for i, k in enumerate(days)
               if k in state.observed and "stats" not in state.observed[k]]
    if lacking:
        cells = ingest.stat_cells(group, grid, _crs(group))
        raw = group[cube.RAW]
        for i in lacking:
            provenance = state.observed[days[i]]
            provenance["stats"] = quality.day_stats(
                np.ascontiguousarray(raw[i], np.float32), cells,
                int(provenance.get("out_of_range_cells") or 0))
    table = quality.stats_table([(state.observed.get(k) or {}).get("stats") for k in days])
    flags, reasons = quality.judge(table, state.args.quality)
    changed = state.judge({days[i]: why for i, why in reasons.items()},
                          group[cube.RAW].chunks[0])
    if lacking or changed:
        _save(group, state)
    return flags


def _write_day_quality(group, state: BuildState, flags: np.ndarray) -> None:
    """The per-day statistics and `day_quality` (cubes from before them have no place)."""
    if cube.DAY_QUALITY not in group:
        return
    table = quality.stats_table([(state.observed.get(f"{d:%Y%m%d}") or {}).get("stats")
                                 for d in state.days])
    for name in cube.DAY_STATS:
        group[name][:] = table[name].astype(np.float32)
    group[cube.DAY_QUALITY][:] = flags


def _excluded_days(state: BuildState) -> np.ndarray:
    """Per day: left out of the fill (a suspicious day under the policy "missing")."""
    excluded = state.excluded()
    return np.array([f"{d:%Y%m%d}" in excluded for d in state.days], bool)


def _write_observed(group, state: BuildState) -> None:
    """`day_observed` and `sensor` from the state, written when the run ends: a reader of a
    cube being updated sees a day as observed only once it is ingested and filled."""
    group[cube.OBSERVED][:] = [f"{d:%Y%m%d}" in state.observed for d in state.days]
    if cube.SENSOR in group:  # a cube from before the variable existed has none
        group[cube.SENSOR][:] = np.array(
            [_sensor_code(state.observed.get(f"{d:%Y%m%d}")) for d in state.days], np.uint8)


def _sensor_code(provenance: dict | None) -> int:
    """The `sensor` value of a day: its provenance's sensor, else its file name's; 0 if none."""
    if provenance is None:
        return 0
    name = provenance.get("sensor")
    if name is None:
        parts = products.file_name_parts(str(provenance.get("name", "")))
        name = parts.sensor if parts else None
    return products.SENSORS[name].code if name in products.SENSORS else 0


def _make_mask(group, state: BuildState, grid: GridCoords, tally: ingest.NanTally) -> None:
    """Store land_mask, nan_ratio and pole_hole: given, kept, or from the observed days.

    The NaN frequency is updated incrementally: the counts of the days it already covers
    come back exactly from nan_ratio x days; the newly observed days are added from this
    run's tally (or read back from the store when a killed run ingested them). On north
    grids the pole hole (`mask.detect_pole_hole`: missing on every observed day, not land on
    the shipped coastline, connected to the pole) is taken out of the land. A given mask
    brings its pole hole, or (a mask from before the pole hole) its land cells off the
    coastline that touch the pole become the hole. When the land mask or the hole changes,
    every fill is redone.
    """
    south = _crs(group).south
    if state.args.mask is not None and not state.mask_frozen:
        given = mask.load_mask(state.args.mask, grid)
        land, ratio = given.land_mask, given.nan_ratio
        hole = (given.pole_hole if given.pole_hole is not None
                else mask.pole_hole_from_land(land, grid.x, grid.y, south))
        if south:
            hole = np.zeros_like(hole)
        state.mask_frozen = True
    elif state.mask_frozen:
        state.mask_done = True
        _save(group, state)
        return
    else:
        counted = len(state.mask_days)
        counts = np.zeros(grid.shape, np.int64)
        if counted:
            counts += np.rint(group[cube.NAN_RATIO][:].astype(np.float64) * counted).astype(
                np.int64)
        # Suspicious days (policy "missing") do not count: those counted before they were
        # found suspicious, and those in this run's tally, are taken out again.
        excluded = state.excluded()
        eligible = set(state.observed) - excluded
        dropped = state.mask_days - eligible
        new = eligible - state.mask_days
        # This run's tally covers days newly observed in it (never already in the mask); the
        # others (ingested by a killed run) are counted from the store.
        unread = sorted(new - tally.days)
        counts += tally.missing
        index = {f"{d:%Y%m%d}": i for i, d in enumerate(state.days)}

        def nan_counts(keys) -> np.ndarray:
            import dask.array as da

            rows = np.array([index[k] for k in sorted(keys)])
            return da.isnan(da.from_zarr(group[cube.RAW])[rows]).sum(
                axis=0, dtype=np.int64).compute()

        if unread:
            counts += nan_counts(unread)
        taken_out = dropped | (tally.days & excluded)
        if taken_out:
            counts -= nan_counts(taken_out)
        state.mask_days -= dropped
        total = counted - len(dropped) + len(new)
        ratio = mask.ratio_from_counts(counts, total)
        land = mask.land_from_ratio(ratio, state.args.mask_threshold)
        hole = mask.detect_pole_hole((counts == total) & (total > 0), grid.x, grid.y, south)
        state.mask_days |= new
        observed_days = sorted(state.mask_days)
        state.mask_span = (f"{state.args.start}/{state.args.end} ({total} observed days"
                           + (f", {observed_days[0]}..{observed_days[-1]})" if total else ")"))
    has_hole = cube.POLE_HOLE in group
    if not has_hole:  # a cube from before the pole hole: no place to keep it, mask as before
        hole = np.zeros_like(hole)
    land = (land * (1 - hole)).astype(np.uint8)  # the pole hole is ocean, never land
    if not (np.array_equal(group[cube.LAND][:], land)
            and (not has_hole or np.array_equal(group[cube.POLE_HOLE][:], hole))):
        state.filled.clear()
        state.flag_counts.clear()
    group[cube.NAN_RATIO][:] = ratio
    group[cube.LAND][:] = land
    if has_hole:
        group[cube.POLE_HOLE][:] = hole
    state.mask_done = True
    _save(group, state)


def _fill(group, state: BuildState, summary: BuildSummary, progress: bool,
          client=None, cells=None) -> None:
    """Fill every time chunk whose fill is not current, a batch at a time, recording each.

    Here batches run one after another (each already keeps every thread busy). On a
    cluster, `_fill_window` batches run at once, so that every worker thread has a task.

    Each filled day's sea-ice extent and area (`sicube.kernels.area`) come out of the same pass:
    every block adds its cells' share while its filled values are in memory, the pole hole
    is added when it is set, so the fill's output is never read back. `cells`: the grid's
    cell areas (an array, or on a cluster the store's Zarr array); None: no extent and area.
    """
    chunk, nt = group[cube.RAW].chunks[0], group[cube.RAW].shape[0]
    params = state.args.fill
    todo = fill_batches(nt, chunk, params.time_window, state.stale_chunks(chunk))
    hole = group[cube.POLE_HOLE][:].astype(bool) if cube.POLE_HOLE in group else None
    if cube.EXTENT not in group:  # a cube from before extent and area
        cells = None
    with_area = cells is not None
    if hole is not None and hole.any():
        ring = pole_hole_ring(hole, group[cube.LAND][:], params.space_window)
        rows, cols = np.nonzero(hole | ring)  # the hole's box, found once for every chunk
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        hole, ring = hole[box], ring[box]
        hole_cells = cells[box][hole] if with_area else None
    else:
        hole = None
    drop = _excluded_days(state)
    bar = _bar(progress, total=len(todo), desc="fill", unit="batch")
    for batch, out in _fill_results(group, todo, params, client, summary, cells, drop):
        n_days, n_counts = batch.stop - batch.start, len(batch.chunks) * len(FillFlag)
        out = out.reshape(-1, n_counts + 2 * n_days if with_area else n_counts)
        per_chunk = np.rint(out[:, :n_counts]).astype(np.int64).reshape(
            -1, len(batch.chunks), len(FillFlag)).sum(0)
        extent = out[:, n_counts:n_counts + n_days].sum(0) if with_area else None
        ice = out[:, n_counts + n_days:].sum(0) if with_area else None
        for c, chunk_counts in zip(batch.chunks, per_chunk, strict=True):
            if hole is not None:  # after the chunk's cells are written, before it is recorded
                days = slice(c * chunk, min(nt, (c + 1) * chunk))
                change, hole_extent, hole_ice = _fill_pole_hole(group, (days, *box), hole, ring,
                                                                hole_cells, drop[days])
                chunk_counts = chunk_counts + change
                if with_area:
                    extent[days.start - batch.start:days.stop - batch.start] += hole_extent
                    ice[days.start - batch.start:days.stop - batch.start] += hole_ice
            state.flag_counts[c] = [int(n) for n in chunk_counts]
        if with_area:
            group[cube.EXTENT][batch.start:batch.stop] = extent
            group[cube.AREA][batch.start:batch.stop] = ice
        state.filled.update(batch.chunks)
        _save(group, state)
        settings.release_memory()
        bar.update(1)
    bar.close()
    _count_flags(state, summary)


# Tasks in flight per worker thread during a cluster's fill: one running, one queued, so a
# thread never waits for the scheduler between tasks.
FILL_TASKS_PER_THREAD = 2


def _fill_window(client, tasks_per_batch: int) -> int:
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


def _fill_results(group, todo: list[FillBatch], params: FillParams, client,
                  summary: BuildSummary, cells=None, drop: np.ndarray | None = None
                  ) -> Iterator[tuple[FillBatch, np.ndarray]]:
    """Each batch with its `_fill_batch` results as it finishes: one at a time here, a
    window of `_fill_window` batches at once on a cluster (recorded here, in completion
    order)."""
    if client is None:
        here = haloed.thread_count() is not None  # on threads: no dask.array (issue 22)
        for batch in todo:
            yield batch, (_fill_batch_here(group, batch, params, cells, drop) if here
                          else _fill_batch(group, batch, params, cells, drop).compute())
        return
    from distributed import as_completed

    pending = iter(todo)
    running = as_completed()
    batches = {}

    def submit() -> int:
        batch = next(pending, None)
        if batch is None:
            return 0
        graph = _fill_batch(group, batch, params, cells, drop)
        future = client.compute(graph)
        batches[future.key] = batch
        running.add(future)
        return graph.npartitions

    tasks = submit()
    window = _fill_window(client, tasks)
    summary.fill_in_flight = window * tasks
    for _ in range(window - 1):
        submit()
    for future in running:
        yield batches.pop(future.key), future.result()
        del future  # its flag counts are read: let the cluster forget them
        submit()


def _fill_batch(group, batch: FillBatch, params: FillParams, cells=None,
                drop: np.ndarray | None = None) -> da.Array:
    """Lazily fill the batch's days into `sea_ice_conc` and `fill_flag`; per block, the flag
    counts of each of the batch's time chunks, then (given `cells`, the cell areas as an
    array or the store's Zarr array) the block's share of each day's sea-ice extent and area
    (float64 throughout: counts stay exact below 2^53). Days where `drop` (per cube day) is
    set are read as missing (suspicious days).

    Each task reads one spatial chunk of the batch's read window, gets its `space_window`
    halo from its neighbours through `map_overlap`, and writes whole Zarr chunks of both
    outputs. `_fill_batch_here` does the same on this process's threads without Dask.
    """
    import dask.array as da

    raw = group[cube.RAW]
    nt = raw.shape[0]
    a, b = batch.read_start, batch.read_stop
    spatial, depth, per_block, task = _fill_layout(group, batch, params, cells, drop)
    source = da.from_zarr(raw, chunks=(tuple(n for n in (a, b - a, nt - b) if n), *spatial))
    land = da.from_zarr(group[cube.LAND], chunks=spatial)[None]
    halo = {0: 0, 1: depth[0], 2: depth[1]}
    return da.map_overlap(
        _fill_store_block, source[a:b], land, depth=[halo, halo],
        boundary="none", trim=False, align_arrays=False, dtype=np.float64,
        chunks=((1,), (1,) * len(spatial[0]), (per_block,) * len(spatial[1])),
        # named, not hashed: hashing the cell areas (70 MB at n3125) took 50 ms per batch
        name=f"fill-batch-{batch.start}-{uuid.uuid4().hex}", **task,
    )


def _fill_batch_here(group, batch: FillBatch, params: FillParams, cells=None,
                     drop: np.ndarray | None = None) -> np.ndarray:
    """`_fill_batch` run now on this process's threads (`haloed.map_haloed_blocks`): the
    same blocks, results and writes, without importing dask.array (1-2 s of a daily update)."""
    spatial, depth, _, task = _fill_layout(group, batch, params, cells, drop)
    return haloed.map_haloed_blocks(_fill_store_block, group[cube.RAW], group[cube.LAND],
                                    (batch.read_start, batch.read_stop), spatial, depth, **task)


def _fill_layout(group, batch: FillBatch, params: FillParams, cells=None,
                 drop: np.ndarray | None = None) -> tuple[tuple, tuple, int, dict]:
    """A fill batch's spatial blocks, halo depth, results per block and the keywords of
    `_fill_store_block`."""
    raw = group[cube.RAW]
    sw = params.space_window
    a, b = batch.read_start, batch.read_stop
    spatial, depth = halo_layout(haloed.regular_chunks(raw.shape[1:], raw.chunks[1:]),
                                 (sw, sw))
    per_block = len(batch.chunks) * len(FillFlag) + (
        2 * (batch.stop - batch.start) if cells is not None else 0)
    task = dict(
        params=params, core_t=(batch.start - a, batch.stop - a), t0=batch.start,
        bounds=tuple(np.cumsum((0, *c)) for c in spatial), halo=depth, time_chunk=raw.chunks[0],
        targets=(cube.for_writing(group[cube.CONC]), cube.for_writing(group[cube.FLAG])),
        cells=cells, drop=None if drop is None or not drop[a:b].any() else drop[a:b],
    )
    return spatial, depth, per_block, task


def _fill_store_block(block, land, block_info=None, *, params, core_t, t0, bounds, halo,
                      time_chunk, targets, cells=None, drop=None):
    """Fill one haloed block's core, write its fraction and flags; the flag counts of each
    time chunk it covers, then (given `cells`, the grid's cell areas) its extent and area
    per day. Days set in `drop` (per day of the block) are read as missing."""
    if drop is not None:
        block = np.where(drop[:, None, None], np.float32(np.nan), block)
    iy, ix = block_info[0]["chunk-location"][1:]
    (y0, y1), (x0, x1) = bounds[0][iy : iy + 2], bounds[1][ix : ix + 2]
    core = (*core_t, *core_in_block((iy, ix), (y1 - y0, x1 - x0), halo))
    # land is 0 in the fraction: neither ice nor extent; the block's own cells' areas
    cell_km2 = None if cells is None else cells[y0:y1, x0:x1] * area.KM2
    fraction, flags, day_counts, sums = fill_fraction_block(
        block, land[0], core, **params.to_dict(), cell_km2=cell_km2)
    region = (slice(t0, t0 + fraction.shape[0]), slice(y0, y1), slice(x0, x1))
    targets[0][region] = fraction
    targets[1][region] = flags
    counts = [day_counts[i:i + time_chunk].sum(0) for i in range(0, flags.shape[0], time_chunk)]
    parts = [np.concatenate(counts).astype(np.float64)]
    if sums is not None:
        parts += [sums[:, 0], sums[:, 1]]
    return np.concatenate(parts).reshape(1, 1, -1)


def _fill_pole_hole(group, box: tuple[slice, slice, slice], hole: np.ndarray,
                    ring: np.ndarray, hole_cells: np.ndarray | None,
                    drop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Set the pole hole's cells in `box` (days, and the bounding box of hole and ring, which
    `hole` and `ring` are cut to: a few chunks near the grid's centre) by `fill.fill_pole_hole`;
    the change in their flag counts, and per day in sea-ice extent and area (km²): the hole
    counts wholly toward extent (NSIDC), at its new value toward area."""
    conc_array, flag_array = (cube.for_writing(group[cube.CONC]),
                              cube.for_writing(group[cube.FLAG]))
    conc, flags = conc_array[box], flag_array[box]
    raw = group[cube.RAW][box]
    if drop is not None and drop.any():  # suspicious days: their ring is read as missing
        raw[drop] = np.nan
    before = conc[:, hole].astype(np.float64)
    change = fill_pole_hole(raw, conc, flags, hole, ring)
    conc_array[box] = conc
    flag_array[box] = flags
    if hole_cells is None:
        return change, 0.0, 0.0
    km2 = hole_cells * area.KM2
    # NumPy's row sums, not `@`: BLAS picks its kernel, and so its order of sums, by CPU
    extent = km2.sum() - np.where(area.counts_toward_extent(before), km2, 0.0).sum(axis=1)
    ice = ((conc[:, hole].astype(np.float64) - before) * km2).sum(axis=1)
    return change, extent, ice


def _count_flags(state: BuildState, summary: BuildSummary) -> None:
    """Cells filled and left without neighbour, from the per-batch counts in the state."""
    totals = np.zeros(len(cube.FLAG_MEANINGS), np.int64)
    for counts in state.flag_counts.values():
        totals[:len(counts)] += counts  # a cube from before flag 4 recorded four counts
    summary.cells_filled = int(totals[FillFlag.FILLED])
    summary.cells_unfilled = int(totals[FillFlag.NO_NEIGHBOUR])
    summary.cells_pole_hole = int(totals[FillFlag.POLE_HOLE])


def _account(state: BuildState, summary: BuildSummary) -> None:
    """The summary's day lists over the whole span, from the state."""
    days = state.days
    summary.span = (days[0], days[-1])
    summary.observed = [d for d in days if f"{d:%Y%m%d}" in state.observed]
    summary.failed = {d: state.failed[f"{d:%Y%m%d}"] for d in days
                      if f"{d:%Y%m%d}" in state.failed}
    summary.missing = [d for d in days if f"{d:%Y%m%d}" in state.missing]
    summary.suspicious = {d: state.suspicious[f"{d:%Y%m%d}"] for d in days
                          if f"{d:%Y%m%d}" in state.suspicious}
    summary.suspicious_policy = state.args.suspicious


def _bar(progress: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(disable=not progress, **kwargs)


@contextlib.contextmanager
def _scheduler(scheduler, workers: int | None, summary: BuildSummary) -> Iterator[object]:
    """Run dask work on threads, processes, a given Client or a scheduler address; yields
    the `distributed.Client` when there is one (the run then ingests on its workers), else
    None."""
    # The scheduler functions themselves, not their names: dask imports `distributed` (0.7 s)
    # to resolve a name, which a daily update would pay every time.
    if scheduler is None or scheduler == "threads":
        # The fill maps its blocks on these threads itself (`haloed`); the stages that
        # still use dask (a new cube's cell areas, the mask) set it to the same threads
        # (`haloed.dask_on_threads`): a daily update never imports dask.
        with haloed.threads(workers):
            yield None
    elif scheduler == "processes":
        import dask
        from dask import multiprocessing

        with dask.config.set(scheduler=multiprocessing.get, num_workers=workers):
            yield None
    else:
        from distributed import Client

        # The client made current, not put in dask's config: a nanny in this process (a
        # LocalCluster's) copies that config into the worker it restarts, and a Client in
        # it cannot be pickled, so a killed worker would never come back.
        if isinstance(scheduler, Client):
            summary.dashboard = scheduler.dashboard_link
            with scheduler.as_current():
                yield scheduler
            return
        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError, ValueError) as err:
            raise BadInput(f"--scheduler {scheduler}: no dask scheduler there ({err})") from err
        summary.dashboard = client.dashboard_link
        log.warning("dask dashboard: %s", client.dashboard_link)
        with client, client.as_current():
            yield client


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


# --- one run: ingest, mask, fill, finish ----------------------------------------------------------


def _run(group, state: BuildState, arrivals: Iterator[Arrival], summary: BuildSummary,
         src: Source, progress: bool, cells: np.ndarray | None = None) -> None:
    """Execute what the state says is left: ingest what arrives, mask, fill, finish.
    `cells`: the cube's cell areas when the caller has them (it just made the cube)."""
    timer = _Timer(summary)
    grid = _grid(group)
    summary.shape = group[cube.RAW].shape
    on_cluster = isinstance(arrivals, _OnCluster)
    # The cell areas (70 MB at n3125) for the day statistics and the fill's extent and area:
    # in memory once and shared by the threads (a read per fill block costs more than its
    # sums); on a cluster the store's array, each worker reading its own block.
    if on_cluster:
        cells = group[cube.CELL_AREA] if cube.CELL_AREA in group else None
    elif cells is None and cube.CELL_AREA in group:
        cells = group[cube.CELL_AREA][:]
    with timer("ingest"):
        _clean_rewrites(group, state, grid)
        tally = _ingest(group, state, arrivals, grid, summary, progress, cells)
    with timer("quality"):
        flags = _judge_days(group, state, grid)
    if not state.mask_done:
        with timer("mask"), _bar(progress, total=1, desc="mask", unit="mask") as bar, \
                haloed.dask_on_threads():
            _make_mask(group, state, grid, tally)
            bar.update(1)
    del tally  # the counts are in the store now; the fill needs the memory
    with timer("fill"):
        _fill(group, state, summary, progress,
              arrivals.cluster.client if on_cluster else None, cells)
    _finish(group, state, summary, src, flags)


def _finish(group, state: BuildState, summary: BuildSummary, src: Source,
            flags: np.ndarray) -> None:
    """Write the provenance, say `complete`, and consolidate the metadata for readers."""
    _account(state, summary)
    _write_observed(group, state)
    _write_day_quality(group, state, flags)
    state.complete_through = state.args.end
    state.updating_from = None
    _save(group, state)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # CF's history: one line per build or update that finished, the newest last.
    earlier = CubeRecord.from_attrs(group.attrs, ["history"]).history
    history = "\n".join(filter(None, (earlier or "",
                                       f"{now}: sicube {__version__} filled the days "
                                       f"{state.args.start} to {state.args.end} from {src.where}")))
    found = products.grid_of_coords(group["x"][:], group["y"][:])
    _set_status(group, cube.COMPLETE, **CubeRecord(
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


@contextlib.contextmanager
def _failure_recorded(store: str, storage_options: dict | None = None) -> Iterator[None]:
    """On an error or Ctrl-C inside a run, say so in the cube (it stays resumable)."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(Exception):
            group = _open_group(store, storage_options=storage_options)
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else \
                f"{type(err).__name__}: {err}".splitlines()[0][:300]
            if str(group.attrs.get(cube.STATUS, "")).startswith(cube.UPDATING):
                # The cube stays readable through the day it was complete through.
                group.attrs[cube.LAST_ERROR] = reason
            else:
                _set_status(group, f"{cube.FAILED}: {reason}")
        raise


def _grid(group) -> GridCoords:
    return GridCoords(group["x"][:], group["y"][:])


def _crs(group) -> products.GridCRS:
    """The cube's CRS, as its grid mapping declares it (taken from the first file)."""
    return products.GridCRS.from_attrs(group[cube.GRID_MAPPING].attrs)


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
    store = _store_url(store, storage_options)
    src = _source(base_url, source, raw_dir, grid, sensor)
    _check_first_day(first, last, src)
    params = _fill_params(fill, time_window=time_window, space_window=space_window,
                          alpha=alpha, sigma=sigma)
    mask.check_threshold(mask_threshold)
    _check_workers(workers)
    _check_chunks(chunks)
    settings.apply()  # zarr's codec threads, before this process's first Zarr read
    if suspicious not in SUSPICIOUS_POLICIES:
        raise BadInput(f"--suspicious {suspicious}: choose from {', '.join(SUSPICIOUS_POLICIES)}")
    rules = _quality_rules(quality, quality_rules)
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
    finish = _finish_command("build", store, src,
                             [f"--start={first:%Y%m%d}", f"--end={last:%Y%m%d}", *fill_args,
                              *([f"--grid={grid}"] if grid else [])])

    # The scheduler is reached first, so a wrong address costs nothing.
    with store_location.build_lock(store), \
            versions.run_session(store, "build", summary, storage_options, scheduler), \
            _scheduler(scheduler, workers, summary) as client:
        cluster = _Cluster(client, store, storage_options) if client is not None else None
        group, state, restarted = _resume(store, args, restart_fill, storage_options)
        if group is None:
            days = list(day_range(first, last))
            _check_source_files(src, days)
            arrivals = src.arrivals(days, progress, None, cluster)
            held: list[Arrival] = []
            group, state, cells = _create(store, days, args, chunks, arrivals, held, summary,
                                          finish, storage_options)
            if group is None:
                return summary
            if cluster is None:  # on a cluster the tasks fetch the held days again
                arrivals = _chain(held, arrivals)
        else:
            _check_source_files(src, [state.days[i] for i in state.unobserved()], _grid(group),
                                _crs(group))
            if restarted:
                _save(group, state)
                if cube.cube_status(group.attrs) == cube.COMPLETE:
                    _set_status(group, cube.BUILDING)
            cells = None
            arrivals = _look_again(group, state, src, progress, summary, cluster)
            if arrivals is None:
                return summary
        with _failure_recorded(store, storage_options):
            _run(group, state, arrivals, summary, src, progress, cells)
    summary.store_bytes = cube.store_bytes(store, storage_options)
    return summary


def _fill_params(fill: FillParams | None, **keywords) -> FillParams:
    """The build's fill parameters: `fill`, else the keywords. A keyword given besides `fill`
    must agree with it (one at its default is taken as not given); BadInput otherwise."""
    if fill is None:
        return FillParams(**keywords)
    if not isinstance(fill, FillParams):
        raise BadInput(f"fill: a sicube.FillParams, got {type(fill).__name__}")
    for name, value in keywords.items():
        if value != getattr(FillParams, name) and value != getattr(fill, name):
            raise BadInput(f"{name}={value!r} contradicts fill ({name} {getattr(fill, name)!r});"
                           " give one of them")
    return fill


def _quality_rules(quality: QualityRules | None, quality_rules: QualityRules | None
                   ) -> QualityRules:
    """The build's suspicious-day rules: `quality` or its older name `quality_rules`
    (BadInput when both are given and differ), else the defaults."""
    for rules in (quality, quality_rules):
        if rules is not None and not isinstance(rules, QualityRules):
            raise BadInput(f"quality: a sicube.QualityRules, got {type(rules).__name__}")
    if quality is not None and quality_rules is not None and quality != quality_rules:
        raise BadInput("quality and quality_rules differ; give one of them")
    return quality or quality_rules or QualityRules()


def _resume(store: str, args: BuildArgs, restart_fill: bool,
            storage_options: dict | None = None):
    """(group, state, restarted) of an existing cube built with `args`; (None, None, False)
    for a new store. Writes nothing.

    Refuses a path that is not a sicube cube and a cube of another span; other fill or mask
    parameters only with `restart_fill`, which forgets the mask and every fill (`restarted`:
    the state is changed so, for the caller to save).
    """
    if not _exists(store, storage_options):
        return None, None, False
    if not cube.is_cube(store, storage_options):
        raise BadInput(f"{store}: exists and is not a sicube cube; refusing to touch it")
    group = _open_group(store, storage_options=storage_options)
    state = _read_state(group)
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
                           f"({_describe_args(state.args)}); {hint}")
        _check_window_fits(args.fill, _grid(group))
        state.args = args
        state.filled.clear()
        state.flag_counts.clear()
        state.mask_done = state.mask_frozen = False
        state.mask_days.clear()
        return group, state, True
    return group, state, False


def _look_again(group, state: BuildState, src: Source, progress: bool,
                summary: BuildSummary,
                cluster: _Cluster | None = None) -> Iterator[Arrival] | _OnCluster | None:
    """The arrivals of every day the cube still lacks; None when nothing can change.

    On a complete cube only days that have arrived since change it: their chunks are
    rewritten and their fills redone. Until the run ends the cube is `updating`, readable
    through the day it was complete through. On a cluster a worker fetches those days first
    to decide (and the ingest tasks fetch the ones that arrived again: a few late days).
    """
    days = [state.days[i] for i in state.unobserved()]
    complete = state.is_complete(group[cube.RAW].chunks[0]) and not state.rewrite
    if complete and src.directory is not None:
        present = find_day_files(src.directory, src.grid)  # a folder is looked at without reading
        if not any(d in present for d in days):
            _nothing_to_do(group, state, summary)
            return None
        # Still every missing day: a chunk is written once all its looked-for days are in.
    arrivals = src.arrivals(days, progress, _grid(group), cluster)
    if complete:
        # downloads first: decide before writing anything
        if isinstance(arrivals, _OnCluster):
            looked = cluster.probe(days, arrivals.fetch, _grid(group)).arrivals
        else:
            looked = list(arrivals)
        if not any(a.status == OK for a in looked):
            _nothing_to_do(group, state, summary)
            for a in looked:  # a failure now replaces an old reason
                state.record_day(f"{a.day:%Y%m%d}", a.status, a.error)
            _save(group, state)
            _consolidate(group.store)
            return None
        state.updating_from = state.complete_through = state.args.end
        _save(group, state)
        _set_status(group, cube.UPDATING)
        if not isinstance(arrivals, _OnCluster):
            arrivals = iter(looked)
    return arrivals


def _nothing_to_do(group, state: BuildState, summary: BuildSummary) -> None:
    summary.nothing_to_do = True
    summary.looked_again = len(state.missing) + len(state.failed)
    summary.shape = group[cube.RAW].shape
    _account(state, summary)
    _count_flags(state, summary)


def _create(store: str, days: list[dt.date], args: BuildArgs, chunks: dict | None,
            arrivals: Iterator[Arrival] | _OnCluster, held: list[Arrival],
            summary: BuildSummary, finish: str, storage_options: dict | None = None):
    """Create the empty cube once the first file has arrived (it tells the grid; on a
    cluster a worker fetches days until one has a file and reads it).

    (group, state, the cell areas written); (None, None, None) when no file arrived and
    some day failed (the summary names them, exit 1); BadInput when every day is simply
    absent from the source.
    """
    if isinstance(arrivals, _OnCluster):
        probe = arrivals.cluster.probe(days, arrivals.fetch, None,
                                       until_found=(chunks or {}).get("time",
                                                                      cube.DEFAULT_CHUNKS["time"]))
        held += probe.arrivals
        if probe.error:
            raise BadInput(probe.error)
        found = (probe.grid, probe.crs) if probe.grid is not None else None
    else:
        found = _first_grid(arrivals, held)
    if found is None:
        failed = {a.day: a.error for a in held if a.status == FAILED}
        if failed:
            summary.failed, summary.no_cube = failed, True
            summary.missing = [a.day for a in held if a.status == MISSING]
            return None, None, None
        # the first day's error names the URLs asked (a 404's too)
        first = min((a for a in held if a.error), key=lambda a: a.day, default=None)
        raise BadInput(f"no source file for any day of {days[0]} .. {days[-1]} at "
                       f"{summary.source}" + (f" ({first.day:%Y%m%d}: {first.error})"
                                              if first else ""))
    grid, crs = found
    _check_window_fits(args.fill, grid)
    if args.mask is not None:  # refuse a bad mask before anything is written
        mask.load_mask(args.mask, grid)
    state = BuildState(args)
    attrs = {**_state_attrs(state), cube.STATUS: cube.BUILDING, cube.FINISH: finish}
    cells = _create_store(store, days, grid, crs, chunks, attrs, storage_options)
    return _open_group(store, storage_options=storage_options), state, cells


def _first_grid(arrivals: Iterator[Arrival], held: list[Arrival]):
    """(grid, CRS) of the first file to arrive, the arrivals up to it kept in `held`; None
    when none arrives."""
    for arrival in arrivals:
        held.append(arrival)
        if arrival.status == OK:
            # Structure only: the data are decoded at ingest, where a corrupt download
            # becomes a failed day (whichever file happens to arrive first).
            try:
                return read_grid(arrival.path)
            except BadSourceFile as err:
                raise BadInput(f"{arrival.path}: {err}") from err
    return None


def _chain(held: list[Arrival], rest: Iterator[Arrival]) -> Iterator[Arrival]:
    yield from held
    yield from rest


def _describe_args(args: BuildArgs) -> str:
    fill = args.fill
    return (f"{args.start} .. {args.end}, time_window {fill.time_window}, "
            f"space_window {fill.space_window}, alpha {fill.alpha}, sigma {fill.sigma}, "
            f"mask {args.mask or 'threshold ' + str(args.mask_threshold)}, "
            f"suspicious {args.suspicious}")


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
    store = _store_url(store, storage_options)
    settings.apply()  # zarr's codec threads, before this process's first Zarr read
    if not cube.is_cube(store, storage_options):
        cube.open_group(store, storage_options=storage_options)  # says why: missing, ...
        raise BadInput(f"{store}: not a sicube cube")
    _check_workers(workers)
    summary = BuildSummary(store=store, span=(dt.date.min, dt.date.min))
    with store_location.build_lock(store), \
            versions.run_session(store, "update", summary, storage_options, scheduler), \
            _scheduler(scheduler, workers, summary) as client:
        cluster = _Cluster(client, store, storage_options) if client is not None else None
        group = _open_group(store, storage_options=storage_options)
        state = _read_state(group)
        status = cube.cube_status(group.attrs)
        if status not in (cube.COMPLETE, cube.UPDATING):
            raise BadInput(f"{store}: its build has not finished ({status}); finish it with "
                           f"{group.attrs.get(cube.FINISH, 'the same sicube build command')}")
        src = _update_source(group, base_url, source, raw_dir, sensor)
        summary.source, summary.other_grids = src.where, src.other_grids
        last = parse_date(state.args.end)
        if state.updating_from is not None:  # an interrupted update: finish it first
            if end is not None and parse_date(end, "end") != last:
                raise BadInput(f"{store}: an interrupted update to {last} is unfinished; "
                               f"run `sicube update --store {store} --end {last:%Y%m%d}` first")
            wanted = last
        else:
            wanted = _update_end(end, last, src, allow_gap)
        # Nothing is written before the files are checked: a folder's files for the days the
        # run reads (late and new days) refuse the update when one is bad; a server's new
        # days are downloaded (each validated) before the time axis grows.
        _check_source_files(src, [*(state.days[i] for i in state.unobserved()),
                                  *day_range(last + dt.timedelta(days=1), wanted)],
                            _grid(group), _crs(group))
        fetched: list[Arrival] = []
        if wanted > last and src.base_urls and state.updating_from is None:
            wanted, fetched = _fetch_new_days(src, last, wanted, end is None, allow_gap,
                                              _grid(group), progress, cluster)
        chunk = group[cube.RAW].chunks[0]
        if wanted > last:
            _set_status(group, cube.UPDATING, **{
                cube.FINISH: _finish_command("update", store, src, [])})
            with _failure_recorded(store, storage_options):
                _extend_time(group, list(day_range(parse_date(state.args.start), wanted)))
                state.mask_frozen = True  # the cube's mask stays the mask
                state.extend(wanted, chunk)
                _save(group, state)
            looked = [state.days[i] for i in state.unobserved()]
            if fetched and cluster is None:  # on a cluster the tasks fetch them again
                got = {a.day for a in fetched}
                arrivals = _chain(fetched, src.arrivals([d for d in looked if d not in got],
                                                        progress, _grid(group)))
            else:
                arrivals = src.arrivals(looked, progress, _grid(group), cluster)
        else:
            state.mask_frozen = True
            arrivals = _look_again(group, state, src, progress, summary, cluster)
            if arrivals is None:
                return summary
        with _failure_recorded(store, storage_options):
            _run(group, state, arrivals, summary, src, progress)
    summary.store_bytes = cube.store_bytes(store, storage_options)
    return summary


def _update_source(group, base_url, source, raw_dir, sensor: str | None = None) -> Source:
    """The update's source: as given, else where the cube came from (folder or hosts); the
    grid is the cube's, the sensor choice the build's unless given."""
    record = CubeRecord.from_attrs(group.attrs)
    grid = record.grid
    if grid is None:
        found = products.grid_of_coords(group["x"][:], group["y"][:])
        grid = found.name if found else None
    sensor = sensor or record.source_sensor or products.AUTO
    if source is not None or base_url is not None:
        return _source(base_url, source, raw_dir, grid, sensor)
    folder = record.source_directory or None
    if folder is not None:
        if not Path(folder).is_dir():
            raise BadInput(f"the cube's source folder {folder} is gone; give --source or "
                           "--base-url")
        return _source(None, folder, raw_dir, grid, sensor)
    hosts = list(record.source_base_urls or ()) or record.source_base_url or None
    return _source(hosts, None, raw_dir, grid, sensor)


def _update_end(end: DateLike | None, last: dt.date, src: Source, allow_gap: bool) -> dt.date:
    """The update's last day: as given, or the newest the source has; gaps refused."""
    today = dt.datetime.now(dt.timezone.utc).date()
    wanted = parse_date(end, "end") if end is not None else None
    if wanted is not None and wanted > today:
        raise BadInput(f"--end {wanted}: in the future (today is {today} UTC)")
    if wanted is not None and wanted <= last:
        return last
    before = wanted or today - dt.timedelta(days=1)
    newest = _newest_day(src, before, last)
    if wanted is None:
        if newest is None and src.base_urls and (before - last).days > MAX_EMPTY_DAYS:
            raise BadInput(f"{src.where}: no file in the {MAX_EMPTY_DAYS} days up to {before}; "
                           "give --end (and --allow-gap) to append empty days anyway")
        return newest or last
    _check_gap(wanted, newest or last, allow_gap)
    return wanted


def _check_gap(wanted: dt.date, newest: dt.date, allow_gap: bool) -> None:
    """BadInput when appending up to `wanted` adds more than `MAX_EMPTY_DAYS` days without a
    file after `newest`, unless `allow_gap`."""
    gap = (wanted - newest).days
    if gap > MAX_EMPTY_DAYS and not allow_gap:
        raise BadInput(f"--end {wanted}: the source has no file after {newest}, so "
                       f"{gap} empty days would be appended; give an earlier --end, or "
                       "--allow-gap to append them")


def _fetch_new_days(src: Source, last: dt.date, wanted: dt.date, to_newest: bool,
                    allow_gap: bool, grid: GridCoords, progress: bool,
                    cluster: _Cluster | None = None) -> tuple[dt.date, list[Arrival]]:
    """Download a server's new days (last, wanted] before the time axis grows: (the update's
    last day, their arrivals up to it).

    The server's newest day is probed with HEAD requests, which an HTML error page or a
    broken file pass; only days whose download validated count: `to_newest` (no --end) ends
    the update at the newest of them, else the gap guard counts from it. On a cluster a
    worker downloads them (and the ingest tasks again: a few days).
    """
    days = list(day_range(last + dt.timedelta(days=1), wanted))
    if cluster is not None:
        looked = cluster.probe(days, src.fetch, grid).arrivals
    else:
        looked = list(src.arrivals(days, progress, grid))
    newest = max((a.day for a in looked if a.status == OK), default=last)
    if to_newest:
        wanted = newest
    _check_gap(wanted, newest, allow_gap)
    return wanted, [a for a in looked if a.day <= wanted]


def _newest_day(src: Source, before: dt.date, after: dt.date) -> dt.date | None:
    """The newest day in (after, before] the source has a file for; None when there is none
    (a server is probed backwards from `before`, at most `MAX_EMPTY_DAYS` days)."""
    if src.directory is not None:
        found = [d for d in find_day_files(src.directory, src.grid) if after < d <= before]
        return max(found, default=None)
    from sicube.archive.download import latest_available

    limit = min(MAX_EMPTY_DAYS, (before - after).days)
    if limit <= 0:
        return None
    return latest_available(src.base_urls, before=before, limit=limit, grid=src.grid,
                            sensor=src.sensor)


def _extend_time(group, days: list[dt.date]) -> None:
    """Grow the time axis to `days` (new cells empty until ingested and filled)."""
    from sicube.dates import to_datetime64

    n = len(days)
    for name in (*cube.CUBE_VARS, cube.OBSERVED, cube.SENSOR, *cube.DAY_VARS, cube.EXTENT,
                 cube.AREA):
        if name not in group:
            continue  # `sensor`, day statistics, extent and area on a cube from before them
        array = group[name]
        array.resize((n, *array.shape[1:]))
    time_array = group["time"]
    time_array.resize((n,))
    epoch = np.datetime64("1970-01-01", "D")
    time_array[:] = (to_datetime64(days).astype("datetime64[D]") - epoch).astype(np.int32)


__all__ = ["build", "update", "BuildSummary", "MAX_EMPTY_DAYS"]
