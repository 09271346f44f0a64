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

from sicube.archive import products
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
    """One day's concentration in percent (NaN = missing, y ascending) with its grid and CRS."""

    z: np.ndarray
    grid: GridCoords
    crs: products.GridCRS
    out_of_range: int  # cells outside [0, 100] that were set to NaN

    @property
    def epsg(self) -> int | None:
        """EPSG code of the file's CRS, None when it has none."""
        return self.crs.epsg


@dataclass(frozen=True)
class _Layout:
    """What a file declares, before any data is decoded."""

    grid: GridCoords  # y ascending, whatever the file's order
    crs: products.GridCRS
    y_descending: bool  # rows are stored north to south: flipped on reading


def find_day_files(directory: str | os.PathLike, grid: str | None = None) -> dict[dt.date, Path]:
    """Map each day to its product file found anywhere below `directory` (by file name).

    Like the original toolbox, the folder layout does not matter; when a day appears
    twice the first path in sorted order wins and the other is logged.
    """
    found: dict[dt.date, Path] = {}
    # sorted by parts, Path's own order, compared as tuples (Path's `<` is slow by the 10,000)
    for path in sorted(Path(directory).rglob("*.nc"), key=_parts):
        parsed = products.parse_file_name(path.name)
        if parsed is None or (grid is not None and parsed[0] != grid):
            continue
        day = parsed[1]
        if day in found:
            log.warning("%s: day %s already found at %s; ignored", path, day, found[day])
            continue
        found[day] = path
    return found


def _parts(path: Path) -> tuple[str, ...]:
    return path.parts


def folder_grids(directory: str | os.PathLike) -> dict[str, int]:
    """How many product files of each grid lie anywhere below `directory` (by file name)."""
    counts: dict[str, int] = {}
    for path in Path(directory).rglob("*.nc"):
        parsed = products.parse_file_name(path.name)
        if parsed is not None:
            counts[parsed[0]] = counts.get(parsed[0], 0) + 1
    return dict(sorted(counts.items()))


def check_file_header(path: Path, sensor: str = products.AUTO,
                      expected: GridCoords | None = None,
                      expected_crs: products.GridCRS | None = None,
                      ) -> tuple[GridCoords, products.GridCRS]:
    """The grid and CRS of a file a run is about to use, checked from its name and headers
    only (a few ms): BadSourceFile naming the file when it is not netCDF, lacks `z`/`x`/`y`,
    is truncated, lies on another grid or projection than `expected`/`expected_crs`, or is
    named as a day outside its sensor's record (or of another sensor than `sensor`)."""
    parts = products.file_name_parts(path.name)
    problem = products.record_problem(parts, sensor) if parts else "not a product file name"
    if problem:
        raise BadSourceFile(f"{path.name}: {problem}")
    return read_grid(path, expected, expected_crs)


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


def _grid_of(nc, path: Path) -> tuple[GridCoords, bool]:
    """The grid (y ascending) and whether the file stores y descending."""
    for name in (products.CONC_VAR, "x", "y"):
        if name not in nc.variables:
            raise BadSourceFile(f"{path.name}: has no variable {name!r}")
    if nc.variables[products.CONC_VAR].dimensions != ("y", "x"):
        raise BadSourceFile(f"{path.name}: z has dimensions "
                            f"{nc.variables[products.CONC_VAR].dimensions}, expected ('y', 'x')")
    x = np.asarray(nc.variables["x"][:], dtype=np.float64)
    y = np.asarray(nc.variables["y"][:], dtype=np.float64)
    if x.size < 2 or y.size < 2 or np.any(np.diff(x) <= 0):
        raise BadSourceFile(f"{path.name}: x must be ascending cell centres")
    # Bremen's files store y ascending (row 0 southernmost); GeoTIFF-like products store it
    # descending. Both are read south to north, so every day of a cube has one orientation.
    descending = bool(np.all(np.diff(y) < 0))
    if not descending and np.any(np.diff(y) <= 0):
        raise BadSourceFile(f"{path.name}: y must be monotonic cell centres")
    return GridCoords(x, y[::-1].copy() if descending else y), descending


