"""The spatiotemporal Gaussian gap fill (docs/cube-format.md): oracle, numba kernel, Dask wrapper.

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

The north pole hole (`pole_hole_ring`, `fill_pole_hole`): after the Gaussian fill, every cell
of the hole gets, per day, the mean of the observed cells of the ring around it (cells within
``space_window`` cells of the hole, not land), flag POLE_HOLE (4); on a day the ring has no
observed cell, the mean of its filled cells. The builder finds the hole (`sicube.pipeline.mask`) and
applies the rule after each fill batch.

The kernel is also a NumPy gufunc, `gaussian_fill_gufunc` (core signature
``(t,y,x),(y,x),(),(),(),()->(t,y,x)``), for `xarray.apply_ufunc(..., dask="parallelized")`
and `dask.array.apply_gufunc` on arrays whose time, y and x are each one chunk. `gaussian_fill`'s
map_overlap path exchanges halos between chunks and fills each haloed block's core with its
twin, `gaussian_block_gufunc` (the same kernel, told which cells are the block's own).

Nothing here reads or writes files.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from sicube.datacube.cube import FillFlag
from sicube.errors import BadInput
from sicube.kernels.area import extent_area_sums, fixed_point_scale
from sicube.params import FillParams, check_window  # FillParams: also importable from here

WEIGHT_SUM_MIN = 1e-6
"""A missing cell whose neighbours' weight sum is at or below this stays missing (the rule)."""

# The smallest weight sum the kernel divides by (the cells below WEIGHT_SUM_MIN are not filled
# anyway): positive, so that no column divides 0 by 0.
_NO_WEIGHT = WEIGHT_SUM_MIN / 2

# Tile (y, x) of one frame the kernel fills at a time: its float64 buffers, (64 + 2w) x (256 + 2w)
# twice, stay in a core's L2 cache for the default space_window of 7.
TILE = (64, 256)
# Width of the column segments whose "anything observed?" the kernel notes once per block.
SEG = 32

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


