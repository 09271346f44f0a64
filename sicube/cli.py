"""`python -m sicube …`: parses arguments and calls the API; nothing else lives here.

Every command is one `_add_<name>` function that declares its arguments and the
function to run. Bad input (`BadInput`) and faults of the environment (a path that cannot
be read or written, a full disk) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from sicube import errors
from sicube._version import __version__
from sicube.errors import BadInput, SicubeError, os_error_line, require_extra
from sicube.params import DEFAULT_GRID


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (unless its help already says it), and keeps
    descriptions and epilogs as written (the fault-plan format of `mirror`)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default is None
                or action.default is False or action.default == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line and exit code 2, and whose
    help shows the defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_common(parser: argparse.ArgumentParser, default: object = False) -> None:
    # Sub-sub-commands take them too, with SUPPRESS: a flag given before them is kept.
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bars")


Command = Callable[[argparse.ArgumentParser], None]
COMMANDS: list[tuple[str, str, Command]] = []


def command(name: str, help: str) -> Callable[[Command], Command]:
    """Register `_add_<name>(parser)` as the sub-command `name`."""

    def register(add: Command) -> Command:
        COMMANDS.append((name, help, add))
        return add

    return register


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `sicube` argument parser: every command, with the arguments of all of them or,
    given ``only``, of that one ("": of none, enough for ``--help`` and ``--version``). The
    arguments import their stages to show defaults, which would cost every command seconds."""
    parser = _Parser(prog="sicube", description="AMSR2 sea-ice data to ML-ready cubes")
    parser.add_argument("--version", action="version", version=f"sicube {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND", help="sicube COMMAND --help tells more")
    for name, help_text, add in COMMANDS:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            _add_common(cmd)
            add(cmd)
    return parser


def _chosen_command(argv: Sequence[str]) -> str:
    """The command named on the command line (its first word), or "" when none of ours is."""
    names = {name for name, _, _ in COMMANDS}
    first = next((word for word in argv if not word.startswith("-")), "")
    return first if first in names else ""


