"""A cube's quality report: one self-contained HTML page (`sicube report --html`).

The page shows, for one cube: its state and provenance; a calendar of observed, missing,
failed, suspicious and not yet ingested days; the daily shares of observed and filled
ocean cells (from `fill_flag`); the per-day statistics and the sea-ice extent and area
series when the cube holds them (with a day-of-year climatology band when it spans more
than a year); and the land mask, nan_ratio and cell-area maps.

Self-contained: CSS inline, figures inline as base64 PNG (matplotlib Agg, through
`sicube.views.plot`), no script and no external URL, so the page opens offline and can be
mailed. A section whose variables the cube lacks (a cube built by an older sicube) says
so instead of failing.

Three parts, as everywhere in sicube: `collect` reads the cube (its day lists from the
group attributes, `fill_flag` one time chunk at a time: never the whole span in memory),
`render_html` turns what it read into the page (no I/O), `write_report` writes it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sicube.datacube import cube
from sicube.datacube.cube import FillFlag
from sicube.datacube.store import atomic_file
from sicube.dates import day_range
from sicube.errors import BadInput, require_extra

require_extra("plot", "sicube.views.html", "matplotlib")

# Variables a cube from before them lacks (the page then says so).
DAY_QUALITY, DAY_STATS = cube.DAY_QUALITY, cube.DAY_STATS
EXTENT, AREA, CELL_AREA = cube.EXTENT, cube.AREA, cube.CELL_AREA

# A day's state on the calendar, in the order the legend lists them.
OBSERVED, SUSPICIOUS, MISSING, FAILED, NOT_INGESTED = (
    "observed", "suspicious", "missing", "failed", "not ingested")
DAY_STATES = (OBSERVED, SUSPICIOUS, MISSING, FAILED, NOT_INGESTED)
STATE_COLOURS = {OBSERVED: "#4a90c2", SUSPICIOUS: "#f0a202", MISSING: "#bdbdbd",
                 FAILED: "#d62728", NOT_INGESTED: "#ffffff"}
# Half-width (days) of the day-of-year window the extent and area climatology band pools:
# +-7 days smooths the day-to-day noise of a few years of data without flattening the
# seasonal cycle (the melt season changes extent by ~1 % a week).
BAND_HALF_WINDOW = 7
DPI = 80  # figures are for a screen, not print: ~60-150 kB each


@dataclass
class CubeQuality:
    """What the report shows of a cube, read by `collect`; arrays are per day of `days`."""

    path: Path
    info: object  # sicube.analysis.report.Info of the cube
    days: list[dt.date]
    states: list[str]
    reasons: dict[dt.date, str]  # why a day is failed or suspicious
    # Cells per FillFlag value per day (days x len(FillFlag)); NaN rows: not ingested.
    flag_counts: np.ndarray
    # Per-day series the cube holds (name -> float array), and the units of each.
    series: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    # Whether the cube has a day_quality variable (None in `suspicious` when it has not).
    has_quality: bool = False
    figures: dict[str, str] = field(default_factory=dict)  # name -> data: URI of a PNG
    notes: dict[str, str] = field(default_factory=dict)  # name -> why a section is absent


def day_states(days: list[dt.date], observed: set[dt.date], failed: set[dt.date],
               suspicious: set[dt.date], not_ingested: set[dt.date]) -> list[str]:
    """Each day's calendar state: failed, suspicious (observed but flagged), observed, not
    yet ingested, or else missing (no source file)."""
    states = []
    for day in days:
        if day in failed:
            states.append(FAILED)
        elif day in suspicious:
            states.append(SUSPICIOUS)
        elif day in observed:
            states.append(OBSERVED)
        elif day in not_ingested:
            states.append(NOT_INGESTED)
        else:
            states.append(MISSING)
    return states


def doy_band(days: list[dt.date], values: np.ndarray,
             half_window: int = BAND_HALF_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Per day of `days`, the mean and standard deviation of `values` over every day of the
    series whose day of year lies within `half_window` days of it (wrapping at the year's
    end; 29 February counts as day 60). NaN values are left out."""
    doy = np.array([d.timetuple().tm_yday for d in days])
    values = np.asarray(values, np.float64)
    distance = np.abs(np.arange(1, 367)[:, None] - doy[None, :])
    near = np.minimum(distance, 366 - distance) <= half_window  # (366 days of year, days)
    ok = np.isfinite(values)
    pooled = np.where(near & ok, values, 0.0)
    count = (near & ok).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = pooled.sum(axis=1) / count
        var = (np.where(near & ok, (values[None, :] - mean[:, None]) ** 2, 0.0).sum(axis=1)
               / count)
    return mean[doy - 1], np.sqrt(var)[doy - 1]


