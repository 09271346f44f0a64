"""Data-quality reports: missing pixels inside a region (ROI) per day, and what a path holds.

Pure functions that return records; the CLI prints them. `roi_report` replaces the
original `find_several_data_in_target_area.py`, `info` replaces `get_dims.py` and tells
much more (span, missing days, chunking, compression, provenance).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from sicube.archive import products
from sicube.datacube import cube
from sicube.datacube.record import CubeRecord
from sicube.dates import DateLike, count_text, day_list_text, day_range, parse_date, parse_span
from sicube.errors import BadInput, BadSourceFile

DEFAULT_THRESHOLD_PERCENT = 0.1  # the original script's default


# --- ROI ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roi:
    """An index rectangle on the grid, end-exclusive: rows ymin..ymax-1, columns xmin..xmax-1."""

    ymin: int
    ymax: int
    xmin: int
    xmax: int

    @property
    def size(self) -> int:
        """Number of cells inside."""
        return (self.ymax - self.ymin) * (self.xmax - self.xmin)

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) slices for indexing a (y, x) array."""
        return slice(self.ymin, self.ymax), slice(self.xmin, self.xmax)

    def check(self, shape: tuple[int, int]) -> Roi:
        """Return self; BadInput when the rectangle is empty or leaves a grid of `shape`."""
        ny, nx = shape
        if not (0 <= self.ymin < self.ymax <= ny and 0 <= self.xmin < self.xmax <= nx):
            raise BadInput(
                f"ROI y {self.ymin}:{self.ymax}, x {self.xmin}:{self.xmax} is empty or outside "
                f"the {ny} x {nx} grid (need 0 <= ymin < ymax <= {ny}, 0 <= xmin < xmax <= {nx})")
        return self


@dataclass(frozen=True)
class RoiDay:
    """Missing counted cells inside the ROI on one observed day (see `RoiReport.counted`)."""

    date: dt.date
    missing_pixels: int
    missing_percent: float


OCEAN = "ocean"  # RoiReport.counted of a cube: cells neither land nor pole hole
ALL_CELLS = "all"  # of a source folder (no land mask): every cell of the rectangle


@dataclass
class RoiReport:
    """Per observed day, the missing cells inside the ROI; days with no data listed apart.

    A cube has a land mask, so only its ocean cells are counted (`counted` is OCEAN): land
    is never observed, and neither is the north pole hole (ocean the satellite never sees),
    so both are left out and their cells in the ROI given in `land_cells` and
    `pole_hole_cells`. A source folder has no mask: every cell is counted (ALL_CELLS).
    Percentages are of `counted_cells`.
    """

    roi: Roi
    grid_shape: tuple[int, int]
    threshold_percent: float
    start: dt.date
    end: dt.date
    days: list[RoiDay] = field(default_factory=list)
    unobserved: list[dt.date] = field(default_factory=list)
    store: Path | str | None = None
    storage_options: dict | None = None
    source_files: dict[dt.date, Path] = field(default_factory=dict)
    counted: str = ALL_CELLS
    counted_cells: int = 0
    land_cells: int = 0
    pole_hole_cells: int = 0

    @property
    def counted_text(self) -> str:
        """What the counts are of, in words (printed by the CLI)."""
        if self.counted == OCEAN:
            return (f"ocean cells only: {self.counted_cells} of the ROI's {self.roi.size} "
                    f"(left out: {self.land_cells} land, {self.pole_hole_cells} pole hole, "
                    "which is ocean but never observed)")
        return (f"all {self.roi.size} cells of the ROI (a source folder has no land mask, "
                "so land counts as missing)")

    def every_day(self) -> Iterator[tuple[dt.date, RoiDay | None]]:
        """Each day of the span in order, with its counts or None when it has no data."""
        counts = {d.date: d for d in self.days}
        for day in day_range(self.start, self.end):
            yield day, counts.get(day)

    @property
    def flagged(self) -> list[RoiDay]:
        """Observed days whose missing share is at or above the threshold."""
        return [d for d in self.days if d.missing_percent >= self.threshold_percent]

    @property
    def worst(self) -> RoiDay | None:
        """The observed day with the most missing cells in the ROI (the first of ties)."""
        return max(self.days, key=lambda d: d.missing_pixels, default=None)

    def text(self) -> list[str]:
        """The report as `sicube roi` prints it: the ROI, what is counted, the day counts and
        the flagged days, one line each."""
        roi, (ny, nx) = self.roi, self.grid_shape
        lines = [f"ROI y {roi.ymin}:{roi.ymax}, x {roi.xmin}:{roi.xmax} "
                 f"({count_text(roi.size, 'cell')}) on the {ny} x {nx} grid, "
                 f"{self.start} .. {self.end}",
                 f"counted: {self.counted_text}",
                 f"observed days: {len(self.days)}; days with no data: {len(self.unobserved)}",
                 f"days with >= {self.threshold_percent:g}% missing in the ROI: "
                 f"{len(self.flagged)}"]
        for day in self.flagged:
            cells = "cell " if day.missing_pixels == 1 else "cells"  # the column stays aligned
            lines.append(f"  {day.date}  {day.missing_pixels:>9d} {cells}  "
                         f"{day.missing_percent:7.3f}%")
        return lines