def main(argv: Sequence[str] | None = None, loaded: Callable[[], None] | None = None) -> int:
    """Run one sicube command; return its exit code. `loaded` is called once the command's
    modules have been imported, before it runs (`sicube.__main__.run`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # the chosen command's stage is imported here: seconds for build, Ctrl-C included
        args, unknown = build_parser(only=_chosen_command(argv)).parse_known_args(argv)
        if loaded is not None:
            loaded()
    except KeyboardInterrupt:
        print(f"sicube {_chosen_command(argv) or ''}".rstrip() + ": interrupted",
              file=sys.stderr)
        return 130
    if unknown:  # named with its command: `sicube build --snapshot X` (build offers none)
        print(f"sicube {args.command}: error: unrecognized arguments: {' '.join(unknown)}",
              file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # zarr reads a store's metadata documents concurrently; when the store is unreadable the
    # first failure is the error we report, and asyncio would print the others' tracebacks
    # ("Future/Task exception was never retrieved") when they are garbage-collected.
    logging.getLogger("asyncio").addFilter(errors.not_unretrieved_futures)
    from sicube.datacube.record import NewerCubeWarning
    from sicube.settings import apply

    try:
        apply()  # the process-wide settings (sicube.configure): zarr's codec threads
        with warnings.catch_warnings():
            warnings.simplefilter("always", NewerCubeWarning)  # said by `_warning_line`
            warnings.showwarning = errors.warning_line(args.command, warnings.showwarning)
            _at_snapshot(args)
            code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at exit
        return code
    except SicubeError as err:  # bad input, an unreachable source: one line
        print(f"sicube {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sicube {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return errors.closed_pipe()
    except OSError as err:  # the environment, not the input: unreadable, unwritable, disk full
        print(f"sicube {args.command}: error: {os_error_line(err)}", file=sys.stderr)
        return 2


# --- commands ---------------------------------------------------------------------------------


@command("sample", "write a realistic synthetic AMSR2 archive (offline test data)")
def _add_sample(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, help="first day (YYYYMMDD or YYYY-MM-DD)")
    parser.add_argument("--end", required=True, help="last day")
    parser.add_argument("--out", required=True, help="archive folder (year sub-folders inside)")
    parser.add_argument("--step", type=int, default=8,
                        help="coarsen the grid by this factor (1 = the full grid)")
    parser.add_argument("--missing-days", nargs="*", default=None, metavar="DAY",
                        help="days to leave out (default: about 5%% at random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated values")
    _add_grid(parser, DEFAULT_GRID, "product grid: its hemisphere, coastlines and CRS")
    parser.set_defaults(run=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from sicube.archive.synthetic import write_archive

    archive = write_archive(args.out, args.start, args.end, step=args.step,
                            missing_days=args.missing_days, seed=args.seed, grid=args.grid,
                            progress=not args.quiet)
    print("\n".join(archive.text()))
    return 0


# --- plot, explore, roi, info (views.plot, analysis.report) --------------------------------------


def _allow_incomplete(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="read a cube whose build or update has not finished (refused "
                             "by default; its unwritten cells read as missing)")


def _storage_options_flag(parser: argparse.ArgumentParser, snapshot: bool = True) -> None:
    """--storage-options, and for a command that reads a store, --snapshot (one that writes
    writes to the tip of main, so it does not offer it)."""
    parser.add_argument("--storage-options", metavar="JSON",
                        help="options of the store's fsspec file system as a JSON object, e.g. "
                             '\'{"endpoint_url": "http://127.0.0.1:9000"}\' for s3:// (keys '
                             "and endpoint may also come from AWS_ACCESS_KEY_ID, "
                             "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")
    if not snapshot:
        return
    parser.add_argument("--snapshot", metavar="ID_OR_TAG",
                        help="an icechunk store's snapshot id or tag to read (default: the "
                             "tip of main; `sicube log STORE` lists them)")


def _at_snapshot(args: argparse.Namespace) -> None:
    """Point the command's store at --snapshot (`versions.at_snapshot`: one URL for all)."""
    if getattr(args, "snapshot", None) is None:
        return
    from sicube.datacube.versions import at_snapshot

    for name in ("store", "store_option", "path"):
        if getattr(args, name, None) is not None:
            setattr(args, name, at_snapshot(getattr(args, name), args.snapshot))


def _storage_options(args: argparse.Namespace) -> dict | None:
    from sicube.datacube.store import parse_storage_options

    return parse_storage_options(getattr(args, "storage_options", None))