# --- reading --------------------------------------------------------------------------------


def _suspicious_days(group, ds) -> dict[dt.date, str] | None:
    """{day: reason} of the cube's suspicious days; None when it has no day_quality."""
    if DAY_QUALITY not in ds:
        return None
    return cube.suspicious_days(group)


def _flag_counts(ds, skip: np.ndarray, progress: bool) -> np.ndarray:
    """Cells per FillFlag value per day, one time chunk of `fill_flag` at a time (memory:
    one chunk row of the grid); rows of days in `skip` are NaN (not read)."""
    import dask.array as da
    from tqdm import tqdm

    flags = ds[cube.FLAG].data
    n_days, n_flags = flags.shape[0], len(FillFlag)
    counts = np.full((n_days, n_flags), np.nan)
    step = flags.chunksize[0]
    starts = [s for s in range(0, n_days, step) if not skip[s:s + step].all()]
    for start in tqdm(starts, desc="report", unit="time chunk", disable=not progress):
        block = flags[start:start + step]
        per_flag = da.stack([(block == flag).sum(axis=(1, 2)) for flag in FillFlag], axis=1)
        counts[start:start + step] = per_flag.compute()
    counts[skip] = np.nan
    return counts


def collect(store: str | os.PathLike, *, allow_incomplete: bool = False,
            progress: bool = False, storage_options: dict | None = None) -> CubeQuality:
    """Read what the report shows from the cube at `store`.

    BadInput when `store` is not a sicube cube; IncompleteCube when its build or update has
    not finished, unless `allow_incomplete` (days not yet ingested then show as such).
    `fill_flag` is read one time chunk at a time; everything else read is per day or (y, x).
    """
    from sicube.analysis import report

    path = Path(store)  # for its name on the page; `store` may be any fsspec URL
    group = cube.open_group(store, allow_incomplete=allow_incomplete,
                            storage_options=storage_options)
    ds = cube.open_cube(store, allow_incomplete=allow_incomplete,
                        storage_options=storage_options)
    info = report.info(store, storage_options=storage_options)
    days = [dt.date.fromisoformat(str(d)) for d in ds["time"].values.astype("datetime64[D]")]
    if not days:
        raise BadInput(f"store {path}: the cube has no days")
    observed = {d for d, seen in zip(days, ds[cube.OBSERVED].values, strict=True) if seen}
    suspicious = _suspicious_days(group, ds)
    reasons = {**(suspicious or {}), **{d: f"failed: {r}" for d, r in info.failed_days.items()}}
    states = day_states(days, observed, set(info.failed_days),
                        set(suspicious or {}), set(info.not_ingested))
    skip = np.array([s == NOT_INGESTED for s in states])
    quality = CubeQuality(path, info, days, states, reasons, _flag_counts(ds, skip, progress),
                          has_quality=suspicious is not None)
    for name in (*DAY_STATS, EXTENT, AREA):
        if name in ds and ds[name].dims == ("time",):
            quality.series[name] = ds[name].values.astype(np.float64)
            quality.units[name] = str(ds[name].attrs.get("units", ""))
    _draw(quality, ds)
    return quality


# --- figures --------------------------------------------------------------------------------


