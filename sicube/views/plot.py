"""Maps of source files and cubes (PNG, matplotlib Agg) and an interactive cube explorer.

Everything works offline: coastlines and land come from a land mask shipped with the
package (`sicube/data/land-{grid}.npz`, the 3.125 km grid, written by
`tools/make_land.py` from `global-land-mask`), and the lat/lon graticule is projected
with pyproj. The original toolbox's cartopy maps downloaded coastlines at run time and
failed offline.

Figures are built with `matplotlib.figure.Figure` (no pyplot state), so plotting is safe
from threads and never opens a window.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr

from sicube.archive import products
from sicube.datacube import cube
from sicube.datacube.cube import FillFlag
from sicube.datacube.record import CubeRecord
from sicube.datacube.store import atomic_file
from sicube.dates import DateLike, parse_date
from sicube.errors import BadInput, BadSourceFile, require_extra

require_extra("plot", "sicube.views.plot", "matplotlib")

LAND_COLOUR = "#cbbd9b"  # tan: land is never mistaken for data or for missing data
COAST_COLOUR = "#3a3a3a"
MISSING_COLOUR = "#8c8c8c"  # mid grey: no retrieval (pole hole, swath gaps, missing days)
GRATICULE_COLOUR = "#5a5a5a"
CONC_CMAP = "Blues_r"  # open water dark blue, consolidated ice white
# fill_flag colours, one per FillFlag (in value order where a colour map needs them).
FLAG_COLOURS = {FillFlag.OBSERVED: "#dcdcdc", FillFlag.FILLED: "#e6550d",
                FillFlag.NO_NEIGHBOUR: "#6a3d9a", FillFlag.LAND: LAND_COLOUR,
                FillFlag.POLE_HOLE: "#1b9e77"}
DPI = 150
DAY_FIGSIZE = (7.5, 9.0)
MASK_FIGSIZE = (13.0, 9.0)
COMPARE_FIGSIZE = (18.0, 9.0)

@dataclass(frozen=True)
class MapField:
    """A 2-D field to map: values on (y, x) cell centres in metres, and its CRS."""

    values: np.ndarray
    x: np.ndarray
    y: np.ndarray
    crs: products.GridCRS

    @property
    def epsg(self) -> int | None:
        """The CRS's EPSG code, None when it has none."""
        return self.crs.epsg


def _as_crs(crs: products.GridCRS | int) -> products.GridCRS:
    return crs if isinstance(crs, products.GridCRS) else products.GridCRS.from_epsg(crs)


def dataset_crs(ds: xr.Dataset, what: str = "cube") -> products.GridCRS:
    """The CRS a cube or mask file declares in its grid mapping; for one without a usable
    grid mapping, the product grid's CRS when its coordinates are one of the product grids
    (never a hemisphere by default). BadInput otherwise."""
    attrs = ds[cube.GRID_MAPPING].attrs if cube.GRID_MAPPING in ds.variables else {}
    try:
        return products.GridCRS.from_attrs(attrs)
    except ValueError:
        grid = products.grid_of_coords(ds["x"].values, ds["y"].values)
        if grid is None:
            raise BadInput(f"{what}: declares no usable CRS and its grid is none of the "
                           f"product grids ({', '.join(products.GRIDS)})") from None
        return grid.crs


# --- shipped land, coastlines, graticule --------------------------------------------------------


@lru_cache(maxsize=2)
def land_field(hemisphere: str = "n") -> MapField:
    """The shipped land mask (True = land) of the 3.125 km grid of a hemisphere ("n" or "s")
    as a map field (`products.shipped_land`, with its CRS)."""
    land, x, y = products.shipped_land(south=hemisphere == "s")
    return MapField(land, x, y, products.grid_of_coords(x, y).crs)


def _hemisphere(crs: products.GridCRS | int) -> str:
    return "s" if _as_crs(crs).south else "n"


@lru_cache(maxsize=4)
def coastlines(hemisphere: str = "n", step: int = 1) -> list[np.ndarray]:
    """Coastlines as (n, 2) arrays of x, y in metres: the 0.5 contour of the shipped land."""
    import contourpy

    land = land_field(hemisphere)
    gen = contourpy.contour_generator(land.x[::step], land.y[::step],
                                      land.values[::step, ::step].astype(np.float32))
    return [line for line in gen.lines(0.5) if len(line) > 2]


