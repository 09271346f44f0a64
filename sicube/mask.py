"""Land mask from NaN frequency: compute it, reuse one from a file or cube, export it.

A cell that is missing on at least `threshold` of the observed days is land (the
original toolbox's create_mask.py). Only observed days count: a day with no file says
nothing about land.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from numba import njit

from sicube import cube
from sicube.errors import BadInput
from sicube.sources import GridCoords

DEFAULT_THRESHOLD = 0.85


@dataclass
class LandMask:
    """A land mask (1 = land) with the NaN frequency it came from, on the cube's grid."""

    land_mask: np.ndarray  # uint8 (y, x)
    nan_ratio: np.ndarray  # float32 (y, x); NaN when unknown (a mask read from a file without it)
    source: str


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
    days = np.flatnonzero(observed)
    if days.size == 0:
        return da.full(raw.shape[1:], np.nan, dtype=np.float32, chunks=raw.chunksize[1:])
    return ratio_from_counts(da.isnan(raw[days]).sum(axis=0, dtype=np.int32), days.size)


def land_from_ratio(ratio: np.ndarray | da.Array, threshold: float) -> np.ndarray | da.Array:
    """1 where a cell is missing on at least `threshold` of the observed days."""
    return (ratio >= threshold).astype(np.uint8)


def load_mask(path: str | os.PathLike, grid: GridCoords) -> LandMask:
    """Read `land_mask` (and `nan_ratio` when present) from a NetCDF file or another cube.

    Refuses a file without `land_mask` or on another grid than `grid`, naming it.
    """
    text = str(path)
    if cube.is_cube(text):
        ds = cube.open_cube(text)
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
        return LandMask((land.values > 0).astype(np.uint8), ratio, text)


def export_mask(store: str | os.PathLike, output: str | os.PathLike,
                threshold: float | None = None, *,
                allow_incomplete: bool = False) -> tuple[Path, float]:
    """Write the cube's mask as the original toolbox's NetCDF (land_mask uint8, nan_ratio float32).

    With `threshold`, land_mask is recomputed from the cube's nan_ratio. Returns the path
    and the share of land cells. An unfinished cube (its mask may not be computed yet) is
    refused unless `allow_incomplete`.
    """
    ds = cube.open_cube(store, allow_incomplete=allow_incomplete)
    output = Path(output)
    if not output.parent.is_dir():
        why = "is not a folder" if output.parent.exists() else "does not exist"
        raise BadInput(f"--output {output}: folder {output.parent} {why}")
    ratio = ds[cube.NAN_RATIO].load()
    if threshold is None:
        land = ds[cube.LAND].load()
        threshold = ds.attrs.get("mask_threshold", np.nan)
    else:
        land = land_from_ratio(ratio, check_threshold(threshold))
    out = xr.Dataset(
        {cube.LAND: land.assign_attrs(cube.ATTRS[cube.LAND]),
         cube.NAN_RATIO: ratio},
        coords={"x": ds["x"], "y": ds["y"], cube.GRID_MAPPING: ds[cube.GRID_MAPPING]},
        attrs={"Conventions": "CF-1.8", "title": "land mask from NaN frequency (sicube)",
               "threshold": float(threshold),
               "mask_span": str(ds.attrs.get("mask_span", "")),
               "source_cube": str(store)},
    )
    for name in (cube.LAND, cube.NAN_RATIO):
        out[name].encoding = {"zlib": True, "complevel": 4}
    out[cube.LAND].encoding["_FillValue"] = None
    tmp = output.with_name(f".{output.name}.part")
    out.to_netcdf(tmp, engine="netcdf4")
    os.replace(tmp, output)
    return output, float(land.mean())