def _percent(missing: int, size: int) -> float:
    return 100.0 * missing / size


def _no_ocean(roi: Roi, land: int, hole: int) -> BadInput:
    return BadInput(f"ROI y {roi.ymin}:{roi.ymax}, x {roi.xmin}:{roi.xmax} holds no ocean cell "
                    f"({land} land, {hole} pole hole): nothing to count")


def roi_report(start: DateLike, end: DateLike, ymin: int, ymax: int, xmin: int, xmax: int, *,
               store: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
               threshold_percent: float = DEFAULT_THRESHOLD_PERCENT,
               allow_incomplete: bool = False,
               storage_options: dict | None = None) -> RoiReport:
    """Count the missing cells inside an index rectangle for every observed day of a span.

    From a cube only ocean cells are counted (not land, not the pole hole); from a source
    folder, which has no land mask, every cell (see `RoiReport`).

    Parameters
    ----------
    start, end : the span (both included).
    ymin, ymax, xmin, xmax : the rectangle in grid indices, end-exclusive (as Python
        slices); row 0 is the first y (the southern edge: y ascends).
    store : a cube (path or any fsspec URL, with `storage_options`); its `sea_ice_conc_raw`
        is read, only the chunks under the ROI.
    source : or a folder of daily files (read one at a time and validated).
    threshold_percent : days at or above this share of missing cells are `flagged`.
    allow_incomplete : count in a cube whose build has not finished (refused by default).

    Returns
    -------
    RoiReport
    """
    first, last = parse_span(start, end)
    if (store is None) == (source is None):
        raise BadInput("give either a cube store or a source folder")
    if not np.isfinite(threshold_percent) or threshold_percent < 0:
        raise BadInput(f"threshold-percent: must be >= 0, got {threshold_percent}")
    roi = Roi(int(ymin), int(ymax), int(xmin), int(xmax))
    days = list(day_range(first, last))
    if store is not None:
        return _roi_from_store(store, roi, first, last, days, threshold_percent,
                               allow_incomplete, storage_options)
    return _roi_from_source(Path(source), roi, first, last, days, threshold_percent)


