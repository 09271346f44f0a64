"""The spatiotemporal Gaussian gap fill (docs/cube-format.md): oracle, NumPy and Dask wrappers.

Rule: a missing (NaN) cell (t, y, x) gets ``Σ w·v / Σ w`` over the observed cells within
``|Δt| <= time_window``, ``|Δy|, |Δx| <= space_window`` (clipped at the array edges), with
``w = exp(-(Δy² + Δx² + alpha·Δt²) / (2·sigma²))``. Observed cells never change, only observed
cells are neighbours, and a cell whose ``Σ w <= 1e-6`` stays NaN.

Because ``w`` is a product of one factor per axis, the sums are a normalized convolution
``(K * (v·m)) / (K * m)`` with the truncated separable Gaussian ``K``, the observed mask ``m``
and zero padding: three 1-D passes instead of one 3-D window per cell. The kernel runs the
passes tile by tile so its buffers stay in cache, accumulates in float64 (the result stays
within float32 rounding of the float64 oracle), and skips tiles with nothing to fill.

Missing means NaN (ingest turns values outside [0, 100] into NaN before the fill).

Land (when a mask is given): land cells are never filled and keep their input value; an
observed value on a land cell is still an observation and counts as a neighbour (the source
data are NaN on land, so in practice land never contributes).

Hybrid method (the original's later variant, done deterministically): each cell's time series
is first interpolated linearly across runs of at most ``max_gap`` missing days that have an
observation on both sides; the Gaussian fill then runs on that array, the interpolated values
counting as neighbours. Interpolated cells are flagged FILLED. Under Dask the interpolation
gets a time halo of ``max_gap`` days, so it too gives the same result for any chunking.

The north pole hole (`pole_hole_ring`, `fill_pole_hole`, in `sicube.kernels.pole`, importable
from here too) is filled after the Gaussian fill by its own rule.

The kernel is also a NumPy gufunc, `gaussian_fill_gufunc` (core signature
``(t,y,x),(y,x),(),(),(),()->(t,y,x)``), for `xarray.apply_ufunc(..., dask="parallelized")`
and `dask.array.apply_gufunc` on arrays whose time, y and x are each one chunk. `gaussian_fill`'s
map_overlap path exchanges halos between chunks and fills each haloed block's core with the
kernel of its twin, `gaussian_block_gufunc` (the same kernel, told which cells are the
block's own; for arrays whose blocks come with their halo).

The compiled kernels are in `sicube.kernels.fill_kernel`. Nothing here reads or writes files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from sicube.errors import BadInput
from sicube.kernels.area import fixed_point_scale
from sicube.kernels.fill_kernel import (
    TILE,
    WEIGHT_SUM_MIN,
    axis_weights,
    fill_parallel,
    fill_serial,
    finish_core,
    interpolate_time,
    n_items,
)
from sicube.kernels.pole import fill_pole_hole as fill_pole_hole  # the builder imports it here
from sicube.kernels.pole import pole_hole_ring as pole_hole_ring
from sicube.params import FillParams, check_window  # FillParams: also importable from here

METHODS = ("gaussian", "hybrid")


# --- the oracle ---------------------------------------------------------------------------------


def reference_fill(
    array: np.ndarray, time_window: int, space_window: int, alpha: float, sigma: float
) -> np.ndarray:
    """Fill ``array`` by the module's rule, the slow obvious way (the tests' oracle).

    Returns a float64 array: observed cells as given, missing cells filled or left NaN.
    """
    return reference_weights(array, time_window, space_window, alpha, sigma)[0]


def reference_weights(
    array: np.ndarray, time_window: int, space_window: int, alpha: float, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's filled values and, per missing cell, its weight sum Σw (NaN elsewhere):
    `reference_fill` with what tells how near each cell was to the Σw threshold."""
    a = np.asarray(array, dtype=np.float64)
    nt, ny, nx = a.shape
    out = a.copy()
    weight_sum = np.full(a.shape, np.nan)
    tw, sw = time_window, space_window
    for t, y, x in zip(*np.nonzero(np.isnan(a)), strict=True):
        t0, t1 = max(0, t - tw), min(nt, t + tw + 1)
        y0, y1 = max(0, y - sw), min(ny, y + sw + 1)
        x0, x1 = max(0, x - sw), min(nx, x + sw + 1)
        window = a[t0:t1, y0:y1, x0:x1]
        dt, dy, dx = np.meshgrid(
            np.arange(t0, t1) - t, np.arange(y0, y1) - y, np.arange(x0, x1) - x, indexing="ij"
        )
        w = np.exp(-(dy**2 + dx**2 + alpha * dt**2) / (2.0 * sigma**2))
        observed = ~np.isnan(window)
        total = w[observed].sum()
        weight_sum[t, y, x] = total
        if total > WEIGHT_SUM_MIN:
            out[t, y, x] = (w[observed] * window[observed]).sum() / total
    return out, weight_sum