# --- the numba kernel ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _fill_tile(
    v, seen, land, has_land, t, ty0, ty1, tx0, tx1, tw, sw, gt, gs, out, ot, oy, ox, bufs
):
    """Fill one tile ``[ty0, ty1) x [tx0, tx1)`` of frame ``t`` of block ``v`` into ``out``.

    ``out[t - ot, y - oy, x - ox]`` receives cell ``v[t, y, x]``; ``bufs`` is scratch space.
    Every pass only covers the columns some missing cell needs and some observation reaches:
    what it skips would add exact zeros. Loops run over zero-based views so that LLVM sees
    plain unit-stride loops and vectorizes them.
    """
    nt, ny, nx = v.shape
    h = ty1 - ty0
    w = tx1 - tx0
    ph = h + 2 * sw
    pn, pd, qn, qd, rn, rd, ranges, no_land = bufs
    need_lo, need_hi = ranges[0], ranges[1]  # per tile row: columns to fill, [lo, hi)
    p_lo, p_hi = ranges[2], ranges[3]  # per P row: columns the y pass reads
    obs_lo, obs_hi = ranges[4], ranges[5]  # per P row: columns with weight
    t_lo, t_hi = ranges[6], ranges[7]  # per P row: columns the time pass covers
    # Copy the tile; note per row the span of cells to fill. Most tiles of a real day are all
    # observed ocean or all land and need nothing more.
    any_need = False
    for yy in range(h):
        y = ty0 + yy
        vrow = v[t, y, tx0:tx1]
        orow = out[t - ot, y - oy, tx0 - ox : tx1 - ox]
        lrow = land[y, tx0:tx1] if has_land else no_land[:w]
        orow[:] = vrow
        # A branch-free count first (it vectorizes); the span only where there is something.
        count = 0
        for j in range(w):
            count += (vrow[j] != vrow[j]) & (lrow[j] == 0)
        lo, hi = w, 0
        if count:
            for j in range(w):
                if vrow[j] != vrow[j] and lrow[j] == 0:
                    lo = j
                    break
            for j in range(w - 1, -1, -1):
                if vrow[j] != vrow[j] and lrow[j] == 0:
                    hi = j + 1
                    break
            any_need = True
        need_lo[yy], need_hi[yy] = lo, hi
    if not any_need:
        return

    # Columns of each P row (tile row index + sw) that some output row within reach reads; in
    # P coordinates, output column j reads P columns j .. j + 2sw.
    for pr in range(ph):
        lo, hi = pn.shape[1], 0
        for yy in range(max(0, pr - 2 * sw), min(h, pr + 1)):
            if need_lo[yy] < need_hi[yy]:
                lo = min(lo, need_lo[yy])
                hi = max(hi, need_hi[yy] + 2 * sw)
        p_lo[pr], p_hi[pr] = lo, hi

    # Deep inland (no mask given) or in a long gap nothing is observed within reach. The
    # block's summary of observed 32-column segments finds that, and trims each P row to the
    # segments that hold data, without reading the values: what is skipped would add zeros.
    seen_any = False
    f0, f1 = max(0, t - tw), min(nt, t + tw + 1)
    for pr in range(ph):
        t_lo[pr], t_hi[pr] = 0, 0
        r = ty0 - sw + pr
        # P column pc holds block column tx0 - sw + pc.
        ca = max(p_lo[pr], sw - tx0)
        cb = min(p_hi[pr], nx - tx0 + sw)
        if r < 0 or r >= ny or ca >= cb:
            continue
        first, last = -1, -1
        for sg in range((tx0 - sw + ca) // SEG, (tx0 - sw + cb - 1) // SEG + 1):
            for f in range(f0, f1):
                if seen[f, r, sg]:
                    first = sg if first < 0 else first
                    last = sg
                    break
        if first >= 0:
            t_lo[pr] = max(ca, first * SEG - (tx0 - sw))
            t_hi[pr] = min(cb, (last + 1) * SEG - (tx0 - sw))
            seen_any = True
    if not seen_any:
        return

    # Time pass: P = sum_dt gt * v * m and D = sum_dt gt * m, zero outside the block so that
    # zero padding clips the windows at the array edges.
    for pr in range(ph):
        a, b = p_lo[pr], p_hi[pr]
        obs_lo[pr], obs_hi[pr] = b, a
        if a >= b:
            continue
        pn[pr, a:b] = 0.0
        pd[pr, a:b] = 0.0
        r = ty0 - sw + pr
        ca, cb = t_lo[pr], t_hi[pr]
        if ca >= cb:
            continue
        pseg_n = pn[pr, ca:cb]
        pseg_d = pd[pr, ca:cb]
        for f in range(max(0, t - tw), min(nt, t + tw + 1)):
            g = gt[abs(f - t)]
            vseg = v[f, r, tx0 - sw + ca : tx0 - sw + cb]
            for j in range(cb - ca):
                val = vseg[j]
                ok = val == val
                pseg_n[j] += g * (val if ok else 0.0)
                pseg_d[j] += g if ok else 0.0
        for j in range(ca, cb):
            if pd[pr, j] > 0.0:
                obs_lo[pr] = min(obs_lo[pr], j)
                obs_hi[pr] = j + 1

    for yy in range(h):
        lo, hi = need_lo[yy], need_hi[yy]
        if lo >= hi:
            continue
        # Q columns [lo, hi + 2sw) feed this row; only [qa, qb) can hold weight.
        qa, qb = hi + 2 * sw, lo
        for pr in range(yy, yy + 2 * sw + 1):
            if obs_lo[pr] < obs_hi[pr]:
                qa = min(qa, obs_lo[pr])
                qb = max(qb, obs_hi[pr])
        qa, qb = max(qa, lo), min(qb, hi + 2 * sw)
        if qa >= qb:
            continue  # no observation within reach: the row's gaps stay NaN
        # y pass: Q = sum_dy gs * P.
        qn[lo : hi + 2 * sw] = 0.0
        qd[lo : hi + 2 * sw] = 0.0
        qseg_n = qn[qa:qb]
        qseg_d = qd[qa:qb]
        for k in range(-sw, sw + 1):
            pr = yy + sw + k
            if obs_lo[pr] >= obs_hi[pr]:
                continue  # an all-zero row adds nothing
            g = gs[abs(k)]
            prn = pn[pr, qa:qb]
            prd = pd[pr, qa:qb]
            for j in range(qb - qa):
                qseg_n[j] += g * prn[j]
                qseg_d[j] += g * prd[j]
        # x pass over the output columns this Q span reaches: R = sum_dx gs * Q.
        xa, xb = max(lo, qa - 2 * sw), min(hi, qb)
        rseg_n = rn[xa:xb]
        rseg_d = rd[xa:xb]
        rseg_n[:] = 0.0
        rseg_d[:] = 0.0
        for k in range(-sw, sw + 1):
            g = gs[abs(k)]
            qk_n = qn[xa + sw + k : xb + sw + k]
            qk_d = qd[xa + sw + k : xb + sw + k]
            for j in range(xb - xa):
                rseg_n[j] += g * qk_n[j]
                rseg_d[j] += g * qk_d[j]
        y = ty0 + yy
        vrow = v[t, y, tx0 + xa : tx0 + xb]
        orow = out[t - ot, y - oy, tx0 - ox + xa : tx0 - ox + xb]
        lrow = land[y, tx0 + xa : tx0 + xb] if has_land else no_land[: xb - xa]
        # The quotients first, for every column, by a weight sum raised to at least
        # _NO_WEIGHT: dividing only under the condition below, LLVM's vectorized loop divided
        # in every lane anyway, 0/0 in the lanes without weight, which raises the CPU's
        # "invalid" flag (NumPy reports it as a RuntimeWarning after a gufunc). A cell that
        # gets filled has rseg_d[j] > WEIGHT_SUM_MIN, so its quotient is the plain n / d.
        for j in range(xb - xa):
            rseg_n[j] /= max(rseg_d[j], _NO_WEIGHT)
        for j in range(xb - xa):
            if vrow[j] != vrow[j] and lrow[j] == 0 and rseg_d[j] > WEIGHT_SUM_MIN:
                orow[j] = rseg_n[j]


@njit(nogil=True, cache=True)
def _seen_segments(v, f, seen):
    """Mark, for frame ``f``, each row's 32-column segments that hold an observation."""
    ny, nx = v.shape[1], v.shape[2]
    for r in range(ny):
        row = v[f, r]
        for sg in range(seen.shape[2]):
            seg = row[sg * SEG : min(nx, (sg + 1) * SEG)]
            count = 0
            for j in range(seg.size):
                count += seg[j] == seg[j]
            seen[f, r, sg] = count > 0


@njit(nogil=True, cache=True)
def _make_bufs(sw, tile):
    ty, tx = tile
    pn = np.empty((ty + 2 * sw, tx + 2 * sw))
    pd = np.empty((ty + 2 * sw, tx + 2 * sw))
    qn = np.empty(tx + 2 * sw)
    qd = np.empty(tx + 2 * sw)
    rn = np.empty(tx)
    rd = np.empty(tx)
    ranges = np.empty((8, ty + 2 * sw), np.int64)
    no_land = np.zeros(tx, np.uint8)
    return pn, pd, qn, qd, rn, rd, ranges, no_land


@njit(nogil=True, cache=True)
def _n_items(core, tile):
    """Number of work items (one tile of one frame each) in the core region."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    nty = (cy1 - cy0 + tile[0] - 1) // tile[0]
    ntx = (cx1 - cx0 + tile[1] - 1) // tile[1]
    return (ct1 - ct0) * nty * ntx


@njit(nogil=True, cache=True)
def _fill_items(v, seen, land, has_land, core, tile, tw, sw, gt, gs, out, lo, hi):
    """Fill work items ``lo..hi-1`` of the core region ``core`` of block ``v`` into ``out``."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    nty = (cy1 - cy0 + tile[0] - 1) // tile[0]
    ntx = (cx1 - cx0 + tile[1] - 1) // tile[1]
    bufs = _make_bufs(sw, tile)
    for item in range(lo, hi):
        t = ct0 + item // (nty * ntx)
        rest = item % (nty * ntx)
        ty0 = cy0 + (rest // ntx) * tile[0]
        tx0 = cx0 + (rest % ntx) * tile[1]
        ty1 = min(cy1, ty0 + tile[0])
        tx1 = min(cx1, tx0 + tile[1])
        _fill_tile(
            v, seen, land, has_land, t, ty0, ty1, tx0, tx1, tw, sw, gt, gs, out, ct0, cy0, cx0, bufs
        )


@njit(nogil=True, cache=True)
def _fill_serial(v, land, has_land, core, tile, tw, sw, gt, gs):
    """Fill the core region of block ``v`` on the calling thread (Dask supplies the parallelism)."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    out = np.empty((ct1 - ct0, cy1 - cy0, cx1 - cx0), v.dtype)
    seen = np.empty((v.shape[0], v.shape[1], (v.shape[2] + SEG - 1) // SEG), np.bool_)
    for f in range(v.shape[0]):
        _seen_segments(v, f, seen)
    _fill_items(v, seen, land, has_land, core, tile, tw, sw, gt, gs, out, 0, _n_items(core, tile))
    return out


@njit(nogil=True, cache=True, parallel=True)
def _fill_parallel(v, land, has_land, core, tile, tw, sw, gt, gs, n_groups):
    """Fill the core region of ``v`` with numba threads; groups of tiles are independent."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    out = np.empty((ct1 - ct0, cy1 - cy0, cx1 - cx0), v.dtype)
    n = _n_items(core, tile)
    seen = np.empty((v.shape[0], v.shape[1], (v.shape[2] + SEG - 1) // SEG), np.bool_)
    for f in prange(v.shape[0]):
        _seen_segments(v, f, seen)
    for g in prange(n_groups):
        lo, hi = g * n // n_groups, (g + 1) * n // n_groups
        _fill_items(v, seen, land, has_land, core, tile, tw, sw, gt, gs, out, lo, hi)
    return out


@njit(nogil=True, cache=True)
def _weights(time_window, space_window, alpha, sigma):
    """One-sided 1-D weights: gt[k] for |Δt| = k and gs[k] for |Δy| or |Δx| = k.

    Compiled, and the one source of the weights for every path (the NumPy fill, the builder's
    blocks, both gufuncs), so that they fill bit for bit alike: NumPy's own ``np.exp`` (an
    AVX-512 version on CPUs that have it) can differ from the C library's ``exp`` numba calls
    by one unit in the last place, which a float64 fill keeps.
    """
    gt = np.empty(time_window + 1)
    gs = np.empty(space_window + 1)
    for k in range(time_window + 1):
        gt[k] = math.exp(-alpha * np.float64(k) ** 2 / (2.0 * sigma**2))
    for k in range(space_window + 1):
        gs[k] = math.exp(-(np.float64(k) ** 2) / (2.0 * sigma**2))
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
    gt, gs = _weights(time_window, space_window, alpha, sigma)

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


def _fill_numpy(
    v, land, tw, sw, gt, gs, parallel: bool = True, tile: tuple[int, int] = TILE
) -> np.ndarray:
    """Gaussian-fill a whole NumPy array, in numba threads unless ``parallel`` is False."""
    import numba

    v = np.ascontiguousarray(v)
    core = (0, v.shape[0], 0, v.shape[1], 0, v.shape[2])
    land_arr, has_land = _land_args(land, v.shape)
    if not parallel or v.size == 0:
        return _fill_serial(v, land_arr, has_land, core, tile, tw, sw, gt, gs)
    n_groups = max(1, min(int(_n_items(core, tile)), 8 * numba.get_num_threads()))
    return _fill_parallel(v, land_arr, has_land, core, tile, tw, sw, gt, gs, n_groups)


def _flags(source: np.ndarray, filled: np.ndarray, land: np.ndarray | None = None) -> np.ndarray:
    """Per-cell FillFlag from the input, the fill and the land mask."""
    source = np.ascontiguousarray(source)
    core = (0, source.shape[0], 0, source.shape[1], 0, source.shape[2])
    scratch = np.empty(source.shape, np.float32)
    return _finish_core(source, np.ascontiguousarray(filled), _full_land(land, source.shape),
                        core, scratch, _NO_WEIGHTS, 1.0)[0]


def _full_land(land: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A (y, x) uint8 land mask of the block's shape; all sea when there is none."""
    if land is None:
        return np.zeros(shape[1:], np.uint8)
    return _land_args(land, shape)[0]


_HUNDRED = np.float32(100.0)
# FillFlag values as plain ints for the numba kernels.
_OBSERVED, _FILLED, _NO_NEIGHBOUR, _LAND = (int(flag) for flag in list(FillFlag)[:4])
_N_FLAGS = len(FillFlag)


_NO_WEIGHTS = np.zeros((0, 0))  # _finish_core: no cell areas, no extent and area


@njit(nogil=True, cache=True)
def _finish_core(source, filled, land, core, fraction, weights, scale):
    """Flags and each day's counts per flag of a filled core; its fraction into
    ``fraction``; given ``weights`` (the core's (y, x) cell areas; (0, 0): none), each
    day's extent and area.

    ``filled`` is the core region ``core`` of block ``source``, ``land`` the block's (y, x)
    mask; ``fraction`` may be ``filled`` itself (float32). Fraction is the seed's final steps:
    percent / 100 in float32, missing and land -> 0. Flags: land, else observed in the source,
    else filled or no neighbour (NaN). No branches on data: LLVM vectorizes the first inner loop.
    The extent and area are summed over each row just written, while it is in cache.
    """
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    flags = np.empty(filled.shape, np.uint8)
    sums = np.zeros((ct1 - ct0, 2))
    weighted = weights.shape[0] > 0
    counts = np.zeros((ct1 - ct0, _N_FLAGS), np.int64)  # per FillFlag (POLE_HOLE: 0 here)
    one = np.uint8(1)
    for t in range(ct1 - ct0):
        n_observed = n_filled = n_none = n_land = 0
        for y in range(cy1 - cy0):
            srow = source[ct0 + t, cy0 + y, cx0:cx1]
            lrow = land[cy0 + y, cx0:cx1]
            frow = filled[t, y]
            out = fraction[t, y]
            frow_flags = flags[t, y]
            for x in range(cx1 - cx0):
                is_land = np.uint8(lrow[x] != 0)
                value = frow[x]
                has_value = np.uint8(value == value)
                observed = np.uint8(srow[x] == srow[x])
                # Land, else observed, else filled or no neighbour, as arithmetic on 0/1.
                frow_flags[x] = is_land * _LAND + (one - is_land) * (
                    observed * _OBSERVED + (one - observed) * (
                        has_value * _FILLED + (one - has_value) * _NO_NEIGHBOUR))
                keep = has_value & (one - is_land)
                out[x] = (value if keep else np.float32(0.0)) / _HUNDRED
            for x in range(cx1 - cx0):  # separate comparisons vectorize, counts[flag] does not
                n_observed += frow_flags[x] == _OBSERVED
                n_filled += frow_flags[x] == _FILLED
                n_none += frow_flags[x] == _NO_NEIGHBOUR
                n_land += frow_flags[x] == _LAND
            if weighted:
                extent, ice = extent_area_sums(out, weights[y], scale)
                sums[t, 0] += extent
                sums[t, 1] += ice
        counts[t, _OBSERVED], counts[t, _FILLED] = n_observed, n_filled
        counts[t, _NO_NEIGHBOUR], counts[t, _LAND] = n_none, n_land
    return flags, counts, sums


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
    gt, gs = _weights(time_window, space_window, alpha, sigma)
    block = np.ascontiguousarray(block, dtype=np.float32)
    land_arr = _full_land(land, block.shape)  # the fill reads it only when a mask is given
    filled = _fill_serial(block, land_arr, land is not None, core, TILE, time_window,
                          space_window, gt, gs)
    weights = _NO_WEIGHTS if cell_km2 is None else np.ascontiguousarray(cell_km2, np.float64)
    scale = 1.0 if cell_km2 is None else fixed_point_scale(weights)
    flags, counts, sums = _finish_core(block, filled, land_arr, core, filled, weights, scale)
    return filled, flags, counts, None if cell_km2 is None else sums


# --- the north pole hole -------------------------------------------------------------------------


def pole_hole_ring(hole: np.ndarray, land: np.ndarray, width: int) -> np.ndarray:
    """The ring around the pole hole (bool (y, x)): cells within `width` cells of a hole cell
    along y and x (a square, like the fill's window), neither hole nor land."""
    hole = np.asarray(hole, bool)
    near = hole.copy()
    for axis in (0, 1):  # a square's dilation is a dilation along y, then along x
        grown = near.copy()
        size = near.shape[axis]
        for shift in range(1, min(width, size - 1) + 1):
            ahead, behind = [slice(None)] * 2, [slice(None)] * 2
            ahead[axis], behind[axis] = slice(shift, None), slice(None, size - shift)
            grown[tuple(ahead)] |= near[tuple(behind)]
            grown[tuple(behind)] |= near[tuple(ahead)]
        near = grown
    return near & ~hole & ~np.asarray(land, bool)


def fill_pole_hole(raw: np.ndarray, conc: np.ndarray, flags: np.ndarray, hole: np.ndarray,
                   ring: np.ndarray) -> np.ndarray:
    """Set the pole hole's `conc` and `flags` in place, day by day; return the change in the
    number of cells per FillFlag.

    Rule, per day t: every hole cell gets the mean of the ring's observed cells (`raw`,
    percent, NaN = missing; mean in float64, / 100, stored float32) and flag POLE_HOLE. On a
    day the ring has no observed cell (a day without a file), the mean of the ring's filled
    cells (flag FILLED in `flags`, their fraction in `conc`), flag POLE_HOLE; with neither,
    0 and flag NO_NEIGHBOUR. `raw`, `conc`, `flags` are (time, y, x), after the Gaussian fill
    and its final steps; `hole` and `ring` (y, x) bool (`pole_hole_ring`).
    """
    hole, ring = np.asarray(hole, bool), np.asarray(ring, bool)
    before = np.bincount(flags[:, hole].ravel(), minlength=len(FillFlag))
    for t in range(raw.shape[0]):
        ring_raw = raw[t][ring]
        seen = ring_raw[~np.isnan(ring_raw)]
        filled = conc[t][ring & (flags[t] == FillFlag.FILLED)]
        if seen.size:
            value, flag = seen.astype(np.float64).mean() / 100.0, FillFlag.POLE_HOLE
        elif filled.size:
            value, flag = filled.astype(np.float64).mean(), FillFlag.POLE_HOLE
        else:
            value, flag = 0.0, FillFlag.NO_NEIGHBOUR
        conc[t][hole] = np.float32(value)
        flags[t][hole] = flag
    return np.bincount(flags[:, hole].ravel(), minlength=len(FillFlag)) - before


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


def _gaussian_block(block, land_block, core, tw, sw, alpha, sigma):
    """One haloed block's core, filled by the block gufunc (`gaussian_block_gufunc`)."""
    land_arr = _full_land(land_block, block.shape)
    out = _block_gufunc()(block, land_arr, np.asarray(core, np.int64), tw, sw, alpha, sigma)
    return out[core[0]:core[1], core[2]:core[3], core[4]:core[5]]


def _interpolate_block(block, land_block, core, max_gap):
    land_arr, has_land = _land_args(land_block, block.shape)
    out = _interpolate_time(np.ascontiguousarray(block), land_arr, has_land, core[0], core[1],
                            max_gap)
    return out[:, core[2]:core[3], core[4]:core[5]]


def _fill_dask(x, land, tw, sw, alpha, sigma, method, max_gap):
    """The lazy Dask version of the fill; every block's core is filled by the block gufunc."""
    if method == "hybrid" and max_gap > 0:
        x = _with_halo(_interpolate_block, x, (max_gap, 0, 0), land, max_gap=max_gap)
    return _with_halo(_gaussian_block, x, (tw, sw, sw), land, tw=tw, sw=sw, alpha=alpha,
                      sigma=sigma)


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
    gt, gs = _weights(tw, sw, alpha, sigma)  # the weights of every other path, bit for bit
    v = np.ascontiguousarray(array)
    ct0, ct1, cy0, cy1, cx0, cx1 = core[0], core[1], core[2], core[3], core[4], core[5]
    filled = _fill_serial(v, np.ascontiguousarray(land), True, (ct0, ct1, cy0, cy1, cx0, cx1),
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
halo between chunks and fills each haloed block with `gaussian_block_gufunc`. No checks of the
parameters here (`FillParams` does them); the hybrid method and flags are `gaussian_fill`'s.
"""

_BLOCK_GUFUNC_DOC = """`gaussian_fill_gufunc` for one block with its halo: core signature
``(t,y,x),(y,x),(c),(),(),(),()->(t,y,x)``, ``core`` = (t0, t1, y0, y1, x0, x1), the block's
own cells. Only the core is filled (the halo only lends neighbours); the rest of the output
is the input. `gaussian_fill`'s map_overlap path calls it for every block.
"""

_GUFUNCS: dict[str, Any] = {}
_MAKERS = {"gaussian_fill_gufunc": _make_gufunc, "gaussian_block_gufunc": _make_block_gufunc}


def _block_gufunc():
    return __getattr__("gaussian_block_gufunc")


def __getattr__(name: str):
    """Build the gufuncs on first use, so that importing the module compiles nothing."""
    if name in _MAKERS:
        if name not in _GUFUNCS:
            _GUFUNCS[name] = _MAKERS[name]()
        return _GUFUNCS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
