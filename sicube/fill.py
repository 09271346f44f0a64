"""The spatiotemporal Gaussian gap fill of SPEC section 4: oracle, numba kernel, Dask wrapper.

Rule: a missing (NaN) cell (t, y, x) gets ``Σ w·v / Σ w`` over the observed cells within
``|Δt| <= time_window``, ``|Δy|, |Δx| <= space_window`` (clipped at the array edges), with
``w = exp(-(Δy² + Δx² + alpha·Δt²) / (2·sigma²))``. Observed cells never change, only observed
cells are neighbours, and a cell whose ``Σ w <= 1e-6`` stays NaN.

Because ``w`` is a product of one factor per axis, the sums are a normalized convolution
``(K * (v·m)) / (K * m)`` with the truncated separable Gaussian ``K``, the observed mask ``m``
and zero padding: three 1-D passes instead of one 3-D window per cell. The kernel runs the
passes tile by tile so its buffers stay in cache, accumulates in float64 (the result stays
within float32 rounding of the float64 oracle), and skips tiles with nothing to fill.

Land (when a mask is given): land cells are never filled and keep their input value; an
observed value on a land cell is still an observation and counts as a neighbour (the source
data are NaN on land, so in practice land never contributes).

Nothing here reads or writes files.
"""

from __future__ import annotations

import enum
import math
import numbers
from typing import Any

import numpy as np
from numba import njit, prange

from sicube.errors import BadInput

WEIGHT_SUM_MIN = 1e-6
"""A missing cell whose neighbours' weight sum is at or below this stays missing (SPEC 4)."""

# Tile of one frame the kernel fills at a time: its float64 buffers, (TILE_Y + 2w) x (TILE_X + 2w)
# twice, stay in a core's L2 cache for the default space_window of 7.
TILE_Y = 64
TILE_X = 256

METHODS = ("gaussian", "hybrid")


class FillFlag(enum.IntEnum):
    """Per-cell outcome of the fill, as stored in the cube's ``fill_flag`` (SPEC section 3)."""

    OBSERVED = 0
    FILLED = 1
    NO_NEIGHBOUR = 2
    LAND = 3


# --- the oracle ---------------------------------------------------------------------------------


def reference_fill(
    array: np.ndarray, time_window: int, space_window: int, alpha: float, sigma: float
) -> np.ndarray:
    """Fill ``array`` by the SPEC section 4 rule, the slow obvious way (the tests' oracle).

    Returns a float64 array: observed cells as given, missing cells filled or left NaN.
    """
    return _reference(array, time_window, space_window, alpha, sigma)[0]


