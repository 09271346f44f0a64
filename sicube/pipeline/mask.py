"""Land mask from NaN frequency: compute it, reuse one from a file or cube, export it.

A cell that is missing on at least `threshold` of the observed days is land (the
original toolbox's create_mask.py). Only observed days count: a day with no file says
nothing about land.

The north pole hole is told apart from land (`detect_pole_hole`): the cells missing on every
observed day that are not land on the coastline shipped with sicube (`coastline_land`) and
are connected to the pole. They are ocean under the sensor's blind spot, not land.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from sicube.archive.products import shipped_land
from sicube.archive.sources import GridCoords
from sicube.datacube import cube
from sicube.datacube.record import CubeRecord
from sicube.datacube.store import atomic_file
from sicube.errors import BadInput
from sicube.params import MASK_THRESHOLD

if TYPE_CHECKING:  # loaded where used: an update imports this module and needs neither
    import dask.array as da

DEFAULT_THRESHOLD = MASK_THRESHOLD  # its home is sicube.params


@dataclass
class LandMask:
    """A land mask (1 = land) with the NaN frequency it came from, on the cube's grid."""

    land_mask: np.ndarray  # uint8 (y, x)
    nan_ratio: np.ndarray  # float32 (y, x); NaN when unknown (a mask read from a file without it)
    source: str
    # uint8 (y, x), 1 = north pole hole; None when the source says nothing about it (a mask
    # file from before the pole hole: the builder derives it from the file's land, see
    # `detect_pole_hole`).
    pole_hole: np.ndarray | None = field(default=None)


def check_threshold(threshold: float) -> float:
    """Return the threshold when it is a share in (0, 1]; BadInput otherwise."""
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise BadInput(f"mask threshold must be in (0, 1], got {threshold!r}")
    return float(threshold)


def ratio_from_counts(missing, days: int):
    """Share of `days` observed days on which a cell was NaN, from its NaN count (float32)."""
    if days == 0:
        return np.full(missing.shape, np.nan, np.float32)
    return (missing / np.float64(days)).astype(np.float32)


def add_missing(counts: np.ndarray, block: np.ndarray, observed: np.ndarray) -> None:
    """Add to int32 `counts` (y, x) on how many observed days of a (time, y, x) block each
    cell is NaN: the builder tallies the mask's counts as it ingests, one pass per block."""
    _add_missing(block, np.asarray(observed, np.bool_), counts)


@njit(nogil=True, cache=True)
def _add_missing(block, observed, counts):
    for t in range(block.shape[0]):
        if observed[t]:
            for y in range(block.shape[1]):
                for x in range(block.shape[2]):
                    counts[y, x] += block[t, y, x] != block[t, y, x]


def nan_ratio(raw: da.Array, observed: np.ndarray) -> da.Array:
    """Share of observed days on which each cell is NaN, as a lazy (y, x) float32 reduction."""
    import dask.array as da

    days = np.flatnonzero(observed)
    if days.size == 0:
        return da.full(raw.shape[1:], np.nan, dtype=np.float32, chunks=raw.chunksize[1:])
    return ratio_from_counts(da.isnan(raw[days]).sum(axis=0, dtype=np.int32), days.size)


def land_from_ratio(ratio: np.ndarray | da.Array, threshold: float) -> np.ndarray | da.Array:
    """1 where a cell is missing on at least `threshold` of the observed days."""
    return (ratio >= threshold).astype(np.uint8)


# --- the coastline shipped with sicube, and the pole hole ---------------------------------------

def coastline_land(x: np.ndarray, y: np.ndarray, south: bool = False) -> np.ndarray:
    """Shipped land (True) at cell centres `x`, `y` (metres): the 3.125 km cell containing
    each centre, the coarsening `archive.synthetic` uses for its archives (on a coarsened grid a
    centre can sit on a fine cell's edge; the cell above and right of it is taken)."""
    land, fx, fy = shipped_land(south)
    cell = float(fx[1] - fx[0])
    col = np.floor((np.asarray(x) - (fx[0] - cell / 2)) / cell + 1e-9).astype(int)
    row = np.floor((np.asarray(y) - (fy[0] - cell / 2)) / cell + 1e-9).astype(int)
    return land[np.ix_(np.clip(row, 0, fy.size - 1), np.clip(col, 0, fx.size - 1))]