def _extent(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """imshow extent (cell edges) of cell-centre coordinates."""
    dx, dy = (x[-1] - x[0]) / max(x.size - 1, 1), (y[-1] - y[0]) / max(y.size - 1, 1)
    return (x[0] - dx / 2, x[-1] + dx / 2, y[0] - dy / 2, y[-1] + dy / 2)


def _draw_land(ax, crs: products.GridCRS, *, fill: bool = True) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    hemisphere = _hemisphere(crs)
    if fill:
        land = land_field(hemisphere)
        ax.imshow(np.ma.masked_where(~land.values, land.values), origin="lower",
                  extent=_extent(land.x, land.y), cmap=ListedColormap([LAND_COLOUR]),
                  interpolation="nearest", zorder=2)
    ax.add_collection(LineCollection(coastlines(hemisphere), colors=COAST_COLOUR,
                                     linewidths=0.35, zorder=3))


@lru_cache(maxsize=8)
def _central_longitude(crs: products.GridCRS) -> float:
    cf = crs.to_pyproj().to_cf()
    return float(cf.get("straight_vertical_longitude_from_pole",
                        cf.get("longitude_of_projection_origin", 0.0)))


def _draw_graticule(ax, crs: products.GridCRS,
                    extent: tuple[float, float, float, float]) -> None:
    """Latitude circles every 10 degrees and meridians every 30 degrees, labelled; around
    the south pole (40..80 S) on a southern CRS."""
    from pyproj import Transformer

    to_xy = Transformer.from_crs(4326, crs.to_pyproj(), always_xy=True)
    sign = -1.0 if crs.south else 1.0
    x0, x1, y0, y1 = extent
    inset_x, inset_y = 0.02 * (x1 - x0), 0.02 * (y1 - y0)
    style = dict(color=GRATICULE_COLOUR, linewidth=0.5, linestyle=(0, (4, 3)), alpha=0.8, zorder=4)
    label = dict(fontsize=7, color="#202020", zorder=5, ha="center", va="center",
                 bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))

    def inside(x, y, margin=1.0):
        return ((x > x0 + margin * inset_x) & (x < x1 - margin * inset_x)
                & (y > y0 + margin * inset_y) & (y < y1 - margin * inset_y))

    # Latitude labels run along the meridian half-way between the map's down and right.
    label_lon = _central_longitude(crs) + 45.0 * sign
    lons = np.linspace(-180.0, 180.0, 1441)
    for lat in (40, 50, 60, 70, 80):
        x, y = to_xy.transform(lons, np.full(lons.size, sign * lat))
        ax.plot(x, y, **style)
        lx, ly = to_xy.transform(label_lon, sign * lat)
        if inside(np.array(lx), np.array(ly), 3):
            ax.text(lx, ly, f"{lat}°{'N' if sign > 0 else 'S'}", **label)
    lats = sign * np.linspace(30.0, 89.0, 600)
    for lon in range(-180, 180, 30):
        lat_line = lats if lon % 90 == 0 else lats[np.abs(lats) <= 80.0]
        x, y = to_xy.transform(np.full(lat_line.size, float(lon)), lat_line)
        ax.plot(x, y, **style)
        ok = inside(x, y, 2)
        if ok.any():
            k = np.flatnonzero(ok)[0]  # the meridian's outermost point on the map
            text = "180°" if lon == -180 else f"{abs(lon)}°{'E' if lon > 0 else 'W' if lon else ''}"
            ax.text(x[k], y[k], text, **label)


def _frame_map(ax, extent) -> None:
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_map(ax, field: MapField, *, cmap=CONC_CMAP, vmin: float = 0.0, vmax: float = 100.0,
             norm=None, land: bool = True):
    """Draw `field` on `ax` as a polar stereographic map; return the image for a colourbar.

    NaN cells show the axes' background (MISSING_COLOUR); land from the shipped mask
    is drawn over the data in LAND_COLOUR with its coastline, then the graticule.
    """
    extent = _extent(field.x, field.y)
    ax.set_facecolor(MISSING_COLOUR)
    kwargs = {"norm": norm} if norm is not None else {"vmin": vmin, "vmax": vmax}
    image = ax.imshow(np.asarray(field.values), origin="lower", extent=extent, cmap=cmap,
                      interpolation="nearest", zorder=1, **kwargs)
    _draw_land(ax, field.crs, fill=land)
    _draw_graticule(ax, field.crs, extent)
    _frame_map(ax, extent)
    return image