@command("plot", "PNG maps: one day, the land mask, raw vs filled")
def _add_plot(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, parser_class=_Parser,
                                  help="the map to draw")
    day = kinds.add_parser("day", help="map one day of a source file or a cube")
    where = day.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", help="a daily source file (.nc)")
    where.add_argument("--store", help="a cube (Zarr); needs --date")
    day.add_argument("--date", help="day to map from the cube (YYYYMMDD or YYYY-MM-DD)")
    day.add_argument("--variable", default="sea_ice_conc_raw",
                     choices=["sea_ice_conc_raw", "sea_ice_conc"],
                     help="cube variable (default: the raw data)")
    mask = kinds.add_parser("mask", help="land mask beside its NaN-frequency map")
    source = mask.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="a cube (Zarr)")
    source.add_argument("--mask", help="a land-mask netCDF file (land_mask, nan_ratio)")
    compare = kinds.add_parser("compare", help="raw vs filled for one day, with the fill flags")
    compare.add_argument("--store", required=True, help="a cube (Zarr)")
    compare.add_argument("--date", required=True, help="the day (YYYYMMDD or YYYY-MM-DD)")
    compare.add_argument("--source", help="take the raw panel from this daily file instead")
    for sub in (day, mask, compare):
        sub.add_argument("-o", "--output", required=True,
                         help="image to write, in the format its extension names "
                              "(.png, .jpg, .pdf, .svg, ...)")
        sub.add_argument("--dpi", type=int, default=150, help="resolution (dots per inch)")
        _allow_incomplete(sub)
        _storage_options_flag(sub)
        _add_common(sub, default=argparse.SUPPRESS)
    parser.set_defaults(run=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    from sicube.views import plot

    allow, options = args.allow_incomplete, _storage_options(args)
    if args.kind == "day":
        fig = plot.plot_day(args.file, store=args.store, date=args.date, variable=args.variable,
                            allow_incomplete=allow, storage_options=options)
    elif args.kind == "mask":
        fig = plot.plot_mask(args.store or args.mask, allow_incomplete=allow,
                             storage_options=options)
    else:
        fig = plot.plot_compare(args.store, args.date, source=args.source, allow_incomplete=allow,
                                storage_options=options)
    path = plot.save_figure(fig, args.output, dpi=args.dpi)
    width, height = (round(v * args.dpi) for v in fig.get_size_inches())
    print(f"wrote {path} ({width} x {height} px)")
    return 0


@command("explore", "interactive map of a cube (time slider, variables, hover) as HTML")
def _add_explore(parser: argparse.ArgumentParser) -> None:
    # --store as in every other command; the positional store of earlier versions still works.
    parser.add_argument("--store", dest="store_option", metavar="STORE", help="a cube (Zarr)")
    parser.add_argument("store", nargs="?", metavar="STORE",
                        help="the same as --store (the older form)")
    parser.add_argument("--html", required=True, help="standalone HTML file to write")
    parser.add_argument("--start", help="first day to include (default: the cube's first)")
    parser.add_argument("--end", help="last day to include (default: the cube's last)")
    parser.add_argument("--variables", nargs="+", default=["sea_ice_conc", "sea_ice_conc_raw"],
                        choices=["sea_ice_conc", "sea_ice_conc_raw"],
                        help="variables the selector offers (default: both)")
    parser.add_argument("--width", type=int, default=300,
                        help="map width in pixels; every frame is embedded at this size")
    _allow_incomplete(parser)
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_explore)


def _run_explore(args: argparse.Namespace) -> int:
    from sicube.views.plot import save_explorer

    store = _explore_store(args.store, args.store_option)
    path = save_explorer(store, args.html, variables=tuple(args.variables),
                         start=args.start, end=args.end, width=args.width,
                         progress=not args.quiet, allow_incomplete=args.allow_incomplete,
                         storage_options=_storage_options(args))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, works offline)")
    return 0


def _explore_store(positional: str | None, option: str | None) -> str:
    """The store `explore` was given, as --store STORE or positionally (not both)."""
    if positional is None and option is None:
        raise BadInput("the following arguments are required: --store")
    if positional is not None and option is not None and positional != option:
        raise BadInput(f"two stores given ({positional!r} and --store {option!r}): give one")
    return option if option is not None else positional


@command("report", "a cube's quality report: one self-contained HTML page")
def _add_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a cube (Zarr)")
    parser.add_argument("--html", required=True,
                        help="HTML file to write: calendar of observed / missing / failed / "
                             "suspicious days, observed and filled shares, extent and area, "
                             "land mask and nan_ratio maps (inline images, works offline)")
    _allow_incomplete(parser)
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from sicube.views.html import write_report

    path = write_report(args.store, args.html, allow_incomplete=args.allow_incomplete,
                        progress=not args.quiet, storage_options=_storage_options(args))
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, self-contained)")
    return 0