def _grid_mapping_of(nc) -> tuple[str, dict] | None:
    """(name, attributes) of the variable `z`'s grid mapping, None when the file has none."""
    z = nc.variables[products.CONC_VAR]
    names = [str(getattr(z, "grid_mapping", "")).strip(), "polar_stereographic", "crs"]
    gm = next((nc.variables[n] for n in names if n and n in nc.variables), None)
    return None if gm is None else (gm.name, {a: gm.getncattr(a) for a in gm.ncattrs()})


def _crs_of(grid_mapping: tuple[str, dict] | None, path: Path,
            grid: GridCoords) -> products.GridCRS:
    """The CRS the file's grid mapping declares; without one, that of the product grid its
    shape and extent match (with a warning); BadSourceFile when neither tells."""
    if grid_mapping is not None:
        name, attrs = grid_mapping
        try:
            return products.GridCRS.from_attrs(attrs)
        except ValueError as err:
            raise BadSourceFile(f"{path.name}: grid mapping {name!r} cannot be read "
                                f"({err})") from err
    known = products.grid_of_coords(grid.x, grid.y)
    if known is None:
        raise BadSourceFile(f"{path.name}: no grid mapping, and its {grid.shape[0]} x "
                            f"{grid.shape[1]} grid is none of {', '.join(products.GRIDS)}: "
                            "its CRS is unknown")
    log.warning("%s: no grid mapping; taking EPSG:%d of grid %s from its shape and extent",
                path.name, known.epsg_hughes, known.name)
    return known.crs


def _check_grid(found: GridCoords, expected: GridCoords | None, path: Path) -> None:
    if expected is not None and not found.same_as(expected):
        raise BadSourceFile(
            f"{path.name}: grid {found.shape[0]} x {found.shape[1]} does not match the expected "
            f"{expected.shape[0]} x {expected.shape[1]} cells (or its coordinates differ)"
        )


def check_projection(found: products.GridCRS, expected: products.GridCRS | None,
                     path: str | os.PathLike) -> None:
    """BadSourceFile naming the file when its CRS is another projection or hemisphere than
    `expected`; an ellipsoid alone may differ (the caller records it)."""
    if expected is not None and not found.same_projection(expected):
        raise BadSourceFile(f"{Path(path).name}: CRS {found.name} is another projection than "
                            f"the expected {expected.name}")


def _layout(path: Path, expected: GridCoords | None,
            expected_crs: products.GridCRS | None) -> _Layout:
    with NETCDF_LOCK, _open(path) as nc:
        grid, descending = _grid_of(nc, path)
        grid_mapping = _grid_mapping_of(nc)
    # outside the lock: a CRS parse (pyproj) need not hold up the other files' reads
    crs = _crs_of(grid_mapping, path, grid)
    _check_grid(grid, expected, path)
    check_projection(crs, expected_crs, path)
    return _Layout(grid, crs, descending)


def read_day(path: str | os.PathLike, expected: GridCoords | None = None,
             out: np.ndarray | None = None,
             expected_crs: products.GridCRS | None = None) -> DayField:
    """Read and validate one daily file, y ascending; values outside [0, 100] become NaN
    (and are counted), packed integers are unscaled, their fill value is NaN.

    Raises BadSourceFile naming the file when it is not netCDF, lacks `z`/`x`/`y`, cannot
    be decoded (truncated), lies on another grid than `expected` or in another projection
    than `expected_crs`. `out`, a float32 array of the grid's shape, receives the values
    (saves a copy when stacking days).
    """
    path = Path(path)
    layout = _layout(path, expected, expected_crs)
    shape = layout.grid.shape
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    if not _decode_fast(path, out, layout.y_descending):
        _decode_netcdf(path, out, layout.y_descending)
    out_of_range = int(_screen_range(out))
    if out_of_range:
        log.warning("%s: %d cells outside [0, 100] treated as missing", path.name, out_of_range)
    return DayField(z=out, grid=layout.grid, crs=layout.crs, out_of_range=out_of_range)


