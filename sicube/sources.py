"""Daily source files on disk: find them, validate them, read them.

The downloader validates with `check_day_file` before it renames a download into
place; the cube builder reads with `read_day`. Both refuse anything that is not an
AMSR2 daily grid on the expected coordinates, naming the file and the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sicube import products
from sicube.errors import BadSourceFile

log = logging.getLogger(__name__)

# netCDF-C and HDF5 are not thread-safe: one thread at a time inside them, whoever calls.
NETCDF_LOCK = threading.Lock()
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NETCDF3_MAGIC = b"CDF"


@dataclass(frozen=True)
class GridCoords:
    """The x and y cell centres (metres, ascending) of a daily grid."""

    x: np.ndarray
    y: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx)."""
        return (self.y.size, self.x.size)

    def same_as(self, other: GridCoords) -> bool:
        """True when both grids have the same cells (to a millimetre)."""
        return (
            self.shape == other.shape
            and np.allclose(self.x, other.x, rtol=0, atol=1e-3)
            and np.allclose(self.y, other.y, rtol=0, atol=1e-3)
        )


@dataclass(frozen=True)
class DayField:
    """One day's concentration in percent (NaN = missing) with its grid and CRS."""

    z: np.ndarray
    grid: GridCoords
    epsg: int | None
    out_of_range: int  # cells outside [0, 100] that were set to NaN


def find_day_files(directory: str | os.PathLike, grid: str | None = None) -> dict[dt.date, Path]:
    """Map each day to its product file found anywhere below `directory` (by file name).

    Like the original toolbox, the folder layout does not matter; when a day appears
    twice the first path in sorted order wins and the other is logged.
    """
    found: dict[dt.date, Path] = {}
    for path in sorted(Path(directory).rglob("*.nc")):
        parsed = products.parse_file_name(path.name)
        if parsed is None or (grid is not None and parsed[0] != grid):
            continue
        day = parsed[1]
        if day in found:
            log.warning("%s: day %s already found at %s; ignored", path, day, found[day])
            continue
        found[day] = path
    return found


def _open(path: Path):
    import netCDF4

    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head.startswith((_HDF5_MAGIC, _NETCDF3_MAGIC)):
        html = " (it looks like an HTML page)" if head.lstrip().startswith(b"<") else ""
        raise BadSourceFile(f"{path.name}: not a netCDF file{html}")
    try:
        return netCDF4.Dataset(path, "r")
    except OSError as err:
        raise BadSourceFile(f"{path.name}: cannot be opened as netCDF ({err})") from err


def _grid_of(nc, path: Path) -> GridCoords:
    for name in (products.CONC_VAR, "x", "y"):
        if name not in nc.variables:
            raise BadSourceFile(f"{path.name}: has no variable {name!r}")
    if nc.variables[products.CONC_VAR].dimensions != ("y", "x"):
        raise BadSourceFile(f"{path.name}: z has dimensions "
                            f"{nc.variables[products.CONC_VAR].dimensions}, expected ('y', 'x')")
    x = np.asarray(nc.variables["x"][:], dtype=np.float64)
    y = np.asarray(nc.variables["y"][:], dtype=np.float64)
    if x.size < 2 or y.size < 2 or np.any(np.diff(x) <= 0) or np.any(np.diff(y) <= 0):
        raise BadSourceFile(f"{path.name}: x and y must be ascending cell centres")
    return GridCoords(x, y)


def _epsg_of(nc) -> int | None:
    if "polar_stereographic" not in nc.variables:
        return None
    gm = nc.variables["polar_stereographic"]
    return products.epsg_from_attrs({name: gm.getncattr(name) for name in gm.ncattrs()})


def _check_grid(found: GridCoords, expected: GridCoords | None, path: Path) -> None:
    if expected is not None and not found.same_as(expected):
        raise BadSourceFile(
            f"{path.name}: grid {found.shape[0]} x {found.shape[1]} does not match the expected "
            f"{expected.shape[0]} x {expected.shape[1]} cells (or its coordinates differ)"
        )


def read_day(path: str | os.PathLike, expected: GridCoords | None = None) -> DayField:
    """Read and validate one daily file; values outside [0, 100] become NaN (and are counted).

    Raises BadSourceFile naming the file when it is not netCDF, lacks `z`/`x`/`y`, cannot
    be decoded (truncated) or lies on another grid than `expected`.
    """
    path = Path(path)
    with NETCDF_LOCK, _open(path) as nc:
        grid = _grid_of(nc, path)
        _check_grid(grid, expected, path)
        var = nc.variables[products.CONC_VAR]
        var.set_auto_mask(False)  # NaN is the fill value; keep raw bits, no masked arrays
        try:
            z = np.asarray(var[:], dtype=np.float32)
        except (OSError, RuntimeError, IndexError) as err:
            raise BadSourceFile(f"{path.name}: data cannot be read ({err})") from err
        epsg = _epsg_of(nc)
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(z) & ((z < 0) | (z > 100))
    out_of_range = int(bad.sum())
    if out_of_range:
        z = z.copy()
        z[bad] = np.nan
        log.warning("%s: %d cells outside [0, 100] treated as missing", path.name, out_of_range)
    return DayField(z=z, grid=grid, epsg=epsg, out_of_range=out_of_range)


def check_day_file(path: str | os.PathLike, expected: GridCoords | None = None,
                   full: bool = True) -> GridCoords:
    """Validate a daily file and return its grid.

    `full` decodes all data (catches damage anywhere in the file); without it only the
    structure is checked (netCDF, `z`/`x`/`y`, the grid), for callers that decode next anyway.
    """
    if full:
        return read_day(path, expected).grid
    grid, _ = read_grid(path, expected)
    return grid


def read_grid(path: str | os.PathLike,
              expected: GridCoords | None = None) -> tuple[GridCoords, int | None]:
    """The grid and EPSG code a daily file declares, checking its structure, not its data."""
    path = Path(path)
    with NETCDF_LOCK, _open(path) as nc:
        grid, epsg = _grid_of(nc, path), _epsg_of(nc)
    _check_grid(grid, expected, path)
    return grid, epsg


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (provenance and the download manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