def _legend(ax, entries: list[tuple[str, str]], **kwargs) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, edgecolor="#404040", linewidth=0.5, label=text)
               for colour, text in entries]
    ax.legend(handles=handles, loc=kwargs.pop("loc", "lower left"), fontsize=8,
              framealpha=0.9, **kwargs)


def _figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


# --- reading what to plot -----------------------------------------------------------------------


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{what} {path}: no such file or folder")
    return path


def _as_cube(store: str | os.PathLike | xr.Dataset, allow_incomplete: bool = False,
             storage_options: dict | None = None) -> tuple[xr.Dataset, str]:
    """(dataset, display name) of a cube given as an opened Dataset, a path or a URL.

    A store is opened by `cube.open_cube` (any fsspec URL, with `storage_options`), which
    refuses an unfinished cube unless `allow_incomplete`; an opened Dataset is the caller's
    choice."""
    if isinstance(store, xr.Dataset):
        return store, store.attrs.get("title", "cube")
    ds = cube.open_cube(store, allow_incomplete=allow_incomplete,
                        storage_options=storage_options)
    return ds, os.fspath(store).rstrip("/").rsplit("/", 1)[-1]


def cube_day_index(ds: xr.Dataset, date: DateLike) -> tuple[int, dt.date]:
    """Index on the cube's time axis of `date`; BadInput when the cube does not hold it."""
    day = parse_date(date)
    days = ds["time"].values.astype("datetime64[D]")
    index = int(np.searchsorted(days, np.datetime64(day, "D")))
    if index >= days.size or days[index] != np.datetime64(day, "D"):
        span = f"{days[0]}..{days[-1]}" if days.size else "empty"
        raise BadInput(f"date {day.isoformat()}: not in the cube (its span is {span})")
    return index, day


def read_file_field(path: str | os.PathLike, expected=None) -> tuple[MapField, dt.date | None]:
    """The concentration (percent) of one source file and its day (from the file name)."""
    path = _existing(path, "file")
    if not path.is_file():
        raise BadInput(f"file {path}: is a folder, expected one daily netCDF file")
    from sicube.archive.sources import read_day

    try:
        day_field = read_day(path, expected)
    except BadSourceFile as err:
        raise BadInput(str(err)) from err
    parsed = products.parse_file_name(path.name)
    return MapField(day_field.z, day_field.grid.x, day_field.grid.y, day_field.crs), (
        parsed[1] if parsed else None)


def _cube_field(ds: xr.Dataset, variable: str, index: int) -> MapField:
    """One day of a cube variable in percent; filled land (FillFlag.LAND) becomes NaN ('masked')."""
    values = ds[variable].isel(time=index).values.astype(np.float32)
    if variable == cube.CONC:
        values = values * 100.0
        values[ds[cube.FLAG].isel(time=index).values == FillFlag.LAND] = np.nan
    return MapField(values, ds["x"].values, ds["y"].values, dataset_crs(ds))


_VARIABLE_LABEL = {cube.RAW: "raw (as in the source file)",
                   cube.CONC: "gaps filled (sea_ice_conc)"}


# --- static maps ----------------------------------------------------------------------------------