def _decode_netcdf(path: Path, out: np.ndarray, flip: bool = False) -> None:
    """`z` through netCDF-C: any layout, one thread at a time."""
    with NETCDF_LOCK, _open(path) as nc:
        var = nc.variables[products.CONC_VAR]
        attrs = set(var.ncattrs())
        plain = (var.dtype == np.float32 and not attrs & {"scale_factor", "add_offset"}
                 and np.isnan(getattr(var, "_FillValue", np.nan)))
        try:
            if plain:  # NaN is the fill value: keep the raw bits, no masked arrays
                var.set_auto_mask(False)
                out[...] = var[:]
            else:  # packed or another fill value: netCDF unscales and masks, fill -> NaN
                var.set_auto_maskandscale(True)
                out[...] = np.ma.filled(var[:].astype(np.float32), np.nan)
        except (OSError, RuntimeError, IndexError) as err:
            raise BadSourceFile(f"{path.name}: data cannot be read ({err})") from err
    if flip:
        out[...] = out[::-1]  # numpy buffers the overlapping copy


_H5Z_DEFLATE, _H5Z_SHUFFLE = 1, 2  # HDF5 filter ids


def _decode_fast(path: Path, out: np.ndarray, flip: bool = False) -> bool:
    """Decode `z` from its raw HDF5 chunks in this thread; False when it is stored otherwise.

    netCDF-C and HDF5 decode one thread at a time, which made decoding a build's longest
    serial step. Files stored the common way (float32, chunked, deflate with or without
    shuffle: GDAL's one-row chunks as in the real archive, netCDF-4's default chunks) are
    located through the chunk index, read in one piece under h5py's lock, inflated with
    zlib (which releases the GIL) and unshuffled in one numba pass, so several days decode
    at once. Anything else goes through netCDF-C.
    """
    found = _raw_chunks(path, out.shape)
    if found is None:
        return False
    (cy, cx), shuffled, buffer, index = found
    size = 4 * cy * cx
    # Inflate a batch of chunks into a reused, cache-sized buffer, then place the batch in
    # one numba call: no per-chunk numba call, no fresh full-day buffer to fault in.
    per_batch = max(1, _BATCH_BYTES // size)
    scratch = np.empty(per_batch * size, np.uint8)
    view, dest, rows = memoryview(buffer), out.view(np.uint32), index.tolist()
    for first in range(0, len(rows), per_batch):
        batch = rows[first:first + per_batch]
        for j, (start, length, y0, x0) in enumerate(batch):
            try:  # bufsize: one allocation of the known size instead of growing and joining
                chunk = zlib.decompress(view[start:start + length], bufsize=size)
            except zlib.error as err:
                raise BadSourceFile(f"{path.name}: data cannot be read ({err})") from err
            if len(chunk) != size:
                raise BadSourceFile(f"{path.name}: data cannot be read (chunk at {y0}, {x0} "
                                    f"holds {len(chunk)} bytes, expected {size})")
            scratch[j * size:(j + 1) * size] = np.frombuffer(chunk, np.uint8)
        part = index[first:first + len(batch)]
        _place_chunks(scratch, part[:, 2], part[:, 3], cy, cx, shuffled, flip, dest)
    return True


# Measured on a full n3125 day (shared 2-core machine, best of 7): GDAL's 3584 one-row
# chunks decode in 0.10 s this way against 0.15 s inflating into one full-day buffer.
_BATCH_BYTES = 1 << 22


def _raw_chunks(path: Path, shape: tuple[int, int]):
    """When `z` is stored the common way: (chunk shape, shuffled?, the bytes spanning all
    chunks, int64 rows (start in those bytes, length, y0, x0)); else None.

    The chunk index is read once (HDF5's chunk iterator) and the chunks in one read: asking
    HDF5 for each of the 3584 one-row chunks of a full day separately costs more than
    inflating them.
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            var = h5.get(products.CONC_VAR)
            if (not isinstance(var, h5py.Dataset) or var.shape != shape or var.chunks is None
                    or var.dtype != np.dtype("<f4") or sys.byteorder != "little"
                    or {"scale_factor", "add_offset"} & set(var.attrs)
                    or not np.isnan(var.attrs.get("_FillValue", np.nan))):
                return None
            plist = var.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            if filters not in ([_H5Z_DEFLATE], [_H5Z_SHUFFLE, _H5Z_DEFLATE]):
                return None
            index = _chunk_index(var.id)
            cy, cx = var.chunks
            expected = -(-shape[0] // cy) * -(-shape[1] // cx)
            if len(index) != expected or any(mask for *_, mask in index):
                return None  # unwritten chunks or a skipped filter: netCDF-C decides
            table = np.array([row[:4] for row in index], np.int64).reshape(-1, 4)
            first = int(table[:, 0].min())
            span = int((table[:, 0] + table[:, 1]).max()) - first
            table[:, 0] -= first
        with open(path, "rb") as fh:
            fh.seek(first)
            buffer = fh.read(span)
        if len(buffer) != span:  # truncated file
            return None
        return (cy, cx), filters[0] == _H5Z_SHUFFLE, buffer, table
    except (OSError, KeyError, ValueError, RuntimeError):
        return None  # unreadable: netCDF-C decides (and explains)


def _chunk_index(dsid) -> list[tuple[int, int, int, int, int]]:
    """(file offset, stored size, y0, x0, filter mask) of every written chunk, in one pass."""
    index: list[tuple[int, int, int, int, int]] = []

    def visit(info) -> None:
        index.append((info.byte_offset, info.size, *info.chunk_offset, info.filter_mask))

    try:
        dsid.chunk_iter(visit)
    except (AttributeError, NotImplementedError):  # HDF5 < 1.12.3: one call per chunk
        for i in range(dsid.get_num_chunks()):
            visit(dsid.get_chunk_info(i))
    return index


@njit(nogil=True, cache=True)
def _place_chunks(raw, y0s, x0s, cy, cx, shuffled, flip, dest):
    """Write decompressed (cy, cx) float32 chunks, laid end to end in `raw`, byte-shuffled or
    not, into `dest` (as bits) at their offsets; `flip` stores rows bottom-up."""
    n = cy * cx
    ny, nx = dest.shape
    for k in range(y0s.size):
        base = 4 * n * k
        y0, x0 = y0s[k], x0s[k]
        h, w = min(cy, ny - y0), min(cx, nx - x0)
        for y in range(h):
            d = dest[ny - 1 - (y0 + y) if flip else y0 + y, x0:x0 + w]
            i = base + y * cx
            if shuffled:  # byte planes: all first bytes, then all second bytes, ...
                s0, s1 = raw[i:i + w], raw[i + n:i + n + w]
                s2, s3 = raw[i + 2 * n:i + 2 * n + w], raw[i + 3 * n:i + 3 * n + w]
                for x in range(w):
                    d[x] = (np.uint32(s0[x]) | (np.uint32(s1[x]) << 8)
                            | (np.uint32(s2[x]) << 16) | (np.uint32(s3[x]) << 24))
            else:
                s = raw[base + 4 * y * cx:base + 4 * (y * cx + w)]
                for x in range(w):
                    d[x] = (np.uint32(s[4 * x]) | (np.uint32(s[4 * x + 1]) << 8)
                            | (np.uint32(s[4 * x + 2]) << 16) | (np.uint32(s[4 * x + 3]) << 24))


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
    structure is checked (netCDF, `z`/`x`/`y`, the grid, the CRS), for callers that decode
    next anyway.
    """
    if full:
        return read_day(path, expected).grid
    grid, _ = read_grid(path, expected)
    return grid


def read_grid(path: str | os.PathLike, expected: GridCoords | None = None,
              expected_crs: products.GridCRS | None = None,
              ) -> tuple[GridCoords, products.GridCRS]:
    """The grid (y ascending) and CRS a daily file declares, checking its structure, not its
    data: BadSourceFile naming the file when the grid is not `expected` or the projection
    not that of `expected_crs` (an ellipsoid alone may differ)."""
    layout = _layout(Path(path), expected, expected_crs)
    return layout.grid, layout.crs


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (provenance and the download manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