def _figure(figsize: tuple[float, float]):
    """A figure outside pyplot's state (safe from threads, never a window), as plot's."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _data_uri(fig) -> str:
    """`fig` as a base64 PNG data: URI (the page embeds it, so it needs no file beside it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _not_in_cube(names: list[str]) -> str:
    return (f"not in this cube (built before sicube wrote {', '.join(names)}): rebuild it "
            "with the current sicube to see this section")


def _mark_days(ax, days: list[dt.date], states: list[str]) -> None:
    """Shade failed and suspicious days on a time-series axis."""
    for day, state in zip(days, states, strict=True):
        if state in (FAILED, SUSPICIOUS):
            start = np.datetime64(day, "h") - np.timedelta64(12, "h")
            ax.axvspan(start, start + np.timedelta64(24, "h"), color=STATE_COLOURS[state],
                       alpha=0.35, linewidth=0)


def _time_axis(ax, times: np.ndarray) -> None:
    """The span, half a day either side, with date labels that do not overlap."""
    import matplotlib.dates as mdates

    half = np.timedelta64(12, "h")
    ax.set_xlim(times[0] - half, times[-1] + half)
    locator = mdates.AutoDateLocator(maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _shares_figure(q: CubeQuality):
    from sicube.views.plot import FLAG_COLOURS

    counts = q.flag_counts
    ocean = counts.sum(axis=1) - counts[:, FillFlag.LAND]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / ocean[:, None]
    times = np.array(q.days, dtype="datetime64[D]")
    observed = share[:, FillFlag.OBSERVED]
    filled = share[:, FillFlag.FILLED] + share[:, FillFlag.POLE_HOLE]
    none = share[:, FillFlag.NO_NEIGHBOUR]
    fig = _figure((10.0, 3.2))
    ax = fig.add_subplot()
    ax.stackplot(times, np.nan_to_num(observed), np.nan_to_num(filled), np.nan_to_num(none),
                 colors=["#4a90c2", FLAG_COLOURS[FillFlag.FILLED],
                         FLAG_COLOURS[FillFlag.NO_NEIGHBOUR]],
                 labels=["observed (flag 0)", "filled (flags 1, 4)",
                         "no observed neighbour (flag 2)"], step="mid")
    _mark_days(ax, q.days, q.states)
    _time_axis(ax, times)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of ocean cells")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.set_title("Daily shares of ocean cells by fill_flag (shaded: failed / suspicious days)",
                 fontsize=10)
    return fig


def _stats_figure(q: CubeQuality):
    names = [n for n in DAY_STATS if n in q.series]
    times = np.array(q.days, dtype="datetime64[D]")
    fig = _figure((10.0, 1.9 * len(names) + 0.4))
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
    for ax, name in zip(axes, names, strict=True):
        ax.plot(times, q.series[name], color="#333333", linewidth=1, marker=".", markersize=3)
        _mark_days(ax, q.days, q.states)
        unit = q.units.get(name)
        ax.set_ylabel(name + (f" ({unit})" if unit else ""), fontsize=8)
    _time_axis(axes[-1], times)
    axes[0].set_title("Per-day statistics over non-land cells (shaded: suspicious / failed)",
                      fontsize=10)
    return fig


def _extent_figure(q: CubeQuality) -> tuple[object, bool]:
    """The extent and area series (million km2), each with its climatology band when the
    cube spans more than a year; and whether the band is drawn."""
    times = np.array(q.days, dtype="datetime64[D]")
    band = (q.days[-1] - q.days[0]).days >= 366
    fig = _figure((10.0, 3.6))
    ax = fig.add_subplot()
    for name, colour in ((EXTENT, "#1f4e79"), (AREA, "#2a9d8f")):
        if name not in q.series:
            continue
        values = q.series[name] / _km2_per(q.units.get(name, "km2")) / 1e6
        if band:
            mean, std = doy_band(q.days, values)
            ax.fill_between(times, mean - std, mean + std, color=colour, alpha=0.18,
                            linewidth=0, label=f"{name}: day-of-year mean ± 1 std")
        ax.plot(times, values, color=colour, linewidth=1.2, label=name)
    _mark_days(ax, q.days, q.states)
    _time_axis(ax, times)
    ax.set_ylabel("million km²")
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_title("Sea-ice extent (cells >= 15 %) and area (sum of concentration x cell area)",
                 fontsize=10)
    return fig, band


def _km2_per(unit: str) -> float:
    """How many of `unit` make one km2 (the series may be stored in m2 or km2)."""
    return {"m2": 1e6, "m^2": 1e6, "m**2": 1e6}.get(unit.replace(" ", ""), 1.0)


def _cell_area_figure(ds):
    from sicube.views.plot import MapField, dataset_crs, draw_map

    values = ds[CELL_AREA].values.astype(np.float64)
    unit = str(ds[CELL_AREA].attrs.get("units", "m2"))
    scale = 1e-6 if unit.replace(" ", "") in ("m2", "m^2", "m**2") else 1.0
    field_ = MapField(values * scale, ds["x"].values, ds["y"].values, dataset_crs(ds))
    fig = _figure((6.0, 6.0))
    ax = fig.add_subplot()
    image = draw_map(ax, field_, cmap="viridis", vmin=float(np.nanmin(field_.values)),
                     vmax=float(np.nanmax(field_.values)), land=False)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cell area (km²)")
    total = np.nansum(values) * scale
    ax.set_title(f"cell_area: {total / 1e6:.3f} million km² in all", fontsize=10)
    return fig


def _draw(q: CubeQuality, ds) -> None:
    """Draw every figure the cube's variables allow into `q.figures`; say in `q.notes` why
    the others are absent."""
    from sicube.views.plot import plot_mask

    q.figures["shares"] = _data_uri(_shares_figure(q))
    stats = [n for n in DAY_STATS if n not in q.series]
    if stats:
        q.notes["stats"] = _not_in_cube(stats)
    else:
        q.figures["stats"] = _data_uri(_stats_figure(q))
    absent = [n for n in (EXTENT, AREA) if n not in q.series]
    if len(absent) == 2:
        q.notes["extent"] = _not_in_cube(absent)
    else:
        fig, band = _extent_figure(q)
        q.figures["extent"] = _data_uri(fig)
        notes = []
        if absent:
            notes.append(_not_in_cube(absent))
        if not band:
            notes.append("no climatology band: the cube spans less than a year")
        if notes:
            q.notes["extent"] = "; ".join(notes)
    q.figures["mask"] = _data_uri(plot_mask(ds))
    if CELL_AREA in ds and ds[CELL_AREA].dims == ("y", "x"):
        q.figures["cell_area"] = _data_uri(_cell_area_figure(ds))
    else:
        q.notes["cell_area"] = _not_in_cube([CELL_AREA])


# --- the page -------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #222; background: #fafafa; }
main { max-width: 1060px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.state { display: inline-block; padding: 2px 8px; border-radius: 4px; color: #fff;
         background: #2e7d32; } .state.unfinished { background: #c62828; }
table.facts td, table.facts th { text-align: left; padding: 2px 12px 2px 0;
                                 vertical-align: top; }
table.facts th { font-weight: 600; color: #555; }
.calendar { border-collapse: collapse; font-size: 10px; }
.calendar th { text-align: right; padding: 0 6px 0 0; font-weight: 600; color: #555; }
.calendar td { width: 18px; height: 16px; text-align: center; border: 1px solid #fafafa;
               color: #fff; }
.calendar td.none { background: transparent; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            vertical-align: -1px; border: 1px solid #999; }
.note { color: #666; font-style: italic; }
img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; background: #fff; }
table.days td { padding: 1px 12px 1px 0; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _calendar(q: CubeQuality) -> str:
    """One row per month of the span, one cell per day, coloured by its state; hovering a
    day shows its date, state and reason."""
    state_of = dict(zip(q.days, q.states, strict=True))
    first, last = q.days[0], q.days[-1]
    rows = []
    month = first.replace(day=1)
    while month <= last:
        following = (month + dt.timedelta(days=32)).replace(day=1)
        cells = []
        for day in day_range(month, following - dt.timedelta(days=1)):
            state = state_of.get(day)
            if state is None:
                cells.append('<td class="none"></td>')
                continue
            text = f"{day.isoformat()}: {state}"
            if day in q.reasons:
                text += f" ({q.reasons[day]})"
            colour = "#444" if state == NOT_INGESTED else "#fff"
            cells.append(f'<td style="background:{STATE_COLOURS[state]};color:{colour}" '
                         f'title="{_e(text)}">{day.day}</td>')
        rows.append(f"<tr><th>{month:%Y-%m}</th>{''.join(cells)}</tr>")
        month = following
    legend = "".join(f'<span><i style="background:{STATE_COLOURS[s]}"></i>{s} '
                     f"({q.states.count(s)})</span>" for s in DAY_STATES)
    return (f'<p class="legend">{legend}</p>'
            f'<table class="calendar">{"".join(rows)}</table>')


def _facts(q: CubeQuality) -> str:
    info = q.info
    provenance = getattr(info, "provenance", {}) or {}
    rows = [("store", info.path), ("state", info.status), ("span", f"{q.days[0]} .. {q.days[-1]} "
                                                                 f"({len(q.days)} days)"),
            ("grid", f"{info.grid}, {info.grid_shape[0]} x {info.grid_shape[1]} cells"),
            ("crs", info.crs), ("source", info.source or "-")]
    rows += [(key.replace("_", " "), value) for key, value in provenance.items()]
    return "<table class=\"facts\">" + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _day_table(q: CubeQuality, state: str) -> str:
    listed = [(d, q.reasons.get(d, "")) for d, s in zip(q.days, q.states, strict=True)
              if s == state]
    if not listed:
        return f"<p>No {state} days.</p>"
    return ('<table class="days">' + "".join(f"<tr><td>{d}</td><td>{_e(r)}</td></tr>"
                                             for d, r in listed) + "</table>")


def _figure_section(q: CubeQuality, key: str, alt: str) -> str:
    parts = []
    if key in q.figures:
        parts.append(f'<img src="{q.figures[key]}" alt="{_e(alt)}">')
    if key in q.notes:
        parts.append(f'<p class="note">{_e(q.notes[key])}</p>')
    return "".join(parts)


def render_html(q: CubeQuality) -> str:
    """The report page of `q` as one HTML document (inline CSS and images; no script)."""
    complete = q.info.status == cube.COMPLETE
    state = (f'<span class="state{"" if complete else " unfinished"}">'
             f"{_e(q.info.status)}</span>")
    unfinished = "" if complete else (
        '<p class="note">This cube is unfinished: days not yet ingested are left out of the '
        "shares, and days ingested but not yet filled show as observed.</p>")
    if q.has_quality:
        suspicious = _day_table(q, SUSPICIOUS)
    else:
        suspicious = f'<p class="note">{_e(_not_in_cube([DAY_QUALITY]))}</p>'
    sections = [
        f"<h1>sicube quality report: {_e(q.path.name)} {state}</h1>", unfinished,
        _facts(q),
        "<h2>Calendar</h2>", _calendar(q),
        "<h2>Failed days</h2>", _day_table(q, FAILED),
        "<h2>Suspicious days</h2>", suspicious,
        "<h2>Observed and filled shares</h2>",
        _figure_section(q, "shares", "daily shares of observed and filled cells"),
        "<h2>Per-day statistics</h2>", _figure_section(q, "stats", "per-day statistics"),
        "<h2>Sea-ice extent and area</h2>", _figure_section(q, "extent", "extent and area"),
        "<h2>Land mask and nan_ratio</h2>", _figure_section(q, "mask", "land mask, nan_ratio"),
        "<h2>Cell area</h2>", _figure_section(q, "cell_area", "cell area map"),
    ]
    from sicube._version import __version__

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>sicube report: {_e(q.path.name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(sections)}<p class=\"note\">written by sicube "
            f"{_e(__version__)} on {dt.date.today()}</p></main></body></html>\n")


def write_report(store: str | os.PathLike, output: str | os.PathLike, *,
                 allow_incomplete: bool = False, progress: bool = False,
                 storage_options: dict | None = None) -> Path:
    """Write the quality report of the cube at `store` to `output` (HTML); return its path.

    The page is written whole or not at all (a temporary file renamed into place).
    BadInput when `store` is not a cube or `output` is a folder; IncompleteCube for an
    unfinished cube unless `allow_incomplete`.
    """
    output = Path(output)
    if output.is_dir():
        raise BadInput(f"html {output}: is a folder; name the HTML file to write")
    output.parent.mkdir(parents=True, exist_ok=True)  # an unwritable output fails before work
    page = render_html(collect(store, allow_incomplete=allow_incomplete, progress=progress,
                               storage_options=storage_options))
    with atomic_file(output) as part:
        part.write_text(page, encoding="utf-8")
    return output