def plot_day(file: str | os.PathLike | None = None, *, store=None, date: DateLike | None = None,
             variable: str = cube.RAW, allow_incomplete: bool = False,
             storage_options: dict | None = None):
    """A map of one day's concentration (percent) from a source file or from a cube.

    Parameters
    ----------
    file : a daily source file (then `store` and `date` are not used).
    store, date : a cube (path or Dataset) and the day to map.
    variable : `sea_ice_conc_raw` (percent, NaN missing) or `sea_ice_conc` (filled).
    allow_incomplete : map a cube whose build has not finished (refused by default).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if (file is None) == (store is None):
        raise BadInput("give either a source file or a cube store with a date")
    if variable not in _VARIABLE_LABEL:
        raise BadInput(f"variable {variable!r}: choose {cube.RAW} or {cube.CONC}")
    if file is not None:
        if variable != cube.RAW:
            raise BadInput(f"variable {variable}: a source file holds only raw data")
        field, day = read_file_field(file)
        where = Path(file).name
        note = ""
    else:
        if date is None:
            raise BadInput("date: required with a cube store")
        ds, where = _as_cube(store, allow_incomplete, storage_options)
        index, day = cube_day_index(ds, date)
        field = _cube_field(ds, variable, index)
        observed = bool(ds[cube.OBSERVED].values[index])
        note = "" if observed else " (no source file for this day)"
    fig = _figure(DAY_FIGSIZE)
    ax = fig.add_subplot()
    image = draw_map(ax, field)
    fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02, label="sea-ice concentration (%)")
    missing_label = "no data" if variable == cube.RAW else "no data / masked"
    _legend(ax, [(LAND_COLOUR, "land"), (MISSING_COLOUR, missing_label)])
    when = day.isoformat() if day else "unknown day"
    ax.set_title(f"AMSR2 ASI sea-ice concentration, {when}{note}\n"
                 f"{_VARIABLE_LABEL[variable]} - {where}", fontsize=10)
    return fig


def _read_mask(source, allow_incomplete: bool = False, storage_options: dict | None = None
               ) -> tuple[MapField, MapField | None, float | None, str]:
    """(land mask, NaN ratio or None, threshold or None, name) of a cube or a mask file."""
    if (isinstance(source, xr.Dataset) or "://" in os.fspath(source)
            or Path(source).is_dir()):
        ds, name = _as_cube(source, allow_incomplete, storage_options)
        threshold = CubeRecord.from_attrs(ds).mask_threshold
    else:
        path = _existing(source, "mask file")
        try:
            ds = xr.open_dataset(path)
        except (OSError, ValueError) as err:
            raise BadInput(f"mask file {path}: cannot be opened as netCDF ({err})") from err
        name = path.name
        if cube.LAND not in ds:
            raise BadInput(f"mask file {path}: has no {cube.LAND} variable")
        # A mask file (`sicube mask`) says "threshold"; a cube's own land_mask file its key.
        threshold = ds.attrs.get(cube.MASK_THRESHOLD_ATTR, ds.attrs.get("threshold"))
    crs = dataset_crs(ds, name)
    x, y = ds["x"].values, ds["y"].values
    land = MapField(ds[cube.LAND].values.astype(np.float32), x, y, crs)
    ratio = (MapField(ds[cube.NAN_RATIO].values.astype(np.float32), x, y, crs)
             if cube.NAN_RATIO in ds else None)
    threshold = float(threshold) if threshold is not None else float("nan")
    return land, ratio, (threshold if np.isfinite(threshold) else None), name


def plot_mask(source: str | os.PathLike | xr.Dataset, *, allow_incomplete: bool = False,
              storage_options: dict | None = None):
    """The binary land mask beside the NaN-frequency map it was derived from.

    `source` is a cube or a land-mask netCDF file (`land_mask`, `nan_ratio`). The
    shipped coastline is drawn on both panels, so the data-derived mask can be
    checked against the real coast. An unfinished cube is refused unless
    `allow_incomplete`.
    """
    from matplotlib.colors import ListedColormap

    land, ratio, threshold, name = _read_mask(source, allow_incomplete, storage_options)
    fig = _figure(MASK_FIGSIZE)
    axes = fig.subplots(1, 2)
    draw_map(axes[0], land, cmap=ListedColormap(["#2c6fae", "#b8a67a"]), vmin=0, vmax=1,
             land=False)
    share = float(np.nanmean(land.values))
    _legend(axes[0], [("#b8a67a", "land (1)"), ("#2c6fae", "ocean (0)")])
    axes[0].set_title(f"land_mask: {share:.1%} of cells are land", fontsize=10)
    if ratio is not None:
        image = draw_map(axes[1], ratio, cmap="magma", vmin=0.0, vmax=1.0, land=False)
        colourbar = fig.colorbar(image, ax=axes[1], shrink=0.8, pad=0.02,
                                 label="share of observed days the cell was missing")
        if threshold is not None:
            axes[1].contour(ratio.x, ratio.y, ratio.values, levels=[threshold],
                            colors="#00d0ff", linewidths=0.6, zorder=3)
            colourbar.ax.axhline(threshold, color="#00d0ff", linewidth=2)
        axes[1].set_title("nan_ratio" + (f" (cyan: mask threshold {threshold:g})"
                                         if threshold is not None else ""), fontsize=10)
    else:
        axes[1].set_axis_off()
        axes[1].text(0.5, 0.5, "no nan_ratio in this file", ha="center",
                     transform=axes[1].transAxes)
    fig.suptitle(f"Land mask from NaN frequency - {name}", fontsize=12)
    return fig


def plot_compare(store, date: DateLike, source: str | os.PathLike | None = None, *,
                 allow_incomplete: bool = False, storage_options: dict | None = None):
    """Raw vs filled concentration for one day of a cube, with a panel of the fill flags.

    `source` (optional) takes the raw panel from a daily source file instead of the
    cube's `sea_ice_conc_raw`; it must lie on the cube's grid. An unfinished cube is
    refused unless `allow_incomplete`.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    from sicube.archive.sources import GridCoords

    ds, name = _as_cube(store, allow_incomplete, storage_options)
    index, day = cube_day_index(ds, date)
    if source is not None:
        raw, _ = read_file_field(source, GridCoords(ds["x"].values, ds["y"].values))
        raw_label = f"raw - {Path(source).name}"
    else:
        raw = _cube_field(ds, cube.RAW, index)
        raw_label = "raw - sea_ice_conc_raw"
    filled = _cube_field(ds, cube.CONC, index)
    flags = ds[cube.FLAG].isel(time=index).values
    flag_field = MapField(flags.astype(np.float32), filled.x, filled.y, filled.crs)

    fig = _figure(COMPARE_FIGSIZE)
    axes = fig.subplots(1, 3)
    image = draw_map(axes[0], raw)
    draw_map(axes[1], filled)
    missing = np.isnan(raw.values).mean()
    axes[0].set_title(f"{raw_label}\n{missing:.1%} of cells missing", fontsize=10)
    axes[1].set_title("filled - sea_ice_conc (shown in %)", fontsize=10)
    _legend(axes[0], [(LAND_COLOUR, "land"), (MISSING_COLOUR, "no data")])
    _legend(axes[1], [(LAND_COLOUR, "land"),
                      (MISSING_COLOUR, f"masked (flag {int(FillFlag.LAND)})")])
    fig.colorbar(image, ax=axes[:2], shrink=0.7, pad=0.02, location="bottom", aspect=40,
                 label="sea-ice concentration (%)")

    n = len(FillFlag)
    norm = BoundaryNorm(np.arange(n + 1) - 0.5, n)
    colours = [FLAG_COLOURS[flag] for flag in FillFlag]
    draw_map(axes[2], flag_field, cmap=ListedColormap(colours), norm=norm, land=False)
    counts = np.bincount(flags.ravel(), minlength=n)[:n] / flags.size
    _legend(axes[2], [(FLAG_COLOURS[flag], f"{int(flag)} {meaning.replace('_', ' ')} "
                                           f"({counts[flag]:.1%})")
                      for flag, meaning in zip(FillFlag, cube.FLAG_MEANINGS, strict=True)])
    axes[2].set_title("fill_flag", fontsize=10)
    params = CubeRecord.from_attrs(ds).fill_parameters or {}
    detail = ", ".join(f"{k}={v}" for k, v in params.items())
    observed = "" if ds[cube.OBSERVED].values[index] else " (no source file for this day)"
    fig.suptitle(f"Gap filling on {day.isoformat()}{observed} - {name}"
                 + (f"\nfill: {detail}" if detail else ""), fontsize=12)
    return fig


