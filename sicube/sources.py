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
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

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


def read_day(path: str | os.PathLike, expected: GridCoords | None = None,
             out: np.ndarray | None = None) -> DayField:
    """Read and validate one daily file; values outside [0, 100] become NaN (and are counted).

    Raises BadSourceFile naming the file when it is not netCDF, lacks `z`/`x`/`y`, cannot
    be decoded (truncated) or lies on another grid than `expected`. `out`, a float32 array
    of the grid's shape, receives the values (saves a copy when stacking days).
    """
    path = Path(path)
    grid, epsg = read_grid(path, expected)
    if out is None:
        out = np.empty(grid.shape, np.float32)
    elif out.shape != grid.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {grid.shape}")
    if not _decode_fast(path, out):
        _decode_netcdf(path, out)
    out_of_range = int(_screen_range(out))
    if out_of_range:
        log.warning("%s: %d cells outside [0, 100] treated as missing", path.name, out_of_range)
    return DayField(z=out, grid=grid, epsg=epsg, out_of_range=out_of_range)


def _decode_netcdf(path: Path, out: np.ndarray) -> None:
    """`z` through netCDF-C: any layout, one thread at a time."""
    with NETCDF_LOCK, _open(path) as nc:
        var = nc.variables[products.CONC_VAR]
        var.set_auto_mask(False)  # NaN is the fill value; keep raw bits, no masked arrays
        try:
            out[...] = var[:]
        except (OSError, RuntimeError, IndexError) as err:
            raise BadSourceFile(f"{path.name}: data cannot be read ({err})") from err


_H5Z_DEFLATE, _H5Z_SHUFFLE = 1, 2  # HDF5 filter ids


def _decode_fast(path: Path, out: np.ndarray) -> bool:
    """Decode `z` from its raw HDF5 chunks in this thread; False when it is stored otherwise.

    netCDF-C and HDF5 decode one thread at a time, which made decoding a build's longest
    serial step. Files stored the common way (float32, chunked, deflate with or without
    shuffle, as netCDF-4 writes them and the sample archive mimics) are read as raw chunks
    under h5py's lock, then inflated with zlib (which releases the GIL) and unshuffled here,
    so several days decode at once. Anything else goes through netCDF-C.
    """
    chunks = _raw_chunks(path, out.shape)
    if chunks is None:
        return False
    chunk_shape, shuffled, pieces = chunks
    cy, cx = chunk_shape
    bits = out.view(np.uint32)
    for (y0, x0), data in pieces:
        try:  # bufsize: one allocation of the known size instead of growing and joining
            raw = zlib.decompress(data, bufsize=4 * cy * cx)
        except zlib.error as err:
            raise BadSourceFile(f"{path.name}: data cannot be read ({err})") from err
        if len(raw) != 4 * cy * cx:
            raise BadSourceFile(f"{path.name}: data cannot be read (chunk at {y0}, {x0} "
                                f"holds {len(raw)} bytes, expected {4 * cy * cx})")
        h, w = min(cy, out.shape[0] - y0), min(cx, out.shape[1] - x0)
        _place_chunk(np.frombuffer(raw, np.uint8), cy, cx, shuffled,
                     bits[y0:y0 + h, x0:x0 + w])
    return True


def _raw_chunks(path: Path, shape: tuple[int, int]):
    """(chunk shape, shuffled?, [(offset, bytes)]) of `z` when stored the common way; or None."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            var = h5.get(products.CONC_VAR)
            if (not isinstance(var, h5py.Dataset) or var.shape != shape or var.chunks is None
                    or var.dtype != np.dtype("<f4") or sys.byteorder != "little"):
                return None
            plist = var.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            if filters not in ([_H5Z_DEFLATE], [_H5Z_SHUFFLE, _H5Z_DEFLATE]):
                return None
            pieces = []
            for y0 in range(0, shape[0], var.chunks[0]):
                for x0 in range(0, shape[1], var.chunks[1]):
                    skipped, data = var.id.read_direct_chunk((y0, x0))
                    if skipped:  # a filter was not applied to this chunk
                        return None
                    pieces.append(((y0, x0), data))
            return var.chunks, filters[0] == _H5Z_SHUFFLE, pieces
    except (OSError, KeyError, ValueError, RuntimeError):
        return None  # unreadable or unallocated chunks: netCDF-C decides (and explains)


@njit(nogil=True, cache=True)
def _place_chunk(raw, cy, cx, shuffled, dest):
    """Write a decompressed (cy, cx) float32 chunk, byte-shuffled or not, into `dest` (as bits)."""
    n = cy * cx
    for y in range(dest.shape[0]):
        for x in range(dest.shape[1]):
            i = y * cx + x
            if shuffled:
                b0, b1, b2, b3 = raw[i], raw[n + i], raw[2 * n + i], raw[3 * n + i]
            else:
                b0, b1, b2, b3 = raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]
            dest[y, x] = (np.uint32(b0) | (np.uint32(b1) << 8) | (np.uint32(b2) << 16)
                          | (np.uint32(b3) << 24))


@njit(nogil=True, cache=True)
def _screen_range(z):
    """Set values outside [0, 100] to NaN in place; how many there were."""
    bad = 0
    for y in range(z.shape[0]):
        for x in range(z.shape[1]):
            v = z[y, x]
            if v < 0 or v > 100:
                z[y, x] = np.nan
                bad += 1
    return bad


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