def _reference(
    array: np.ndarray, time_window: int, space_window: int, alpha: float, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's filled values and, per missing cell, its weight sum Σw (NaN elsewhere)."""
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


# --- the numba kernel ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _fill_tile(v, land, has_land, t, ty0, ty1, tx0, tx1, tw, sw, gt, gs, out, ot, oy, ox, bufs):
    """Fill one tile ``[ty0, ty1) x [tx0, tx1)`` of frame ``t`` of block ``v`` into ``out``.

    ``out[t - ot, y - oy, x - ox]`` receives cell ``v[t, y, x]``. ``bufs`` holds scratch rows.
    """
    nt, ny, nx = v.shape
    h = ty1 - ty0
    w = tx1 - tx0
    pw = w + 2 * sw
    # Copy the tile and note which rows hold a cell to fill; most tiles of a real day are all
    # observed ocean or all land and need nothing more.
    row_needs = np.zeros(h, np.bool_)
    any_need = False
    for y in range(ty0, ty1):
        for x in range(tx0, tx1):
            val = v[t, y, x]
            out[t - ot, y - oy, x - ox] = val
            if val != val and not (has_land and land[y, x] != 0):
                row_needs[y - ty0] = True
                any_need = True
    if not any_need:
        return

    pn, pd, qn, qd, rn, rd = bufs
    # Time pass over the tile and its spatial halo: P = Σ_dt gt·v·m, zero outside the block so
    # that zero padding clips the windows at the array edges.
    pn[: h + 2 * sw, :pw] = 0.0
    pd[: h + 2 * sw, :pw] = 0.0
    c_lo = max(0, tx0 - sw)
    c_hi = min(nx, tx1 + sw)
    cbase = tx0 - sw
    for r in range(max(0, ty0 - sw), min(ny, ty1 + sw)):
        # Rows the y pass never reads (no row within reach needs filling) are left at zero.
        lo_need = max(0, r - sw - ty0)
        hi_need = min(h, r + sw + 1 - ty0)
        wanted = False
        for k in range(lo_need, hi_need):
            if row_needs[k]:
                wanted = True
                break
        if not wanted:
            continue
        prn = pn[r - ty0 + sw]
        prd = pd[r - ty0 + sw]
        for f in range(max(0, t - tw), min(nt, t + tw + 1)):
            g = gt[abs(f - t)]
            vrow = v[f, r]
            for c in range(c_lo, c_hi):
                val = vrow[c]
                seen = val == val
                prn[c - cbase] += g * (val if seen else 0.0)
                prd[c - cbase] += g if seen else 0.0
    for yy in range(h):
        if not row_needs[yy]:
            continue
        # y pass for this row: Q = Σ_dy gs·P.
        qn[:pw] = 0.0
        qd[:pw] = 0.0
        for k in range(-sw, sw + 1):
            g = gs[abs(k)]
            prn = pn[yy + sw + k]
            prd = pd[yy + sw + k]
            for c in range(pw):
                qn[c] += g * prn[c]
                qd[c] += g * prd[c]
        # x pass: R = Σ_dx gs·Q, then the ratio where a cell is missing and has weight.
        rn[:w] = 0.0
        rd[:w] = 0.0
        for k in range(-sw, sw + 1):
            g = gs[abs(k)]
            for c in range(w):
                rn[c] += g * qn[c + sw + k]
                rd[c] += g * qd[c + sw + k]
        y = ty0 + yy
        for c in range(w):
            x = tx0 + c
            if v[t, y, x] != v[t, y, x] and not (has_land and land[y, x] != 0):
                if rd[c] > WEIGHT_SUM_MIN:
                    out[t - ot, y - oy, x - ox] = rn[c] / rd[c]


@njit(nogil=True, cache=True)
def _make_bufs(sw):
    pn = np.empty((TILE_Y + 2 * sw, TILE_X + 2 * sw))
    pd = np.empty((TILE_Y + 2 * sw, TILE_X + 2 * sw))
    qn = np.empty(TILE_X + 2 * sw)
    qd = np.empty(TILE_X + 2 * sw)
    rn = np.empty(TILE_X)
    rd = np.empty(TILE_X)
    return pn, pd, qn, qd, rn, rd


@njit(nogil=True, cache=True)
def _fill_items(v, land, has_land, core, tw, sw, gt, gs, out, lo, hi):
    """Fill work items ``lo..hi-1`` (one tile of one frame each) of the core region ``core``."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    nty = (cy1 - cy0 + TILE_Y - 1) // TILE_Y
    ntx = (cx1 - cx0 + TILE_X - 1) // TILE_X
    bufs = _make_bufs(sw)
    for item in range(lo, hi):
        t = ct0 + item // (nty * ntx)
        rest = item % (nty * ntx)
        ty0 = cy0 + (rest // ntx) * TILE_Y
        tx0 = cx0 + (rest % ntx) * TILE_X
        ty1 = min(cy1, ty0 + TILE_Y)
        tx1 = min(cx1, tx0 + TILE_X)
        _fill_tile(
            v, land, has_land, t, ty0, ty1, tx0, tx1, tw, sw, gt, gs, out, ct0, cy0, cx0, bufs
        )


@njit(nogil=True, cache=True)
def _n_items(core):
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    nty = (cy1 - cy0 + TILE_Y - 1) // TILE_Y
    ntx = (cx1 - cx0 + TILE_X - 1) // TILE_X
    return (ct1 - ct0) * nty * ntx


@njit(nogil=True, cache=True)
def _fill_serial(v, land, has_land, core, tw, sw, gt, gs):
    """Fill the core region of block ``v`` on the calling thread (Dask supplies the parallelism)."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    out = np.empty((ct1 - ct0, cy1 - cy0, cx1 - cx0), v.dtype)
    _fill_items(v, land, has_land, core, tw, sw, gt, gs, out, 0, _n_items(core))
    return out


@njit(nogil=True, cache=True, parallel=True)
def _fill_parallel(v, land, has_land, core, tw, sw, gt, gs, n_groups):
    """Fill the core region of ``v`` with numba threads; groups of tiles are independent."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    out = np.empty((ct1 - ct0, cy1 - cy0, cx1 - cx0), v.dtype)
    n = _n_items(core)
    for g in prange(n_groups):
        _fill_items(
            v, land, has_land, core, tw, sw, gt, gs, out, g * n // n_groups, (g + 1) * n // n_groups
        )
    return out


def _weights(time_window: int, space_window: int, alpha: float, sigma: float):
    """One-sided 1-D weights: gt[k] for |Δt| = k and gs[k] for |Δy| or |Δx| = k."""
    k_t = np.arange(time_window + 1, dtype=np.float64)
    k_s = np.arange(space_window + 1, dtype=np.float64)
    gt = np.exp(-alpha * k_t**2 / (2.0 * sigma**2))
    gs = np.exp(-(k_s**2) / (2.0 * sigma**2))
    return gt, gs


# --- hybrid: linear interpolation in time over short gaps ---------------------------------------


@njit(nogil=True, cache=True)
def _interpolate_time(v, land, has_land, ct0, ct1, max_gap):
    """Interpolate linearly along time over runs of at most ``max_gap`` missing days.

    Returns frames ``ct0..ct1-1`` of ``v``; a run is filled only when observed values bound it
    on both sides inside ``v`` (so a run touching the array edge stays missing).
    """
    nt, ny, nx = v.shape
    out = v[ct0:ct1].copy()
    last = np.full((ny, nx), -1, np.int64)  # index of the last observed frame per cell
    for t in range(nt):
        for y in range(ny):
            for x in range(nx):
                val = v[t, y, x]
                if val != val:
                    continue
                t0 = last[y, x]
                last[y, x] = t
                gap = t - t0 - 1
                if t0 < 0 or gap < 1 or gap > max_gap:
                    continue
                if has_land and land[y, x] != 0:
                    continue
                v0 = np.float64(v[t0, y, x])
                step = (np.float64(val) - v0) / (t - t0)
                for s in range(max(t0 + 1, ct0), min(t, ct1)):
                    out[s - ct0, y, x] = v0 + step * (s - t0)
    return out


# --- validation ---------------------------------------------------------------------------------


def _check_window(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise BadInput(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_real(value: Any, name: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise BadInput(f"{name} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise BadInput(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _is_dask(array: Any) -> bool:
    return type(array).__module__.startswith("dask.") and hasattr(array, "chunks")


def _check_array(array: Any):
    if not _is_dask(array):
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
    if not _is_dask(land_mask):
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
    time_window: int = 3,
    space_window: int = 7,
    alpha: float = 15.0,
    sigma: float = 7.0,
    *,
    land_mask: Any = None,
    return_flags: bool = False,
    method: str = "gaussian",
    max_gap: int = 5,
) -> Any:
    """Fill the NaN gaps of a (time, y, x) percent array by the SPEC section 4 Gaussian rule.

    Parameters
    ----------
    array
        (time, y, x) floating-point values in percent on a calendar time axis, NaN = missing.
        A NumPy array is filled at once with numba threads; a Dask array gives a lazy Dask array
        with the same chunks (``map_overlap``-style halo, the same result for any chunking).
    time_window, space_window
        Half-widths of the window in days and in cells.
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
    array = _check_array(array)
    time_window = _check_window(time_window, "time_window")
    space_window = _check_window(space_window, "space_window")
    alpha = _check_real(alpha, "alpha", positive=False)
    sigma = _check_real(sigma, "sigma", positive=True)
    if method not in METHODS:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    max_gap = _check_window(max_gap, "max_gap")
    land = _check_land(land_mask, array.shape)
    gt, gs = _weights(time_window, space_window, alpha, sigma)

    if _is_dask(array):
        filled = _fill_dask(array, land, time_window, space_window, gt, gs, method, max_gap)
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
        source = _interpolate_time(
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


def _fill_numpy(v, land, tw, sw, gt, gs, parallel: bool = True) -> np.ndarray:
    """Gaussian-fill a whole NumPy array, in numba threads unless ``parallel`` is False."""
    import numba

    v = np.ascontiguousarray(v)
    core = (0, v.shape[0], 0, v.shape[1], 0, v.shape[2])
    land_arr, has_land = _land_args(land, v.shape)
    if not parallel or v.size == 0:
        return _fill_serial(v, land_arr, has_land, core, tw, sw, gt, gs)
    n_groups = max(1, min(int(_n_items(core)), 8 * numba.get_num_threads()))
    return _fill_parallel(v, land_arr, has_land, core, tw, sw, gt, gs, n_groups)


def _flags(source: np.ndarray, filled: np.ndarray, land: np.ndarray | None = None) -> np.ndarray:
    """Per-cell FillFlag from the input, the fill and the land mask."""
    flags = np.where(
        ~np.isnan(source),
        np.uint8(FillFlag.OBSERVED),
        np.where(np.isnan(filled), np.uint8(FillFlag.NO_NEIGHBOUR), np.uint8(FillFlag.FILLED)),
    ).astype(np.uint8)
    if land is not None:
        flags[:, np.asarray(land) != 0] = FillFlag.LAND
    return flags


# --- Dask ---------------------------------------------------------------------------------------


def _merge_small(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
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


def _with_halo(func, x, depth: tuple[int, ...], land, **kwargs):
    """Apply ``func(block, land_block, lo, core_shape, **kwargs)`` to ``x`` with a halo.

    ``func`` gets each block of ``x`` widened by up to ``depth`` cells per side (less at the
    array edges, where the cells beyond count as missing) and returns the core. The result has
    the chunks of ``x``.
    """
    import dask.array as da

    chunks = x.chunks
    merged = tuple(_merge_small(c, d) for c, d in zip(chunks, depth, strict=True))
    # Along an axis held in one chunk there is nothing to exchange.
    depth = tuple(0 if len(c) == 1 else d for c, d in zip(merged, depth, strict=True))
    xm = x.rechunk(merged) if merged != chunks else x
    xo = da.overlap.overlap(xm, depth=dict(enumerate(depth)), boundary="none")
    args = [xo]
    if land is not None:
        land = da.asarray(land).rechunk(merged[1:])
        args.append(da.overlap.overlap(land, depth={0: depth[1], 1: depth[2]}, boundary="none"))

    def run(block, land_block=None, block_info=None):
        where = block_info[None]["chunk-location"]
        lo = tuple(d if i > 0 else 0 for d, i in zip(depth, where, strict=True))
        return func(block, land_block, lo, block_info[None]["chunk-shape"], **kwargs)

    out = da.map_blocks(run, *args, chunks=merged, dtype=x.dtype, meta=np.empty((0, 0, 0), x.dtype))
    return out.rechunk(chunks) if merged != chunks else out


def _gaussian_block(block, land_block, lo, shape, tw, sw, gt, gs):
    core = (lo[0], lo[0] + shape[0], lo[1], lo[1] + shape[1], lo[2], lo[2] + shape[2])
    land_arr, has_land = _land_args(land_block, block.shape)
    return _fill_serial(np.ascontiguousarray(block), land_arr, has_land, core, tw, sw, gt, gs)


def _interpolate_block(block, land_block, lo, shape, max_gap):
    land_arr, has_land = _land_args(land_block, block.shape)
    out = _interpolate_time(
        np.ascontiguousarray(block), land_arr, has_land, lo[0], lo[0] + shape[0], max_gap
    )
    return out[:, lo[1] : lo[1] + shape[1], lo[2] : lo[2] + shape[2]]


def _fill_dask(x, land, tw, sw, gt, gs, method, max_gap):
    """The lazy Dask version of the fill; every block is filled by the serial kernel."""
    if method == "hybrid" and max_gap > 0:
        x = _with_halo(_interpolate_block, x, (max_gap, 0, 0), land, max_gap=max_gap)
    return _with_halo(_gaussian_block, x, (tw, sw, sw), land, tw=tw, sw=sw, gt=gt, gs=gs)