def save_figure(fig, output: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write `fig` to `output` in the format its extension names (PNG, JPEG, PDF, SVG, ...:
    any that matplotlib writes; BadInput for another), folders created; return the path."""
    if not 10 <= dpi <= 1200:
        raise BadInput(f"dpi: must be between 10 and 1200, got {dpi}")
    output = Path(output)
    kind = output.suffix.lower().lstrip(".")
    known = fig.canvas.get_supported_filetypes()
    if kind not in known:
        raise BadInput(f"{output}: cannot write a {output.suffix or 'file without extension'}; "
                       f"name a file ending in one of .{', .'.join(sorted(known))}")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi, format=kind)
    return output


EXTENT_FIGSIZE = (11.0, 5.5)


def plot_extent(table, title: str = ""):
    """A figure of `sicube.extent`'s table: extent and area, with the climatology band when
    the table has it, days without a file marked."""
    from sicube.analysis.extent import BAND_COLUMNS

    fig = _figure(EXTENT_FIGSIZE)
    ax = fig.add_subplot()
    dates = np.asarray(table["date"], dtype="datetime64[D]")
    if BAND_COLUMNS[0] in table:
        mean, std = table[BAND_COLUMNS[0]].to_numpy(), table[BAND_COLUMNS[1]].to_numpy()
        ax.fill_between(dates, (mean - std) / 1e6, (mean + std) / 1e6, color="#9ecae1",
                        alpha=0.6, label="extent climatology ±1 std")
        ax.plot(dates, mean / 1e6, color="#6baed6", lw=1, label="extent climatology mean")
    ax.plot(dates, table["sea_ice_extent_km2"] / 1e6, color="#08519c", lw=1.5,
            label="sea-ice extent (conc >= 15 %)")
    ax.plot(dates, table["sea_ice_area_km2"] / 1e6, color="#e6550d", lw=1.5,
            label="sea-ice area")
    unobserved = ~table["observed"].to_numpy(bool)
    if unobserved.any():
        ax.plot(dates[unobserved], table["sea_ice_extent_km2"].to_numpy()[unobserved] / 1e6,
                "x", color="#636363", ms=4, label="day without a file (filled)")
    ax.set_ylabel("million km²")
    box = table.attrs.get("region")
    where = f"region y {box[0]}:{box[1]}, x {box[2]}:{box[3]}" if box else "whole grid"
    ax.set_title(f"{title} — {where}" if title else where, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


ROI_FIGSIZE = (14.0, 8.0)


def plot_roi(report):
    """The ROI drawn on the full grid (worst day's raw data), beside its missing share per day.

    The map is in grid indices (the ROI's own units), row 0 at the bottom as y ascends.
    `report` is a `sicube.analysis.report.RoiReport`.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    worst = report.worst
    if worst is None:
        raise BadInput("ROI report has no observed day to draw")
    if report.store is not None:
        # roi_report has already applied the state check (or been told to skip it).
        ds, _ = _as_cube(report.store, allow_incomplete=True,
                         storage_options=report.storage_options)
        index, _ = cube_day_index(ds, worst.date)
        values = ds[cube.RAW].isel(time=index).values
        crs = dataset_crs(ds)
        x, y = ds["x"].values, ds["y"].values
    else:
        field, _ = read_file_field(report.source_files[worst.date])
        values, crs, x, y = field.values, field.crs, field.x, field.y
    ny, nx = values.shape
    fig = _figure(ROI_FIGSIZE)
    ax_map, ax_days = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.3]})
    ax_map.set_facecolor(MISSING_COLOUR)
    image = ax_map.imshow(values, origin="lower", cmap=CONC_CMAP, vmin=0, vmax=100,
                          interpolation="nearest", extent=(-0.5, nx - 0.5, -0.5, ny - 0.5))
    land = land_on_grid(x, y, crs)
    ax_map.imshow(np.ma.masked_where(~land, land), origin="lower",
                  cmap=ListedColormap([LAND_COLOUR]), interpolation="nearest",
                  extent=(-0.5, nx - 0.5, -0.5, ny - 0.5))
    roi = report.roi
    ax_map.add_patch(Rectangle((roi.xmin - 0.5, roi.ymin - 0.5), roi.xmax - roi.xmin,
                               roi.ymax - roi.ymin, fill=False, edgecolor="red", linewidth=1.5))
    ax_map.set_xlabel("x index (column)")
    ax_map.set_ylabel("y index (row)")
    ax_map.set_title(f"ROI y {roi.ymin}:{roi.ymax}, x {roi.xmin}:{roi.xmax} on the "
                     f"{ny} x {nx} grid\nraw data of {worst.date} (most missing in the ROI)",
                     fontsize=10)
    fig.colorbar(image, ax=ax_map, shrink=0.7, label="sea-ice concentration (%)")
    _legend(ax_map, [(LAND_COLOUR, "land"), (MISSING_COLOUR, "no data")])

    def at(day: dt.date) -> dt.datetime:  # a day's bar is centred on its date tick
        return dt.datetime.combine(day, dt.time(0))

    half = dt.timedelta(hours=12)
    shares = [d.missing_percent for d in report.days]
    colours = ["#d62728" if s >= report.threshold_percent else "#1f77b4" for s in shares]
    ax_days.bar([at(d.date) for d in report.days], shares, color=colours,
                width=dt.timedelta(hours=19))
    ax_days.axhline(report.threshold_percent, color="#d62728", linestyle="--", linewidth=1,
                    label=f"threshold {report.threshold_percent:g}%")
    for day in report.unobserved:
        ax_days.axvspan(at(day) - half, at(day) + half, color=MISSING_COLOUR, alpha=0.35,
                        linewidth=0)
    ax_days.set_ylabel("missing cells in the ROI (%)")
    ax_days.set_xlim(at(report.start) - 2 * half, at(report.end) + 2 * half)
    fig.autofmt_xdate()
    ax_days.legend(handles=[*ax_days.get_legend_handles_labels()[0],
                            _patch(MISSING_COLOUR, "no file for the day")], fontsize=8)
    ax_days.set_title(f"{len(report.flagged)} of {len(report.days)} observed days at or "
                      f"above {report.threshold_percent:g}%", fontsize=10)
    return fig


