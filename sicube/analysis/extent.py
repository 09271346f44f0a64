"""`sicube.extent`: the daily sea-ice extent and area of a cube (or of a rectangle of it).

The whole grid's series are stored in the cube by the builder (`sea_ice_extent`,
`sea_ice_area`, km²); for a rectangle they are computed from `sea_ice_conc` and `cell_area`
by the same rule (`sicube.kernels.area`: concentration >= 15 % for extent, the pole hole counted as
ice, land excluded). When the cube spans more than one year the result carries the
day-of-year climatology band of the extent (`sicube.climatology`'s rule on the series:
observed days, ±k days pooled, 29 February with 28 February).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sicube.analysis.climatology import DEFAULT_HALF_WINDOW, N_SLOTS, day_slot, pooled_mean_std
from sicube.datacube import cube
from sicube.errors import BadInput
from sicube.kernels import area

COLUMNS = ("date", "observed", "sea_ice_extent_km2", "sea_ice_area_km2")
BAND_COLUMNS = ("extent_climatology_mean_km2", "extent_climatology_std_km2")


def parse_region(region: str | Sequence[int] | None, shape: tuple[int, int]
                 ) -> tuple[int, int, int, int] | None:
    """(ymin, ymax, xmin, xmax), ends exclusive, checked inside a grid of `shape`."""
    if region is None:
        return None
    try:
        values = [int(v) for v in (region.split(",") if isinstance(region, str) else region)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4:
        raise BadInput(f"--region {region!r}: expected ymin,ymax,xmin,xmax (grid indices)")
    y0, y1, x0, x1 = values
    ny, nx = shape
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise BadInput(f"--region {region}: outside the {ny} x {nx} grid or empty "
                       "(need 0 <= ymin < ymax <= ny and 0 <= xmin < xmax <= nx)")
    return y0, y1, x0, x1


def _series(ds, box: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Extent and area (km²) per day: stored for the whole grid, else computed lazily."""
    if box is None and cube.EXTENT in ds and cube.AREA in ds:
        return ds[cube.EXTENT].values, ds[cube.AREA].values
    if cube.CELL_AREA not in ds:
        raise BadInput("store: a cube from before cell_area existed; rebuild it to get "
                       "extent and area")
    y0, y1, x0, x1 = box or (0, ds.sizes["y"], 0, ds.sizes["x"])
    region = {"y": slice(y0, y1), "x": slice(x0, x1)}
    conc = ds[cube.CONC].isel(region).data.astype(np.float64)
    km2 = ds[cube.CELL_AREA].isel(region).data * area.KM2
    ocean = ds[cube.LAND].isel(region).data == 0
    hole = (ds[cube.POLE_HOLE].isel(region).data > 0 if cube.POLE_HOLE in ds
            else np.zeros(ocean.shape, bool))
    ice = (area.counts_toward_extent(conc) | hole) & ocean
    import dask

    extent, ice_area = dask.compute((ice * km2).sum(axis=(1, 2)),
                                    (conc * km2 * ocean).sum(axis=(1, 2)))
    return np.asarray(extent), np.asarray(ice_area)


def extent(store: str | os.PathLike, *, region: str | Sequence[int] | None = None,
           csv: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
           half_window: int = DEFAULT_HALF_WINDOW, allow_incomplete: bool = False,
           storage_options: dict | None = None):
    """The cube's daily sea-ice extent and area as a pandas DataFrame; optionally written.

    Columns: date, observed (a source file that day), sea_ice_extent_km2, sea_ice_area_km2,
    and, when the cube spans more than one year, extent_climatology_mean_km2 and
    extent_climatology_std_km2 (that day's slot). `region` "ymin,ymax,xmin,xmax" (ends
    exclusive) restricts them to an index rectangle. `csv` writes the table. BadInput (one
    line): a region outside the grid, an unfinished cube, a store that is not a cube. `store`
    is a path or any fsspec URL, with `storage_options` for its file system (as every reader
    of a cube).

    The figure of the series with the band is a view of the table:
    ``sicube.views.plot.plot_extent(table)``. `plot` (a path) still draws it there but is
    deprecated: the analysis layer does not depend on the views.
    """
    import pandas as pd

    ds = cube.open_cube(store, allow_incomplete=allow_incomplete,
                        storage_options=storage_options)
    box = parse_region(region, (ds.sizes["y"], ds.sizes["x"]))
    extent_km2, area_km2 = _series(ds, box)
    dates = ds["time"].values.astype("datetime64[D]")
    observed = ds[cube.OBSERVED].values.astype(bool)
    table = pd.DataFrame({"date": pd.to_datetime(dates).strftime("%Y-%m-%d"),
                          "observed": observed, "sea_ice_extent_km2": extent_km2,
                          "sea_ice_area_km2": area_km2})
    if (dates[-1] - dates[0]).astype(int) >= 365:  # more than one year
        mean, std = band(dates, extent_km2, observed, half_window)
        slots = day_slot(dates)
        table[BAND_COLUMNS[0]], table[BAND_COLUMNS[1]] = mean[slots], std[slots]
    table.attrs["region"] = box
    if csv is not None:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv, index=False, float_format="%.3f")
    if plot is not None:
        _deprecated_plot(table, str(store), plot)
    return table


def _deprecated_plot(table, title: str, output: str | os.PathLike) -> None:
    """`extent(plot=...)`, kept for its callers: the figure is the view's to draw."""
    import warnings

    warnings.warn("sicube.extent(plot=...) is deprecated: draw the table with "
                  "sicube.views.plot.plot_extent(table) and save_figure", DeprecationWarning,
                  stacklevel=3)
    from sicube.views.plot import plot_extent, save_figure  # lazily: views depend on analysis

    save_figure(plot_extent(table, title), output)


def summary_line(table, title: str) -> str:
    """`extent`'s table in one line: its days, and the range of extent and area (km²)."""
    from sicube.dates import count_text

    extent_km2, area_km2 = table["sea_ice_extent_km2"], table["sea_ice_area_km2"]
    return (f"{title}: {count_text(len(table), 'day')} {table['date'].iloc[0]} .. "
            f"{table['date'].iloc[-1]}; extent {extent_km2.min():,.0f} .. "
            f"{extent_km2.max():,.0f} km2, area {area_km2.min():,.0f} .. "
            f"{area_km2.max():,.0f} km2")


def band(dates: np.ndarray, values: np.ndarray, use: np.ndarray,
         half_window: int = DEFAULT_HALF_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Day-of-year mean and std (365,) of a daily series over the days `use`."""
    keep = np.asarray(use, bool) & np.isfinite(values)
    slots = day_slot(dates[keep])
    v = np.asarray(values, np.float64)[keep]
    sums = np.bincount(slots, v, minlength=N_SLOTS)
    squares = np.bincount(slots, v * v, minlength=N_SLOTS)
    counts = np.bincount(slots, minlength=N_SLOTS)
    return pooled_mean_std(sums, squares, counts, half_window)


__all__ = ["COLUMNS", "BAND_COLUMNS", "band", "extent", "parse_region", "summary_line"]