def _roi_from_store(store, roi, first, last, days, threshold, allow_incomplete,
                    storage_options) -> RoiReport:
    ds = cube.open_cube(store, allow_incomplete=allow_incomplete,
                        storage_options=storage_options)
    shape = (ds.sizes["y"], ds.sizes["x"])
    roi.check(shape)
    cube_days = ds["time"].values.astype("datetime64[D]")
    in_span = (cube_days >= np.datetime64(first)) & (cube_days <= np.datetime64(last))
    if not in_span.any():
        raise BadInput(f"span {first}..{last}: outside the cube's span "
                       f"{cube_days[0]}..{cube_days[-1]}")
    observed = in_span & ds[cube.OBSERVED].values.astype(bool)
    index = np.flatnonzero(observed)
    rows, cols = roi.slices
    land = ds[cube.LAND].isel(y=rows, x=cols).values.astype(bool)
    hole = (ds[cube.POLE_HOLE].isel(y=rows, x=cols).values.astype(bool)
            if cube.POLE_HOLE in ds else np.zeros_like(land))  # a cube from before the hole
    ocean = ~land & ~hole
    n_land, n_hole, n_ocean = int(land.sum()), int((hole & ~land).sum()), int(ocean.sum())
    if not n_ocean:
        raise _no_ocean(roi, n_land, n_hole)
    # Lazy: only the chunks under the ROI on observed days are read.
    raw = ds[cube.RAW].isel(time=index, y=rows, x=cols)
    counts = (raw.isnull() & ocean).sum(("y", "x")).values.astype(int)
    seen = {dt.date.fromisoformat(str(d)) for d in cube_days[index]}
    report = RoiReport(roi, shape, threshold, first, last, store=store,
                       storage_options=storage_options,
                       unobserved=[d for d in days if d not in seen], counted=OCEAN,
                       counted_cells=n_ocean, land_cells=n_land, pole_hole_cells=n_hole)
    for day, count in zip(cube_days[index], counts, strict=True):
        report.days.append(RoiDay(dt.date.fromisoformat(str(day)), int(count),
                                  _percent(int(count), n_ocean)))
    return report


def _roi_from_source(source, roi, first, last, days, threshold) -> RoiReport:
    from sicube.archive.sources import read_day

    if not source.is_dir():
        raise BadInput(f"source {source}: no such folder")
    files = find_files_in_span(source, first, last)
    if not files:
        raise BadInput(f"source {source}: no daily files between {first} and {last}")
    grid = None
    report = RoiReport(roi, (0, 0), threshold, first, last,
                       unobserved=[d for d in days if d not in files], source_files=files,
                       counted=ALL_CELLS, counted_cells=roi.size)
    for day in sorted(files):
        try:
            field_ = read_day(files[day], grid)
        except BadSourceFile as err:
            raise BadInput(str(err)) from err
        if grid is None:  # the first file fixes the grid; every other must match it
            grid = field_.grid
            report.grid_shape = grid.shape
            roi.check(grid.shape)
        count = int(np.isnan(field_.z[roi.slices]).sum())
        report.days.append(RoiDay(day, count, _percent(count, roi.size)))
    return report


def find_files_in_span(source: Path, first: dt.date, last: dt.date) -> dict[dt.date, Path]:
    """Daily files below `source` whose day lies in [first, last]."""
    from sicube.archive.sources import find_day_files

    return {d: p for d, p in find_day_files(source).items() if first <= d <= last}


ROI_CSV_COLUMNS = ("date", "observed", "missing_pixels", "missing_percent")
# A cube's counts are of ocean cells only, and its header says so.
ROI_CSV_OCEAN_COLUMNS = ("date", "observed", "missing_ocean_pixels", "missing_ocean_percent")


def roi_csv_columns(report: RoiReport) -> tuple[str, ...]:
    """The CSV header of `report`: it names what the counts are of (ocean cells or all)."""
    return ROI_CSV_OCEAN_COLUMNS if report.counted == OCEAN else ROI_CSV_COLUMNS


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[TextIO]:
    """`path` opened for writing text (CSV-ready); any OSError names the path.

    A full disk often shows only when the last buffer is flushed at close, where Python's
    error names no file: the CLI's one line should still say which file failed.
    """
    try:
        with open(path, "w", newline="") as fh:
            yield fh
    except OSError as err:
        if err.filename is None and not isinstance(err, BrokenPipeError):
            raise OSError(err.errno, err.strerror or str(err), os.fspath(path)) from err
        raise