def _patch(colour: str, text: str):
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, alpha=0.5, label=text)


# --- interactive ----------------------------------------------------------------------------------

EXPLORE_VARIABLES = (cube.CONC, cube.RAW)
_LAND_VALUE = -1.0  # below the colour range: drawn in LAND_COLOUR by the explorer


def land_on_grid(x: np.ndarray, y: np.ndarray, crs: products.GridCRS | int) -> np.ndarray:
    """Shipped land (True) of the CRS's hemisphere at the cell centres x, y (metres): the
    coarsening the builder's pole-hole test and the sample archives use
    (`sicube.pipeline.mask.coastline_land`)."""
    from sicube.pipeline.mask import coastline_land

    return coastline_land(x, y, south=_as_crs(crs).south)


def _explore_array(ds: xr.Dataset, variables: tuple[str, ...]) -> xr.DataArray:
    """The variables in percent stacked along `variable`, land set to _LAND_VALUE (lazy)."""
    import pandas as pd

    land = xr.DataArray(land_on_grid(ds["x"].values, ds["y"].values, dataset_crs(ds)),
                        dims=("y", "x"))
    layers = []
    for variable in variables:
        values = ds[variable].astype(np.float32)
        if variable == cube.CONC:  # fraction -> percent; land (FillFlag.LAND) -> no data
            values = (values * 100.0).where(ds[cube.FLAG] != FillFlag.LAND)
        layers.append(values.where(~land, _LAND_VALUE).drop_vars(cube.GRID_MAPPING,
                                                                 errors="ignore"))
    stacked = xr.concat(layers, dim=pd.Index(list(variables), name="variable"))
    stacked.name = "concentration"
    stacked.attrs = {"units": "%", "long_name": "sea-ice concentration"}
    return stacked


