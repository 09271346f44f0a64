"""The build's inputs, checked at the boundary before anything is written: where days come
from (`Source`: a folder or the hosts of a server), the store's location, the fill and
quality parameters, chunks and workers. Each bad input is one `BadInput` line."""

from __future__ import annotations

import datetime as dt
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sicube.archive import products
from sicube.archive.sources import GridCoords, check_file_header, find_day_files, folder_grids
from sicube.datacube import cube
from sicube.datacube import store as store_location
from sicube.dates import count_text
from sicube.errors import BadInput, BadSourceFile
from sicube.params import FillParams, QualityRules
from sicube.pipeline import ingest
from sicube.pipeline.ingest import Arrival
from sicube.pipeline.plan import BuildArgs


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

    def arrivals(self, days: list[dt.date], progress: bool,
                 grid: GridCoords | None) -> Iterator[Arrival]:
        """The days' files as they become available here (`ingest.arrivals`)."""
        return ingest.arrivals(days, self.directory, self.base_urls,
                               download_dir(self) if self.base_urls else None, progress, grid,
                               grid_name=self.grid, sensor=self.sensor)


def make_source(base_url: str | list[str] | tuple[str, ...] | None,
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
        grid, others = folder_grid(folder, grid)
        return Source(folder, None, None, grid, sensor, others)
    from sicube.archive.download import check_base_urls, check_grid  # a folder needs neither

    hosts = check_base_urls(base_url or None)
    return Source(None, hosts, Path(raw_dir).resolve() if raw_dir else None,
                  check_grid(hosts, grid), sensor)


def folder_grid(folder: Path, grid: str | None) -> tuple[str | None, str]:
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


def check_source_files(src: Source, days: list[dt.date], grid: GridCoords | None = None,
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


def download_dir(src: Source) -> Path:
    """Where downloads from `src` are kept: --raw-dir, or the cache folder of its first host
    (`download.default_raw_dir`: fallback hosts serve the same tree, so one folder)."""
    if src.raw_dir is not None:
        return src.raw_dir
    from sicube.archive.download import default_raw_dir

    return default_raw_dir(src.base_urls)


def check_first_day(first: dt.date, last: dt.date, src: Source) -> None:
    """Days before the first day of the sensors asked for are refused up front, in one line."""
    if src.base_urls:
        from sicube.archive.download import check_span

        check_span(first, last, src.grid, src.sensor)


def check_workers(workers: int | None) -> None:
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise BadInput(f"--workers {workers}: must be at least 1")


def check_chunks(chunks: dict | None) -> None:
    for name, size in (chunks or {}).items():
        if name not in cube.DEFAULT_CHUNKS:
            raise BadInput(f"chunks: unknown dimension {name!r} (time, y or x)")
        if not isinstance(size, int) or size < 1:
            raise BadInput(f"chunks: {name} must be a positive integer, got {size!r}")


def check_window_fits(params: FillParams, grid: GridCoords) -> None:
    """A space window must fit in the grid: the halo exchange cannot reach past its edges."""
    ny, nx = grid.shape
    if params.space_window >= min(ny, nx):
        raise BadInput(f"--space-window {params.space_window}: larger than the grid "
                       f"({ny} x {nx} cells); give at most {min(ny, nx) - 1}")


def store_url(store: str | os.PathLike, storage_options: dict | None = None) -> str:
    """The store as zarr and fsspec take it: local stores (``file://`` too) as plain absolute
    paths; BadInput for a URL whose file system cannot be made."""
    store = store_location.location(store)
    if store_location.local_path(store) is None:
        store_location.filesystem(store, storage_options)
    return store


def finish_command(command: str, store: str, src: Source, extra: list[str]) -> str:
    return "`" + shlex.join(["sicube", command, *extra, "--store", store,
                             *src.finish_args()]) + "`"


def fill_params(fill: FillParams | None, **keywords) -> FillParams:
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


def quality_rules(quality: QualityRules | None, quality_rules: QualityRules | None
                   ) -> QualityRules:
    """The build's suspicious-day rules: `quality` or its older name `quality_rules`
    (BadInput when both are given and differ), else the defaults."""
    for rules in (quality, quality_rules):
        if rules is not None and not isinstance(rules, QualityRules):
            raise BadInput(f"quality: a sicube.QualityRules, got {type(rules).__name__}")
    if quality is not None and quality_rules is not None and quality != quality_rules:
        raise BadInput("quality and quality_rules differ; give one of them")
    return quality or quality_rules or QualityRules()


def describe_args(args: BuildArgs) -> str:
    fill = args.fill
    return (f"{args.start} .. {args.end}, time_window {fill.time_window}, "
            f"space_window {fill.space_window}, alpha {fill.alpha}, sigma {fill.sigma}, "
            f"mask {args.mask or 'threshold ' + str(args.mask_threshold)}, "
            f"suspicious {args.suspicious}")