def write_roi_csv(report: RoiReport, path: str | os.PathLike) -> Path:
    """Write one row per day of the span: date (YYYY-MM-DD), observed (true/false), the
    missing cells and their percentage (empty on a day with no data).

    The header (`roi_csv_columns`) says what is counted: `missing_ocean_*` from a cube,
    `missing_*` (every cell) from a source folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(roi_csv_columns(report))
        for date, day in report.every_day():
            if day is None:
                writer.writerow([date.isoformat(), "false", "", ""])
            else:
                writer.writerow([date.isoformat(), "true", day.missing_pixels,
                                 f"{day.missing_percent:.6f}"])
    return path


# --- info -----------------------------------------------------------------------------------------


@dataclass
class Info:
    """What a source file, a folder of source files or a cube holds."""

    kind: str  # "file", "folder" or "cube"
    path: Path | str  # a cube's URL stays a string
    grid_shape: tuple[int, int]
    x_range: tuple[float, float]  # first and last cell centre, metres
    y_range: tuple[float, float]
    cell_size: float
    crs: str
    first_day: dt.date | None
    last_day: dt.date | None
    observed_days: int
    missing_days: list[dt.date]
    size_bytes: int
    chunks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    shards: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    compression: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    # A cube's life (None for files and folders): its state, the command that finishes it,
    # days that failed (with the reason), days not ingested yet, and where the days came from.
    status: str | None = None
    finish: str = ""
    failed_days: dict[dt.date, str] = field(default_factory=dict)
    not_ingested: list[dt.date] = field(default_factory=list)
    suspicious_days: dict[dt.date, str] = field(default_factory=dict)  # day -> why
    suspicious_policy: str = ""  # "missing" (left out of mask and fill) or "keep"
    source: str = ""
    # The product grid the coordinates are (n3125, n6250, s3125, s6250, possibly coarsened),
    # or a sentence saying they are none of them.
    grid: str = ""
    # A cube's cells per fill_flag over its filled days (from the build record), and the
    # cells of its north pole hole (None: a cube from before the pole hole).
    flag_counts: dict[str, int] = field(default_factory=dict)
    pole_hole_cells: int | None = None

    @property
    def days(self) -> int:
        """Calendar days from the first to the last day."""
        if self.first_day is None or self.last_day is None:
            return 0
        return (self.last_day - self.first_day).days + 1


def _crs_text(crs: products.GridCRS | None) -> str:
    if crs is None:
        return "unknown (no usable polar_stereographic grid mapping)"
    from pyproj import CRS

    hemisphere = "south" if crs.south else "north"
    return f"{crs.name}, {CRS.from_wkt(crs.wkt).name} ({hemisphere})"


def grid_text(x: np.ndarray, y: np.ndarray, named: str | None = None) -> str:
    """The product grid that cell centres `x`, `y` are: its name, and the coarsening when
    there is one; a sentence saying so when they are none of the product grids.

    A coarsened 3.125 km grid is also the 6.25 km grid coarsened half as much: the grid the
    file names say (`named`) is taken when the cells are it, else the finest source grid
    (a cube with no day ingested names no file; n3125 is the default grid).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    matching = [g for g in products.GRIDS.values() if g.matches(x, y)]
    if not matching:
        return "none of the product grids (" + ", ".join(products.GRIDS) + ")"
    grid = next((g for g in matching if g.name == named), None) or min(
        matching, key=lambda g: g.cell_size)
    step = int(round(float(x[1] - x[0]) / grid.cell_size))
    return grid.name + (f" coarsened {step} times" if step > 1 else "")


def _grid_info(x: np.ndarray, y: np.ndarray, name: str | None = None) -> dict:
    """Shape, ranges, cell size and grid of cell centres `x`, `y`; `name` is a file name of
    the source (it names the grid)."""
    parsed = products.parse_file_name(name) if name else None
    return {"grid_shape": (int(y.size), int(x.size)),
            "x_range": (float(x[0]), float(x[-1])), "y_range": (float(y[0]), float(y[-1])),
            "cell_size": float(x[1] - x[0]) if x.size > 1 else float("nan"),
            "grid": grid_text(x, y, parsed[0] if parsed else None)}