def explore(store, variables: tuple[str, ...] = EXPLORE_VARIABLES, *,
            start: DateLike | None = None, end: DateLike | None = None,
            dynamic: bool = True, width: int = 500, allow_incomplete: bool = False,
            storage_options: dict | None = None):
    """An interactive map of a cube: a time slider, a variable selector, hover values.

    Returns a HoloViews object (shows in Jupyter). With `dynamic=True` every frame is
    rasterized by Datashader on demand at the zoom level shown, so a full-resolution
    cube stays responsive. `dynamic=False` precomputes every frame, subsampled to about
    `width` pixels across (what `save_explorer` writes to HTML). Values are percent;
    land is tan, no data grey. An unfinished cube is refused unless `allow_incomplete`.
    """
    require_extra("plot", "sicube.explore", "hvplot", "datashader", "panel")
    import hvplot.xarray  # noqa: F401  (registers .hvplot)

    unknown = [v for v in variables if v not in EXPLORE_VARIABLES]
    if unknown or not variables:
        raise BadInput(f"variables {unknown or variables}: choose from "
                       f"{', '.join(EXPLORE_VARIABLES)}")
    ds, name = _as_cube(store, allow_incomplete, storage_options)
    first = parse_date(start, "start") if start is not None else None
    last = parse_date(end, "end") if end is not None else None
    ds = ds.sel(time=slice(first and np.datetime64(first), last and np.datetime64(last)))
    if ds.sizes["time"] == 0:
        raise BadInput(f"start/end: no day of the cube lies in {first}..{last}")
    if not dynamic:
        # Static frames are embedded in the page: keep every k-th cell (nearest
        # neighbour, so land and no-data cells keep their meaning; a mean would blur them).
        k = max(1, int(np.ceil(ds.sizes["x"] / width)))
        ds = ds.isel(x=slice(k // 2, None, k), y=slice(k // 2, None, k))
    stacked = _explore_array(ds, tuple(variables))
    return stacked.hvplot.image(
        x="x", y="y", groupby=["variable", "time"], rasterize=dynamic, dynamic=dynamic,
        cmap=CONC_CMAP, clim=(0, 100), clabel="sea-ice concentration (%)", hover=True,
        frame_width=width, data_aspect=1, xaxis=None, yaxis=None, title=name,
    ).opts(clipping_colors={"min": LAND_COLOUR, "NaN": MISSING_COLOUR})


def save_explorer(store, output: str | os.PathLike, *, variables=EXPLORE_VARIABLES,
                  start: DateLike | None = None, end: DateLike | None = None,
                  width: int = 300, progress: bool = False,
                  allow_incomplete: bool = False, storage_options: dict | None = None) -> Path:
    """Write the explorer as a standalone HTML file (JavaScript, stylesheets and icons inlined:
    it works offline).

    Every frame is embedded (no server to rasterize on demand): the file holds
    len(variables) x days float32 images of `width` pixels across (base64: ~5.4 bytes a
    pixel, ~0.7 MB a frame at 300 px on the n3125 grid), plus ~3 MB of JavaScript.
    Choose the span and width to keep it small (50 to 4000 pixels).
    """
    if not 50 <= width <= 4000:
        raise BadInput(f"width: must be between 50 and 4000 pixels, got {width}")
    require_extra("plot", "sicube.explore", "hvplot", "datashader", "panel")
    import panel as pn
    from bokeh.resources import INLINE

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    view = explore(store, variables, start=start, end=end, dynamic=False, width=width,
                   allow_incomplete=allow_incomplete, storage_options=storage_options)
    states = len(view.keys())
    # embed=True writes every (variable, day) frame into the page; panel's default cap of
    # 1000 states would silently drop days of a long span.
    page = io.StringIO()
    with _labelled_tqdm(desc="explore", unit="frame"):
        pn.panel(view, widget_location="bottom").save(
            page, embed=True, resources=INLINE, progress=progress, max_states=states + 1,
            title="sicube explorer")
    with atomic_file(output) as part:
        part.write_text(inline_panel_files(page.getvalue()), encoding="utf-8")
    return output


def inline_panel_files(page: str) -> str:
    """`page` (HTML written by panel) with every file it loads from panel's CDN (widget
    stylesheets, the favicon) replaced by a data: URI of the copy inside the panel package.

    `resources=INLINE` inlines the JavaScript but not those: offline, the page then logs a
    failed load for each and draws its widgets unstyled (panel issue 6759, open). A file
    the package lacks is left as it is.
    """
    import base64
    import mimetypes
    import re

    from panel.io.resources import CDN_DIST, DIST_DIR

    def inline(match: re.Match) -> str:
        local = Path(DIST_DIR) / match.group(1)
        if ".." in match.group(1) or not local.is_file():
            return match.group(0)
        kind = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
        return f"data:{kind};base64," + base64.b64encode(local.read_bytes()).decode("ascii")

    return re.sub(re.escape(CDN_DIST) + r"([\w./-]+)(\?v=[\w.]+)?", inline, page)


@contextlib.contextmanager
def _labelled_tqdm(**labels) -> Iterator[None]:
    """Inside: every new tqdm bar goes to stderr with `labels`. panel draws its embedding bar
    with tqdm on stdout, unlabelled (`panel.io.embed`), and stdout is for results."""
    import tqdm

    plain = tqdm.tqdm

    def labelled(*args, **kwargs):
        return plain(*args, **{**kwargs, **labels, "file": sys.stderr})

    tqdm.tqdm = labelled
    try:
        yield
    finally:
        tqdm.tqdm = plain