@command("roi", "missing pixels per day inside an index rectangle (ROI)")
def _add_roi(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="a cube (Zarr)")
    where.add_argument("--source", help="a folder of daily source files")
    parser.add_argument("--start", required=True, help="first day (YYYYMMDD or YYYY-MM-DD)")
    parser.add_argument("--end", required=True, help="last day")
    for name, axis in (("ymin", "row"), ("ymax", "row"), ("xmin", "column"),
                       ("xmax", "column")):
        parser.add_argument(f"--{name}", type=int, required=True,
                            help=f"grid {axis} index; {name} is end-exclusive"
                            if "max" in name else f"first grid {axis} index")
    parser.add_argument("--threshold-percent", type=float, default=0.1,
                        help="list the days with at least this percent of the ROI missing")
    parser.add_argument("--csv", help="write one row per day of the span here: date, observed, "
                        "missing cells and percent (a cube: missing_ocean_pixels, "
                        "missing_ocean_percent; empty on a day with no data)")
    parser.add_argument("--plot", help="PNG: the ROI on the full grid and the daily shares")
    _allow_incomplete(parser)
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_roi)


def _run_roi(args: argparse.Namespace) -> int:
    from sicube.analysis.report import roi_report, write_roi_csv

    if args.plot:  # before the days are counted and the CSV written
        require_extra("plot", "roi --plot", "matplotlib")
    report = roi_report(args.start, args.end, args.ymin, args.ymax, args.xmin, args.xmax,
                        store=args.store, source=args.source,
                        threshold_percent=args.threshold_percent,
                        allow_incomplete=args.allow_incomplete,
                        storage_options=_storage_options(args))
    print("\n".join(report.text()))
    if args.csv:
        print(f"wrote {write_roi_csv(report, args.csv)}")
    if args.plot:
        from sicube.views.plot import plot_roi, save_figure

        print(f"wrote {save_figure(plot_roi(report), args.plot)}")
    return 0


@command("extent", "daily sea-ice extent and area of a cube (or a rectangle of it), with "
                   "the day-of-year climatology band")
def _add_extent(parser: argparse.ArgumentParser) -> None:
    from sicube.analysis.climatology import DEFAULT_HALF_WINDOW

    parser.add_argument("--store", required=True, help="a cube (Zarr)")
    parser.add_argument("--region", help="ymin,ymax,xmin,xmax grid indices (ends exclusive); "
                        "default: the whole grid (the series stored in the cube)")
    parser.add_argument("--csv", help="write the table: date, observed, sea_ice_extent_km2, "
                        "sea_ice_area_km2 (+ extent_climatology_mean_km2, "
                        "extent_climatology_std_km2 when the cube spans more than a year)")
    parser.add_argument("--plot", help="figure (PNG, ...) of the series with the band")
    parser.add_argument("--half-window", type=int, default=DEFAULT_HALF_WINDOW,
                        help="days pooled on each side of a day of year for the band")
    _allow_incomplete(parser)
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_extent)