DEFAULT_METHOD = METHODS[0]
"""`gaussian_fill`'s default method."""
DEFAULT_MAX_GAP = 5
"""`gaussian_fill`'s default longest run of missing days the hybrid method interpolates."""


def is_dask(array: Any) -> bool:
    """True for a dask array (told apart without importing dask)."""
    return type(array).__module__.startswith("dask.") and hasattr(array, "chunks")


def _is_xarray(array: Any) -> bool:
    """Whether `array` is an xarray.DataArray (checked without importing xarray)."""
    return type(array).__module__.startswith("xarray.") and hasattr(array, "dims")


def _check_array(array: Any):
    if not is_dask(array):
        array = np.asarray(array)
    if array.ndim != 3:
        raise BadInput(f"array must be 3-D (time, y, x), got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInput(f"array must hold floating-point percent values, got dtype {array.dtype}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    return array


def _check_land(land_mask: Any, shape: tuple[int, ...]):
    if land_mask is None:
        return None
    if not is_dask(land_mask):
        land_mask = np.asarray(land_mask)
    if tuple(land_mask.shape) != tuple(shape[1:]):
        raise BadInput(
            f"land_mask must have the array's (y, x) shape {tuple(shape[1:])}, "
            f"got {tuple(land_mask.shape)}"
        )
    if not (land_mask.dtype == bool or np.issubdtype(land_mask.dtype, np.integer)):
        raise BadInput(f"land_mask must be boolean or integer (1 = land), got {land_mask.dtype}")
    return land_mask.astype(np.uint8)


# --- public API ---------------------------------------------------------------------------------


def gaussian_fill(
    array: Any,
    time_window: int = FillParams.time_window,
    space_window: int = FillParams.space_window,
    alpha: float = FillParams.alpha,
    sigma: float = FillParams.sigma,
    *,
    land_mask: Any = None,
    return_flags: bool = False,
    method: str = DEFAULT_METHOD,
    max_gap: int = DEFAULT_MAX_GAP,
) -> Any:
    """Fill the NaN gaps of a (time, y, x) percent array by the module's Gaussian rule.

    Parameters
    ----------
    array
        (time, y, x) floating-point values in percent on a calendar time axis, NaN = missing.
        A NumPy array is filled at once with numba threads; a Dask array gives a lazy Dask array
        with the same chunks (``map_overlap``-style halo, the same result for any chunking).
        An ``xarray.DataArray`` gives a DataArray with the same dims, coords, name and attrs
        (lazy when it is Dask-backed).
    time_window, space_window
        Half-widths of the window in days and in cells (defaults: :class:`FillParams`).
    alpha
        Weight of time distance against space distance (``w`` uses ``alpha·Δt²``).
    sigma
        Gaussian bandwidth in cells.
    land_mask
        Optional (y, x) boolean/uint8 mask, 1 = land: land cells keep their input value and
        get flag LAND; they are not filled.
    return_flags
        Also return the per-cell :class:`FillFlag` as uint8 (same type and chunks as the input).
    method
        ``"gaussian"`` or ``"hybrid"``: first interpolate linearly along time over runs of at
        most ``max_gap`` missing days bounded by observations on both sides, then Gaussian-fill
        what remains, using the interpolated values as neighbours.
    max_gap
        Longest run of missing days the hybrid method interpolates.

    Returns
    -------
    filled, or (filled, flags)
        ``filled`` is float32 (float64 for float64 input): observed cells unchanged, missing
        cells filled, NaN where no observed neighbour has weight (flag NO_NEIGHBOUR).
    """
    if _is_xarray(array):
        # Fill the data underneath and wrap it back: DataArray.copy(data=...) keeps dims,
        # coords, name and attrs, and a Dask-backed one stays lazy.
        out = gaussian_fill(array.data, time_window, space_window, alpha, sigma,
                            land_mask=land_mask, return_flags=return_flags, method=method,
                            max_gap=max_gap)
        if not return_flags:
            return array.copy(data=out)
        filled, flags = out
        wrapped_flags = array.copy(data=flags).rename("fill_flag")
        wrapped_flags.attrs = {}
        return array.copy(data=filled), wrapped_flags
    if _is_xarray(land_mask):
        land_mask = land_mask.data
    array = _check_array(array)
    params = FillParams(time_window, space_window, alpha, sigma)
    time_window, space_window = params.time_window, params.space_window
    alpha, sigma = params.alpha, params.sigma
    if method not in METHODS:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    max_gap = check_window(max_gap, "max_gap")
    land = _check_land(land_mask, array.shape)
    gt, gs = axis_weights(time_window, space_window, alpha, sigma)

    if is_dask(array):
        filled = _fill_dask(array, land, time_window, space_window, alpha, sigma, method, max_gap)
        if not return_flags:
            return filled
        import dask.array as da

        if land is not None:
            land = da.asarray(land).rechunk(array.chunks[1:])
            flags = da.map_blocks(_flags, array, filled, land, dtype=np.uint8)
        else:
            flags = da.map_blocks(_flags, array, filled, dtype=np.uint8)
        return filled, flags

    source = array
    if method == "hybrid" and max_gap > 0:
        source = interpolate_time(
            np.ascontiguousarray(array), *_land_args(land, array.shape), 0, array.shape[0], max_gap
        )
    filled = _fill_numpy(source, land, time_window, space_window, gt, gs)
    if not return_flags:
        return filled
    return filled, _flags(array, filled, land)


def _land_args(land: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """The kernel's land arguments: a (y, x) uint8 mask and whether it applies."""
    if land is None:
        return np.zeros((1, 1), np.uint8), False
    return np.ascontiguousarray(land, dtype=np.uint8), True


def _fill_numpy(
    v, land, tw, sw, gt, gs, parallel: bool = True, tile: tuple[int, int] = TILE
) -> np.ndarray:
    """Gaussian-fill a whole NumPy array, in numba threads unless ``parallel`` is False."""
    import numba

    v = np.ascontiguousarray(v)
    core = (0, v.shape[0], 0, v.shape[1], 0, v.shape[2])
    land_arr, has_land = _land_args(land, v.shape)
    if not parallel or v.size == 0:
        return fill_serial(v, land_arr, has_land, core, tile, tw, sw, gt, gs)
    n_groups = max(1, min(int(n_items(core, tile)), 8 * numba.get_num_threads()))
    # Allocated by NumPy, which asks the OS for huge pages for a large array: numba's own
    # allocation gets 4 KiB pages, whose first writes cost about as much as copying the block.
    out = np.empty(v.shape, v.dtype)
    fill_parallel(v, land_arr, has_land, core, tile, tw, sw, gt, gs, n_groups, out)
    return out


def _flags(source: np.ndarray, filled: np.ndarray, land: np.ndarray | None = None) -> np.ndarray:
    """Per-cell FillFlag from the input, the fill and the land mask."""
    source = np.ascontiguousarray(source)
    core = (0, source.shape[0], 0, source.shape[1], 0, source.shape[2])
    scratch = np.empty(source.shape, np.float32)
    return finish_core(source, np.ascontiguousarray(filled), _full_land(land, source.shape),
                        core, scratch, _NO_WEIGHTS, 1.0)[0]


def _full_land(land: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A (y, x) uint8 land mask of the block's shape; all sea when there is none."""
    if land is None:
        return np.zeros(shape[1:], np.uint8)
    return _land_args(land, shape)[0]


_NO_WEIGHTS = np.zeros((0, 0))  # finish_core: no cell areas, no extent and area


def fill_fraction_block(
    block: np.ndarray,
    land: np.ndarray,
    core: tuple[int, int, int, int, int, int],
    time_window: int,
    space_window: int,
    alpha: float,
    sigma: float,
    cell_km2: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The cube builder's unit of work: fill a block's core, then finish it for the cube.

    ``block`` is (time, y, x) percent with its halo, ``land`` its (y, x) mask (1 = land) and
    ``core = (t0, t1, y0, y1, x0, x1)`` the region to produce, in block coordinates. Returns
    the core's ``sea_ice_conc`` (fraction; missing and land 0), its ``fill_flag``, each
    day's number of cells with each flag ((t, len(FillFlag))) and, given ``cell_km2`` (the
    core's cell areas, km²), each day's sea-ice extent and area ((t, 2) km², as
    `sicube.kernels.area.extent_area` defines them) summed while the fraction is written; else None.
    Fill, final steps and flags in two passes, no temporaries.
    """
    gt, gs = axis_weights(time_window, space_window, alpha, sigma)
    block = np.ascontiguousarray(block, dtype=np.float32)
    land_arr = _full_land(land, block.shape)  # the fill reads it only when a mask is given
    filled = fill_serial(block, land_arr, land is not None, core, TILE, time_window,
                          space_window, gt, gs)
    weights = _NO_WEIGHTS if cell_km2 is None else np.ascontiguousarray(cell_km2, np.float64)
    scale = 1.0 if cell_km2 is None else fixed_point_scale(weights)
    flags, counts, sums = finish_core(block, filled, land_arr, core, filled, weights, scale)
    return filled, flags, counts, None if cell_km2 is None else sums


# --- Dask ---------------------------------------------------------------------------------------


def merge_thin_chunks(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Chunks along one axis merged until each holds at least ``depth`` cells.

    Dask's halo exchange only reaches the next chunk, so a chunk thinner than the halo is merged
    with its neighbours first (and the result is split back to the caller's chunks).
    """
    if depth == 0 or all(c >= depth for c in chunks):
        return tuple(chunks)
    merged: list[int] = []
    current = 0
    for c in chunks:
        current += c
        if current >= depth:
            merged.append(current)
            current = 0
    if current:
        if merged:
            merged[-1] += current
        else:
            merged.append(current)
    return tuple(merged)


def halo_layout(chunks: tuple[tuple[int, ...], ...],
                depth: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """The chunks a haloed map works on (thin ones merged) and the halo depth per axis.

    Along an axis held in one chunk there is nothing to exchange: its depth is 0.
    """
    merged = tuple(merge_thin_chunks(c, d) for c, d in zip(chunks, depth, strict=True))
    return merged, tuple(0 if len(c) == 1 else d for c, d in zip(merged, depth, strict=True))


def core_in_block(location: tuple[int, ...], core_shape: tuple[int, ...],
                  depth: tuple[int, ...]) -> tuple[int, ...]:
    """``(start, stop)`` per axis, flattened, of a block's core inside the block with its halo.

    The first block along an axis has no halo before it (nothing lies beyond the array's edge).
    """
    core: list[int] = []
    for where, size, d in zip(location, core_shape, depth, strict=True):
        low = d if where > 0 else 0
        core += [low, low + size]
    return tuple(core)


def _with_halo(func, x, depth: tuple[int, ...], land, **kwargs):
    """Apply ``func(block, land_block, core, **kwargs)`` to ``x`` with a halo.

    ``func`` gets each block of ``x`` widened by up to ``depth`` cells per side (less at the
    array edges, where the cells beyond count as missing) and ``core``, where the block's own
    cells lie in it (see `core_in_block`); it returns the core. The result has the chunks of
    ``x``.
    """
    import dask.array as da

    chunks = x.chunks
    merged, depth = halo_layout(chunks, depth)
    xm = x.rechunk(merged) if merged != chunks else x
    xo = da.overlap.overlap(xm, depth=dict(enumerate(depth)), boundary="none")
    args = [xo]
    if land is not None:
        land = da.asarray(land).rechunk(merged[1:])
        args.append(da.overlap.overlap(land, depth={0: depth[1], 1: depth[2]}, boundary="none"))

    def run(block, land_block=None, block_info=None):
        where, shape = block_info[None]["chunk-location"], block_info[None]["chunk-shape"]
        return func(block, land_block, core_in_block(where, shape, depth), **kwargs)

    out = da.map_blocks(run, *args, chunks=merged, dtype=x.dtype, meta=np.empty((0, 0, 0), x.dtype))
    return out.rechunk(chunks) if merged != chunks else out


def _gaussian_block(block, land_block, core, tw, sw, gt, gs):
    """One haloed block's core, filled by the serial kernel the block gufunc wraps
    (`gaussian_block_gufunc` gives the same core) with the axis weights `gt`, `gs`: called
    directly, the core is all that is written and a block without land reads no land
    (`bench_fill.py`: through the gufunc, with its full-block output and all-sea land, the
    Dask fill took 1.9x as long)."""
    land_arr, has_land = _land_args(land_block, block.shape)
    return fill_serial(np.ascontiguousarray(block), land_arr, has_land,
                       tuple(int(c) for c in core), TILE, tw, sw, gt, gs)


def _interpolate_block(block, land_block, core, max_gap):
    land_arr, has_land = _land_args(land_block, block.shape)
    out = interpolate_time(np.ascontiguousarray(block), land_arr, has_land, core[0], core[1],
                            max_gap)
    return out[:, core[2]:core[3], core[4]:core[5]]


def _fill_dask(x, land, tw, sw, alpha, sigma, method, max_gap):
    """The lazy Dask version of the fill; every haloed block's core filled by the kernel."""
    if method == "hybrid" and max_gap > 0:
        x = _with_halo(_interpolate_block, x, (max_gap, 0, 0), land, max_gap=max_gap)
    gt, gs = axis_weights(tw, sw, alpha, sigma)  # once, not per block
    return _with_halo(_gaussian_block, x, (tw, sw, sw), land, tw=tw, sw=sw, gt=gt, gs=gs)


# --- the kernel as a NumPy generalized ufunc ----------------------------------------------------

GUFUNC_LAYOUT = "(t,y,x),(y,x),(),(),(),()->(t,y,x)"
"""Core signature of `gaussian_fill_gufunc`: array, land, time_window, space_window, alpha,
sigma -> filled."""

BLOCK_GUFUNC_LAYOUT = "(t,y,x),(y,x),(c),(),(),(),()->(t,y,x)"
"""Core signature of `gaussian_block_gufunc`: the same with ``core`` (6 bounds) after land."""


@njit(nogil=True, cache=True)
def _gufunc_body(array, land, core, time_window, space_window, alpha, sigma, out):
    """Fill the ``core`` region (t0, t1, y0, y1, x0, x1) of one array into ``out``; the cells
    outside the core are copied (they are the halo a Dask block brings along)."""
    tw, sw = np.int64(time_window), np.int64(space_window)
    gt, gs = axis_weights(tw, sw, alpha, sigma)  # the weights of every other path, bit for bit
    v = np.ascontiguousarray(array)
    ct0, ct1, cy0, cy1, cx0, cx1 = core[0], core[1], core[2], core[3], core[4], core[5]
    filled = fill_serial(v, np.ascontiguousarray(land), True, (ct0, ct1, cy0, cy1, cx0, cx1),
                          TILE, tw, sw, gt, gs)
    if ct1 - ct0 < v.shape[0] or cy1 - cy0 < v.shape[1] or cx1 - cx0 < v.shape[2]:
        out[:] = v
    out[ct0:ct1, cy0:cy1, cx0:cx1] = filled


def _gufunc_signatures(with_core: bool) -> list:
    """float32 and float64 arrays, uint8 land; the block gufunc takes int64 core bounds too."""
    from numba import float32, float64, int64, uint8, void

    core = [int64[:]] if with_core else []
    return [void(f[:, :, :], uint8[:, :], *core, int64, int64, float64, float64, f[:, :, :])
            for f in (float32, float64)]


def _make_gufunc():
    """Compile the whole-array gufunc, cached on disk by numba."""
    from numba import guvectorize

    @guvectorize(_gufunc_signatures(with_core=False), GUFUNC_LAYOUT, nopython=True, cache=True)
    def gaussian_fill_gufunc(array, land, time_window, space_window, alpha, sigma, out):
        nt, ny, nx = array.shape
        core = np.array([0, nt, 0, ny, 0, nx], np.int64)
        _gufunc_body(array, land, core, time_window, space_window, alpha, sigma, out)

    gaussian_fill_gufunc.__doc__ = _GUFUNC_DOC
    return gaussian_fill_gufunc


def _make_block_gufunc():
    """Compile the haloed-block gufunc that `gaussian_fill`'s map_overlap path calls per block."""
    from numba import guvectorize

    @guvectorize(_gufunc_signatures(with_core=True), BLOCK_GUFUNC_LAYOUT, nopython=True, cache=True)
    def gaussian_block_gufunc(array, land, core, time_window, space_window, alpha, sigma, out):
        _gufunc_body(array, land, core, time_window, space_window, alpha, sigma, out)

    gaussian_block_gufunc.__doc__ = _BLOCK_GUFUNC_DOC
    return gaussian_block_gufunc


_GUFUNC_DOC = """The Gaussian fill's block kernel as a NumPy gufunc, core signature
``(t,y,x),(y,x),(),(),(),()->(t,y,x)``: ``gaussian_fill_gufunc(array, land, time_window,
space_window, alpha, sigma)`` (land uint8/bool, 1 = never filled; all zeros for none).

For `xarray.apply_ufunc(..., dask="parallelized")` and `dask.array.apply_gufunc`: leading
dimensions broadcast. A gufunc sees whole core dimensions, so under Dask time, y and x must
each be one chunk; a chunked cube needs `gaussian_fill`, whose map_overlap path exchanges the
halo between chunks and fills each haloed block's core as `gaussian_block_gufunc` does. No
checks of the parameters here (`FillParams` does them); the hybrid method and flags are
`gaussian_fill`'s.
"""

_BLOCK_GUFUNC_DOC = """`gaussian_fill_gufunc` for one block with its halo: core signature
``(t,y,x),(y,x),(c),(),(),(),()->(t,y,x)``, ``core`` = (t0, t1, y0, y1, x0, x1), the block's
own cells. Only the core is filled (the halo only lends neighbours); the rest of the output
is the input. `gaussian_fill`'s map_overlap path calls it for every block.
"""

_GUFUNCS: dict[str, Any] = {}
_MAKERS = {"gaussian_fill_gufunc": _make_gufunc, "gaussian_block_gufunc": _make_block_gufunc}


def __getattr__(name: str):
    """Build the gufuncs on first use, so that importing the module compiles nothing."""
    if name in _MAKERS:
        if name not in _GUFUNCS:
            _GUFUNCS[name] = _MAKERS[name]()
        return _GUFUNCS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