def pole_cells(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the cells containing the pole (x = 0, y = 0): one, or up to four
    when the pole lies on cell edges (as on the product grids coarsened by an even step)."""
    def nearest(centres: np.ndarray) -> np.ndarray:
        half = abs(float(centres[1] - centres[0])) / 2 if centres.size > 1 else np.inf
        return np.flatnonzero(np.abs(centres) <= half + 1e-6)

    rows, cols = nearest(np.asarray(y, float)), nearest(np.asarray(x, float))
    return (np.repeat(rows, cols.size), np.tile(cols, rows.size))


def detect_pole_hole(always_missing: np.ndarray, x: np.ndarray, y: np.ndarray,
                     south: bool) -> np.ndarray:
    """The north pole hole (uint8 (y, x), 1 = hole): the cells missing on every observed day
    (`always_missing`) that are not land on the shipped coastline and are connected, side by
    side, to a cell containing the pole. All 0 on southern grids (the south pole is land)."""
    hole = np.zeros(always_missing.shape, np.uint8)
    if south:
        return hole
    candidate = np.asarray(always_missing, bool) & ~coastline_land(x, y, south=False)
    rows, cols = pole_cells(x, y)
    seeds = np.array([(r, c) for r, c in zip(rows, cols, strict=True) if candidate[r, c]],
                     np.int64).reshape(-1, 2)
    if seeds.size:
        _flood(np.ascontiguousarray(candidate), seeds, hole)
    return hole


@njit(nogil=True, cache=True)
def _flood(candidate, seeds, out):
    """Mark in `out` the cells of `candidate` 4-connected to any seed (a stack, no recursion)."""
    ny, nx = candidate.shape
    stack = [(np.int64(0), np.int64(0)) for _ in range(0)]
    for k in range(seeds.shape[0]):
        stack.append((seeds[k, 0], seeds[k, 1]))
    while stack:
        r, c = stack.pop()
        if r < 0 or r >= ny or c < 0 or c >= nx or out[r, c] or not candidate[r, c]:
            continue
        out[r, c] = 1
        stack.append((r + 1, c))
        stack.append((r - 1, c))
        stack.append((r, c + 1))
        stack.append((r, c - 1))


def pole_hole_from_land(land: np.ndarray, x: np.ndarray, y: np.ndarray,
                        south: bool) -> np.ndarray:
    """The pole hole of a mask that calls it land (the original toolbox's masks): its land
    cells that the shipped coastline does not call land, connected to the pole."""
    return detect_pole_hole(np.asarray(land) > 0, x, y, south)


def load_mask(path: str | os.PathLike, grid: GridCoords,
              storage_options: dict | None = None) -> LandMask:
    """Read `land_mask` (and `nan_ratio` when present) from a NetCDF file or another cube.

    A cube may be any fsspec URL (with `storage_options`). Refuses a file without
    `land_mask` or on another grid than `grid`, naming it.
    """
    import xarray as xr

    text = str(path)
    if cube.is_cube(text, storage_options):
        ds = cube.open_cube(text, storage_options=storage_options)
    elif Path(text).is_file():
        try:
            ds = xr.open_dataset(text)
        except (OSError, ValueError) as err:
            raise BadInput(f"--mask {text}: cannot be read as NetCDF ({err})") from err
    else:
        raise BadInput(f"--mask {text}: no such mask file or cube")
    with ds:
        if cube.LAND not in ds:
            raise BadInput(f"--mask {text}: has no {cube.LAND!r} variable")
        land = ds[cube.LAND]
        coords = GridCoords(np.asarray(ds["x"].values, np.float64),
                            np.asarray(ds["y"].values, np.float64))
        if land.dims != ("y", "x") or not coords.same_as(grid):
            raise BadInput(f"--mask {text}: its grid {land.shape} does not match the cube's "
                           f"{grid.shape}")
        ratio = (ds[cube.NAN_RATIO].values.astype(np.float32) if cube.NAN_RATIO in ds
                 else np.full(grid.shape, np.nan, np.float32))
        hole = ((ds[cube.POLE_HOLE].values > 0).astype(np.uint8) if cube.POLE_HOLE in ds
                else None)
        return LandMask((land.values > 0).astype(np.uint8), ratio, text, hole)


def export_mask(store: str | os.PathLike, output: str | os.PathLike,
                threshold: float | None = None, *,
                allow_incomplete: bool = False,
                storage_options: dict | None = None) -> tuple[Path, float]:
    """Write the cube's mask as the original toolbox's NetCDF (land_mask uint8, nan_ratio float32).

    With `threshold`, land_mask is recomputed from the cube's nan_ratio. Returns the path
    and the share of land cells. An unfinished cube (its mask may not be computed yet) is
    refused unless `allow_incomplete`. `store` is a path or any fsspec URL (with
    `storage_options`).
    """
    import xarray as xr

    ds = cube.open_cube(store, allow_incomplete=allow_incomplete,
                        storage_options=storage_options)
    output = Path(output)
    if not output.parent.is_dir():
        why = "is not a folder" if output.parent.exists() else "does not exist"
        raise BadInput(f"--output {output}: folder {output.parent} {why}")
    ratio = ds[cube.NAN_RATIO].load()
    record = CubeRecord.from_attrs(ds)
    if threshold is None:
        land = ds[cube.LAND].load()
        threshold = np.nan if record.mask_threshold is None else record.mask_threshold
    else:
        land = land_from_ratio(ratio, check_threshold(threshold))
    if cube.POLE_HOLE in ds:
        hole = ds[cube.POLE_HOLE].load()
        land = (land * (1 - hole)).astype(np.uint8)  # the pole hole stays ocean
    # land_mask's own attributes only: arithmetic carries its operands' (pole_hole's comment).
    land.attrs = dict(cube.ATTRS[cube.LAND])
    variables = {cube.LAND: land, cube.NAN_RATIO: ratio}
    if cube.POLE_HOLE in ds:
        variables[cube.POLE_HOLE] = hole
    out = xr.Dataset(
        variables,
        coords={"x": ds["x"], "y": ds["y"], cube.GRID_MAPPING: ds[cube.GRID_MAPPING]},
        attrs={"Conventions": "CF-1.9", "title": "land mask from NaN frequency (sicube)",
               "threshold": float(threshold),
               cube.MASK_SPAN: record.mask_span or "",
               "source_cube": str(store),
               "history": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%S+00:00}: "
                          f"sicube mask of {store}"},
    )
    for name in variables:
        out[name].encoding = {"zlib": True, "complevel": 4}
    for name in (cube.LAND, cube.POLE_HOLE, "x", "y"):  # CF: no fill value on coordinates
        if name in out:
            out[name].encoding["_FillValue"] = None
    try:
        with atomic_file(output) as tmp:
            out.to_netcdf(tmp, engine="netcdf4")
    except OSError as err:  # netCDF4's error names no file: name the one asked for
        raise OSError(err.errno, err.strerror or str(err), str(output)) from None
    return output, float(land.mean())