def _run_extent(args: argparse.Namespace) -> int:
    from sicube.analysis.extent import extent, summary_line

    if args.plot:  # before the series is computed and the CSV written
        require_extra("plot", "extent --plot", "matplotlib")
    table = extent(args.store, region=args.region, csv=args.csv,
                   half_window=args.half_window, allow_incomplete=args.allow_incomplete,
                   storage_options=_storage_options(args))
    if args.plot:  # the table from the analysis, its picture from the view
        from sicube.views.plot import plot_extent, save_figure

        save_figure(plot_extent(table, args.store), args.plot)
    print(summary_line(table, args.store))
    for path in (args.csv, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


@command("climatology", "per-cell day-of-year mean and standard deviation of a cube")
def _add_climatology(parser: argparse.ArgumentParser) -> None:
    from sicube.analysis.climatology import DEFAULT_HALF_WINDOW

    parser.add_argument("--store", required=True, help="a cube (Zarr)")
    parser.add_argument("--years", required=True, help="FIRST-LAST, e.g. 2013-2022")
    parser.add_argument("--out", required=True, help="the climatology store to write (Zarr)")
    parser.add_argument("--half-window", type=int, default=DEFAULT_HALF_WINDOW,
                        help="days pooled on each side of a day of year (29 February is "
                             "pooled with 28 February)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_climatology)


def _run_climatology(args: argparse.Namespace) -> int:
    from sicube.analysis.climatology import climatology

    print(climatology(args.store, args.years, args.out, half_window=args.half_window,
                      overwrite=args.overwrite, storage_options=_storage_options(args)).text())
    return 0


@command("info", "grid size, span, missing days, chunking and provenance of a file, folder or cube")
def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a daily file, a folder of daily files, or a cube (Zarr)")
    _add_grid(parser, None, "a folder: describe only this grid's files; a file or cube: check "
                            "that it holds this grid (default: the grid found)")
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from sicube.analysis.report import format_info, info

    print("\n".join(format_info(info(args.path, grid=args.grid,
                                      storage_options=_storage_options(args)))))
    return 0


def _on_repository(parser: argparse.ArgumentParser, run, *more: tuple[str, str]) -> None:
    """A command on an icechunk repository: STORE, then the positionals `more` (name, help)."""
    parser.add_argument("store", help="icechunk://PATH or icechunk+s3://bucket/prefix")
    for name, help_text in more:
        parser.add_argument(name, help=help_text)
    _storage_options_flag(parser)
    parser.set_defaults(run=run)


@command("log", "the snapshots of an icechunk store's main: id, time, days, message")
def _add_log(parser: argparse.ArgumentParser) -> None:
    _on_repository(parser, _run_log)


def _run_log(args: argparse.Namespace) -> int:
    from sicube.datacube.versions import log, split

    print("\n".join(s.line() for s in log(split(args.store)[0], _storage_options(args))))
    return 0


@command("tag", "name a snapshot of an icechunk store (default: the tip of main)")
def _add_tag(parser: argparse.ArgumentParser) -> None:
    _on_repository(parser, _run_tag, ("name", "the tag, e.g. a training run's name"))


def _run_tag(args: argparse.Namespace) -> int:
    from sicube.datacube.versions import tag

    print(f"{args.name} = {tag(args.store, args.name, storage_options=_storage_options(args))}")
    return 0


@command("copy", "copy a cube into a new store: plain Zarr to icechunk and back")
def _add_copy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a cube (path, URL, icechunk://PATH)")
    parser.add_argument("target", help="a new store (path, URL, icechunk://PATH)")
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_copy)


def _run_copy(args: argparse.Namespace) -> int:
    from sicube.datacube.versions import at_snapshot, copy

    print(copy(at_snapshot(args.source, args.snapshot), args.target, _storage_options(args)))
    return 0


def _add_grid(parser: argparse.ArgumentParser, default: str | None, help_text: str) -> None:
    from sicube.archive.products import GRIDS

    parser.add_argument("--grid", default=default, choices=list(GRIDS), help=help_text)


def _add_base_url(parser) -> None:
    parser.add_argument("--base-url", action="append", metavar="URL",
                        help="server to download from; give it again for fallback hosts, tried "
                             "in order for each file (default: Bremen's primary, then its older "
                             "host). A sensor's tree (.../amsr2/asi_daygrid_swath) or one grid's "
                             "folder of it (.../n3125/netcdf)")


def _add_sensor(parser: argparse.ArgumentParser, default: str | None) -> None:
    from sicube.archive.products import SENSOR_CHOICES

    parser.add_argument("--sensor", choices=SENSOR_CHOICES, default=default,
                        help="auto: each day from the sensor whose record holds it (AMSR-E "
                             "2002-06-01..2011-10-04 on n6250/s6250, AMSR2 from 2012-07-02)"
                             + (f"; default: {default}" if default
                                else "; default: the cube's own choice"))


def _add_source_args(parser: argparse.ArgumentParser, sensor_default: str | None = "auto"
                     ) -> None:
    where = parser.add_mutually_exclusive_group()
    _add_base_url(where)
    where.add_argument("--source", help="folder of daily files on disk (searched recursively)")
    _add_sensor(parser, sensor_default)
    parser.add_argument("--raw-dir", help="where downloads are kept and reused (default: cache)")
    parser.add_argument("--scheduler", default="threads",
                        help="threads (default), processes, or a dask scheduler address")
    parser.add_argument("--workers", type=int, help="dask workers (default: one per core)")


@command("build", "build a filled, masked Zarr cube for a date range (resumable)")
def _add_build(parser: argparse.ArgumentParser) -> None:
    from sicube.datacube.cube import DEFAULT_CHUNKS
    from sicube.params import MASK_THRESHOLD, SUSPICIOUS_POLICIES, FillParams, QualityRules

    parser.add_argument("--start", required=True, help="first day (YYYYMMDD or YYYY-MM-DD)")
    parser.add_argument("--end", required=True, help="last day")
    parser.add_argument("--store", required=True, help="Zarr store: a path or any fsspec URL")
    _add_source_args(parser)
    parser.add_argument("--time-window", type=int, default=FillParams.time_window,
                        help="fill half-window in days")
    parser.add_argument("--space-window", type=int, default=FillParams.space_window,
                        help="fill half-window in cells")
    parser.add_argument("--alpha", type=float, default=FillParams.alpha,
                        help="weight of time vs space")
    parser.add_argument("--sigma", type=float, default=FillParams.sigma,
                        help="Gaussian width in cells")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--mask-threshold", type=float, default=MASK_THRESHOLD,
                       help="land where a cell is NaN on at least this share of observed days")
    masks.add_argument("--mask", help="reuse land_mask from a NetCDF file or another cube")
    _add_grid(parser, None, "grid to download (default: the base URL's grid folder, else "
                            "n3125); a --source folder's grid is read from its files")
    parser.add_argument("--chunks", help="Zarr chunks as TIME,Y,X (default: "
                        + ",".join(str(n) for n in DEFAULT_CHUNKS.values()) + ")")
    parser.add_argument("--restart-fill", action="store_true",
                        help="on an existing cube of this span: accept other fill or mask "
                             "parameters and redo the mask and fill (ingested days are kept)")
    parser.add_argument("--suspicious", choices=SUSPICIOUS_POLICIES,
                        default=SUSPICIOUS_POLICIES[0],
                        help="a suspicious day (all equal, observed share far off, extent "
                             "jump, out of range) is flagged and kept in sea_ice_conc_raw; "
                             "missing (default): left out of mask and fill like a missing "
                             "day; keep: used as data")
    parser.add_argument("--suspicious-k", type=float, default=QualityRules.k,
                        help="robust deviations (1.4826 MAD) from the rolling median beyond "
                             "which a day's observed share is suspicious")
    parser.add_argument("--suspicious-window", type=int, default=QualityRules.window,
                        help="days (odd) of that centred rolling median")
    _storage_options_flag(parser, snapshot=False)
    parser.set_defaults(run=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from sicube.datacube.cube import parse_chunks
    from sicube.params import FillParams, quality_rules
    from sicube.pipeline.build import build

    fill = FillParams(args.time_window, args.space_window, args.alpha, args.sigma)
    summary = build(
        args.start, args.end, args.store, base_url=args.base_url, source=args.source,
        raw_dir=args.raw_dir, grid=args.grid, sensor=args.sensor,
        fill=fill, mask_threshold=args.mask_threshold,
        mask_from=args.mask, scheduler=args.scheduler, workers=args.workers,
        chunks=parse_chunks(args.chunks), restart_fill=args.restart_fill, progress=not args.quiet,
        suspicious=args.suspicious,
        quality=quality_rules(args.suspicious_k, args.suspicious_window),
        storage_options=_storage_options(args),
    )
    print(summary.text())
    return summary.exit_code


@command("update", "append new days to a cube and refill the days whose window changed")
def _add_update(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="an existing sicube cube")
    from sicube.pipeline.build import MAX_EMPTY_DAYS

    parser.add_argument("--end", help="last day to add (default: the newest day the source "
                        "has: a folder's newest file, or probed on the server from yesterday)")
    parser.add_argument("--allow-gap", action="store_true",
                        help=f"append even when more than {MAX_EMPTY_DAYS} days at the end "
                             "would have no file")
    _add_source_args(parser, sensor_default=None)
    _storage_options_flag(parser, snapshot=False)
    parser.set_defaults(run=_run_update)


def _run_update(args: argparse.Namespace) -> int:
    from sicube.pipeline.build import update

    summary = update(args.store, args.end, base_url=args.base_url, source=args.source,
                     raw_dir=args.raw_dir, sensor=args.sensor, allow_gap=args.allow_gap,
                     scheduler=args.scheduler,
                     workers=args.workers, progress=not args.quiet,
                     storage_options=_storage_options(args))
    print(summary.text())
    return summary.exit_code


@command("mask", "export a cube's land mask as the original toolbox's NetCDF file")
def _add_mask(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a sicube cube")
    parser.add_argument("--output", "-o", required=True, help="NetCDF file to write")
    parser.add_argument("--threshold", type=float,
                        help="recompute land_mask from the cube's nan_ratio with this threshold "
                             "(default: the cube's land_mask as it is)")
    _allow_incomplete(parser)
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_mask)


def _run_mask(args: argparse.Namespace) -> int:
    from sicube.pipeline.mask import export_mask

    path, land_share = export_mask(args.store, args.output, threshold=args.threshold,
                                   allow_incomplete=args.allow_incomplete,
                                   storage_options=_storage_options(args))
    print(f"wrote {path}: land_mask (1 = land, {land_share:.1%} of cells) and nan_ratio")
    return 0


# --- download and mirror (archive.download, archive.mirror) --------------------------------------


@command("download", "fetch daily files for a date range (concurrent, retried, validated)")
def _add_download(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, help="first day (YYYYMMDD or YYYY-MM-DD)")
    parser.add_argument("--end", required=True, help="last day")
    parser.add_argument("--out", required=True, help="output folder (files go to {YYYY}/)")
    _add_base_url(parser)
    _add_sensor(parser, "auto")
    _add_transfer_args(parser)
    parser.add_argument("-f", "--force", action="store_true",
                        help="fetch again even when a valid file is present")
    parser.set_defaults(run=_run_download)


def _add_transfer_args(parser: argparse.ArgumentParser) -> None:
    from sicube.params import DownloadOptions

    parser.add_argument("--concurrency", type=int, default=DownloadOptions.concurrency,
                        help="transfers at once")
    parser.add_argument("--retries", type=int, default=DownloadOptions.retries,
                        help="further attempts after a failed one")
    parser.add_argument("--timeout", type=float, default=DownloadOptions.timeout,
                        help="seconds without data before an attempt is abandoned")
    parser.add_argument("--backoff", type=float, default=DownloadOptions.backoff,
                        help="first retry delay in seconds, doubled each retry, jittered")


def _run_download(args: argparse.Namespace) -> int:
    from sicube.archive.download import download

    report = download(args.start, args.end, args.out, base_url=args.base_url,
                      sensor=args.sensor, concurrency=args.concurrency, retries=args.retries,
                      force=args.force, timeout=args.timeout, backoff=args.backoff,
                      progress=not args.quiet)
    print(report.summary())
    if report.failed:
        print(f"sicube download: {report.failed_line()}", file=sys.stderr)
        return 1
    return 0


@command("check", "probe every day's file on the server (HEAD) before a long build or download")
def _add_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, help="first day (YYYYMMDD or YYYY-MM-DD)")
    parser.add_argument("--end", required=True, help="last day")
    _add_grid(parser, None, "grid to probe (default: the base URL's, else n3125)")
    _add_base_url(parser)
    _add_sensor(parser, "auto")
    _add_transfer_args(parser)
    parser.set_defaults(run=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from sicube.archive.download import check

    report = check(args.start, args.end, base_url=args.base_url, grid=args.grid,
                   sensor=args.sensor, concurrency=args.concurrency, retries=args.retries,
                   timeout=args.timeout, backoff=args.backoff, progress=not args.quiet)
    print(report.summary())
    return report.exit_code


@command("mirror", "serve an archive folder on 127.0.0.1 like the Bremen server (with faults)")
def _add_mirror(parser: argparse.ArgumentParser) -> None:
    from sicube.archive.mirror import FAULT_PLAN_HELP

    parser.epilog = f"fault plan (--faults PLAN.json):\n\n{FAULT_PLAN_HELP}"
    parser.add_argument("--root", required=True, help="archive folder with {YYYY}/ sub-folders")
    parser.add_argument("--port", type=int, default=8000,
                        help="TCP port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--faults", default=None, metavar="PLAN.json",
                        help="fault plan: file name or YYYYMMDD -> faults (format below)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds added before every answer")
    _add_grid(parser, DEFAULT_GRID, "grid served, named in the URL path as on the Bremen server")
    parser.set_defaults(run=_run_mirror)


def _run_mirror(args: argparse.Namespace) -> int:
    from sicube.archive.mirror import serve_forever

    serve_forever(args.root, port=args.port, faults=args.faults, latency=args.latency,
                  grid=args.grid)
    return 0


@command("evaluate", "score fill parameters: hide observed cells, fill them back, report errors")
def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    from sicube.kernels.fill import DEFAULT_MAX_GAP, DEFAULT_METHOD, FillParams

    parser.add_argument("--store", required=True, help="a sicube cube (Zarr) with sea_ice_conc_raw")
    parser.add_argument("--start", help="first day to use (default: the cube's first)")
    parser.add_argument("--end", help="last day to use (default: the cube's last)")
    defaults = FillParams()
    parser.add_argument("--time-window", default=f"{defaults.time_window}",
                        help="comma list of time windows (days)")
    parser.add_argument("--space-window", default=f"{defaults.space_window}",
                        help="comma list of space windows (cells)")
    parser.add_argument("--alpha", default=f"{defaults.alpha:g}", help="comma list of alphas")
    parser.add_argument("--sigma", default=f"{defaults.sigma:g}",
                        help="comma list of sigmas (cells)")
    parser.add_argument("--method", default=DEFAULT_METHOD, help="comma list: gaussian, hybrid")
    parser.add_argument("--max-gap", default=f"{DEFAULT_MAX_GAP}",
                        help="comma list of hybrid max gaps (days)")
    parser.add_argument("--hide-fraction", type=float, default=0.1,
                        help="share of observed ocean cells to hide")
    parser.add_argument("--no-stripes", action="store_true",
                        help="hide scattered cells only (default: half as swath-like stripes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hidden cells")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    _allow_incomplete(parser)
    _storage_options_flag(parser)
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from sicube.analysis.evaluate import evaluate_grid, format_scores, parse_grid, write_scores_csv

    grid = parse_grid(vars(args))
    rows = evaluate_grid(args.store, grid, args.start, args.end,
                         hide_fraction=args.hide_fraction, stripes=not args.no_stripes,
                         seed=args.seed, allow_incomplete=args.allow_incomplete,
                         storage_options=_storage_options(args),
                         say=None if args.quiet else lambda line: print(line, file=sys.stderr))
    print("\n".join(format_scores(rows)))
    if args.csv:
        write_scores_csv(rows, args.csv)
        print(f"table written to {args.csv}")
    return 0


@command("demo", "run the whole pipeline offline on a generated archive (a few minutes)")
def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=30, help="days to generate (at least 8)")
    parser.add_argument("--out", default="demo", help="folder for everything the demo writes")
    parser.add_argument("--step", type=int, default=2,
                        help="coarsen the grid by this factor (1 = full grid)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    _add_grid(parser, DEFAULT_GRID, "product grid of the generated archive; the mirror's URL "
                                    "names it and the build takes it from there")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from sicube.demo import run_demo

    result = run_demo(args.days, args.out, step=args.step, workers=args.workers,
                      grid=args.grid, progress=not args.quiet)
    print(result.text())
    return result.summary.exit_code