def _is_zarr(path: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """Whether `path` is a Zarr store (asked of the one store opener); a plain folder is not."""
    from sicube.datacube.store import NotZarr, open_store

    try:
        open_store(path, storage_options=storage_options)
    except NotZarr:
        return False
    return True


def info(path: str | os.PathLike, grid: str | None = None,
         storage_options: dict | None = None) -> Info:
    """Describe a daily source file, a folder of them, or a cube.

    For a folder the grid is read from its first file only (fast on a decade of files);
    missing days are the calendar days between the first and last file with no file.
    `grid` (n3125, n6250, s3125, s6250) takes only that grid's files of a folder (by file
    name), and is checked against what a file or a cube holds (BadInput when it differs).
    A cube is described in any state (building, failed or complete): `status` says which;
    it may be any fsspec URL (``s3://``, ``http://``, with `storage_options`).
    """
    from sicube.datacube.store import local_path

    if grid is not None and grid not in products.GRIDS:
        raise BadInput(f"--grid {grid!r}: choose from {', '.join(products.GRIDS)}")
    local = local_path(path)
    if local is None:  # a URL: only a cube can be there
        found = _cube_info(os.fspath(path), storage_options)
        path = os.fspath(path)
    elif not (path := Path(os.fspath(path).removeprefix("file://"))).exists():
        raise BadInput(f"{path}: no such file or folder")
    elif path.is_dir() and _is_zarr(path):
        found = _cube_info(path, storage_options)
    elif path.is_dir():
        found = _folder_info(path, grid)
    else:
        found = _file_info(path)
    if grid is not None and found.grid.split()[0] != grid:
        raise BadInput(f"--grid {grid}: {path} holds the {found.grid} grid")
    return found


def _read(path: Path):
    from sicube.archive.sources import read_day

    try:
        return read_day(path)
    except BadSourceFile as err:
        raise BadInput(str(err)) from err


def _file_info(path: Path) -> Info:
    day_field = _read(path)
    parsed = products.parse_file_name(path.name)
    day = parsed[1] if parsed else None
    return Info("file", path, **_grid_info(day_field.grid.x, day_field.grid.y, path.name),
                crs=_crs_text(day_field.crs), first_day=day, last_day=day, observed_days=1,
                missing_days=[], size_bytes=path.stat().st_size)


def _folder_info(path: Path, grid: str | None = None) -> Info:
    from sicube.archive.sources import find_day_files

    files = find_day_files(path, grid)
    if not files:
        kind = f"asi-AMSR2-{grid}-*.nc" if grid else "asi-AMSR2-*.nc"
        raise BadInput(f"{path}: no AMSR2 daily files ({kind}) in this folder")
    first, last = min(files), max(files)
    day_field = _read(files[first])
    return Info("folder", path, **_grid_info(day_field.grid.x, day_field.grid.y,
                                             files[first].name),
                crs=_crs_text(day_field.crs), first_day=first, last_day=last,
                observed_days=len(files),
                missing_days=[d for d in day_range(first, last) if d not in files],
                size_bytes=sum(p.stat().st_size for p in files.values()))


PROVENANCE_KEYS = (cube.FILL_PARAMETERS, cube.MASK_THRESHOLD_ATTR, cube.MASK_SPAN, cube.BUILD_TIME,
                   cube.VERSION)


def _day_keys(days) -> set[dt.date]:
    """YYYYMMDD keys (of a list or a dict) as dates."""
    return {parse_date(key) for key in (days or ())}


def _day_lists(record: CubeRecord, days: list[dt.date], observed: set[dt.date],
               time_chunk: int) -> tuple[list, dict, list]:
    """(missing, failed {day: reason}, not yet ingested) days of a cube from its record.

    Cubes written before the day lists existed have a build record instead (its ingested
    time chunks and failed days); a complete one of those counts every unobserved,
    not-failed day as missing.
    """
    build = record.build or {}
    failed_raw = record.failed_days
    if failed_raw is None:
        failed_raw = build.get("failed") or {}
    failed = {parse_date(k): str(v) for k, v in sorted(failed_raw.items())}
    if record.has_day_lists:
        missing = _day_keys(record.missing_days)
        ingested = _day_keys(record.source_files)
        seen = observed | ingested | missing | set(failed)
        not_ingested = [d for d in days if d not in seen]
    else:
        if record.state == cube.COMPLETE or "ingested" not in build:
            ingested = set(days)
        else:
            chunks = set(build["ingested"])
            ingested = {d for i, d in enumerate(days) if i // time_chunk in chunks}
        missing = {d for d in ingested if d not in observed and d not in failed}
        not_ingested = [d for d in days if d not in ingested]
    return sorted(missing), failed, not_ingested


def _cube_info(path: Path | str, storage_options: dict | None = None) -> Info:
    group = cube.open_group(path, allow_incomplete=True,  # info describes any state
                            storage_options=storage_options)
    ds = cube.open_cube(path, allow_incomplete=True, storage_options=storage_options)
    record = CubeRecord.from_attrs(group.attrs)
    days = [dt.date.fromisoformat(str(d)) for d in ds["time"].values.astype("datetime64[D]")]
    observed = ds[cube.OBSERVED].values.astype(bool)
    seen = {d for d, flag in zip(days, observed, strict=True) if flag}
    chunks, shards, compression = {}, {}, {}
    for name in (*cube.CUBE_VARS, *cube.GRID_VARS):
        if name in group:
            array = group[name]
            chunks[name] = tuple(array.chunks)
            shards[name] = tuple(array.shards) if getattr(array, "shards", None) else None
            codecs = getattr(array, "compressors", ()) or ()
            compression[name] = ", ".join(_codec_text(c) for c in codecs) or "none"
    time_chunk = chunks.get(cube.RAW, (1,))[0]
    missing, failed, not_ingested = _day_lists(record, days, seen, time_chunk)
    sources = record.source_files or {}
    provenance = {key: record.value(key) for key in PROVENANCE_KEYS
                  if record.value(key) is not None}
    provenance[cube.SOURCE_FILES] = len(sources)
    try:
        crs = products.GridCRS.from_attrs(ds[cube.GRID_MAPPING].attrs)
    except (KeyError, ValueError):
        crs = None
    hole = (int(np.count_nonzero(group[cube.POLE_HOLE][:])) if cube.POLE_HOLE in group
            else None)
    names = [str(v.get("name", "")) for v in sources.values() if isinstance(v, dict)]
    return Info("cube", path, **_grid_info(ds["x"].values, ds["y"].values,
                                           names[0] if names else None),
                crs=_crs_text(crs), flag_counts=_flag_counts(record), pole_hole_cells=hole,
                first_day=days[0] if days else None, last_day=days[-1] if days else None,
                observed_days=len(seen), missing_days=missing,
                size_bytes=cube.store_bytes(path, storage_options), chunks=chunks, shards=shards,
                compression=compression, provenance=provenance,
                status=_status_text(record), finish=record.finish_command or "",
                failed_days=failed, not_ingested=not_ingested,
                suspicious_days=cube.suspicious_days(group),
                suspicious_policy=record.suspicious_policy or "",
                source=record.source_directory or record.source_base_url or "")


def _status_text(record: CubeRecord) -> str:
    """The cube's state; for an update that stopped, with the reason it stopped."""
    status = record.state
    if status == cube.UPDATING and record.last_error:
        return f"{status} (stopped: {record.last_error})"
    return status


def _flag_counts(record: CubeRecord) -> dict[str, int]:
    """Cells per fill_flag meaning over the cube's filled batches (the build record's
    per-batch counts; a record from before flag 4 has four counts)."""
    totals = np.zeros(len(cube.FLAG_MEANINGS), np.int64)
    for counts in ((record.build or {}).get("flag_counts") or {}).values():
        totals[:len(counts)] += counts
    if not totals.any():
        return {}
    return {meaning: int(n) for meaning, n in zip(cube.FLAG_MEANINGS, totals, strict=True)}


def _codec_text(codec) -> str:
    """A codec as a reader wants it: its class and the settings it was given."""
    settings = codec.to_dict().get("configuration", {}) if hasattr(codec, "to_dict") else {}
    shown = ", ".join(f"{k} {v}" for k, v in settings.items()
                      if k in ("cname", "clevel", "level", "shuffle"))
    return f"{type(codec).__name__}({shown})"


def _bytes_text(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}"


def _state_line(item: Info) -> str:
    """A cube's first line: its path and state, and for an unfinished cube how to finish it."""
    if item.status == cube.COMPLETE:
        return f"{item.path}: {item.status}"
    finish = item.finish or "the same `sicube build` command again"
    return f"{item.path}: {item.status} - unfinished; finish with: {finish}"


def format_info(item: Info) -> list[str]:
    """The lines `sicube info` prints (one screen); a cube's first line is its state."""
    ny, nx = item.grid_shape
    km = item.cell_size / 1000.0
    lines = [_state_line(item)] if item.status is not None else []
    lines += [
        f"{item.kind}: {item.path}",
        f"grid: {item.grid}, height {ny} x width {nx} (y x x), cell {km:g} km",
        f"x: {item.x_range[0]:.0f} .. {item.x_range[1]:.0f} m; "
        f"y: {item.y_range[0]:.0f} .. {item.y_range[1]:.0f} m",
        f"crs: {item.crs}",
    ]
    if item.source:
        lines.append(f"source: {item.source}")
    if item.first_day is not None:
        plural = "s" if item.days != 1 else ""
        lines.append(f"span: {item.first_day} .. {item.last_day} ({item.days} day{plural})")
        lines.append(f"observed days: {item.observed_days}")
        what = "missing days" if item.status is None else "missing days (no source file)"
        lines.append(f"{what}: {len(item.missing_days)}"
                     + (f" ({day_list_text(item.missing_days)})" if item.missing_days else ""))
    if item.status is not None:
        lines.append(f"failed days: {len(item.failed_days)}")
        lines += [f"  {day:%Y%m%d}: {reason}" for day, reason in item.failed_days.items()]
        how = {"missing": ", filled as missing days",
               "keep": ", kept as data"}.get(item.suspicious_policy, "")
        lines.append(f"suspicious days: {len(item.suspicious_days)}"
                     + (how if item.suspicious_days else ""))
        lines += [f"  {day:%Y%m%d}: {why}" for day, why in item.suspicious_days.items()]
        lines.append(f"not yet ingested: {len(item.not_ingested)}"
                     + (f" ({day_list_text(item.not_ingested)})" if item.not_ingested else ""))
    if item.flag_counts:
        lines.append("fill_flag cells: " + ", ".join(
            f"{value} {meaning.replace('_', ' ')} {n:,}"
            for value, (meaning, n) in enumerate(item.flag_counts.items())))
    if item.pole_hole_cells is not None:
        lines.append(f"pole hole: {item.pole_hole_cells} cells (not land; fill_flag 4)"
                     if item.pole_hole_cells else "pole hole: none")
    lines.append(f"size on disk: {_bytes_text(item.size_bytes)}")
    for name, chunk in item.chunks.items():
        shard = item.shards.get(name)
        lines.append(f"  {name}: chunks {chunk}" + (f", shards {shard}" if shard else "")
                     + f", compressors {item.compression.get(name, 'none')}")
    for key, value in item.provenance.items():
        lines.append(f"{key}: {value}")
    return lines
