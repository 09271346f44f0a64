"""The Gaussian fill's numba kernels: the tiled separable passes, the 1-D weights, the
hybrid method's time interpolation and the finishing pass (flags, fraction, extent and area).

The rule and how the passes compute it are `sicube.kernels.fill`'s docstring; this module holds
only compiled code and its constants, and reads or writes no files.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sicube.datacube.cube import FillFlag
from sicube.kernels.area import extent_area_sums

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


# --- the numba kernel ---------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _fill_tile(
    v, land, has_land, t, ty0, ty1, tx0, tx1, tw, sw, gt, gs, out, ot, oy, ox, bufs, tile_id
):
    """Fill one tile ``[ty0, ty1) x [tx0, tx1)`` of frame ``t`` of block ``v`` into ``out``.

    ``out[t - ot, y - oy, x - ox]`` receives cell ``v[t, y, x]``; ``bufs`` is scratch space
    (`_make_bufs`), with the summary of observed segments of the tile numbered ``tile_id``
    (`_seen_segments`), made when one of its frames first has something to fill.
    Every pass only covers the columns some missing cell needs and some observation reaches:
    what it skips would add exact zeros. Loops run over zero-based views so that LLVM sees
    plain unit-stride loops and vectorizes them.
    """
    nt, ny, nx = v.shape
    h = ty1 - ty0
    w = tx1 - tx0
    ph = h + 2 * sw
    pn, pd, qn, qd, rn, rd, ranges, no_land, seen, seen_for = bufs
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
    if seen_for[0] != tile_id:
        _seen_segments(v, ty0, ty1, tx0, tx1, sw, seen)
        seen_for[0] = tile_id

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
                if seen[f, r - (ty0 - sw), sg - max(0, tx0 - sw) // SEG]:
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
def _seen_segments(v, ty0, ty1, tx0, tx1, sw, seen):
    """Mark which 32-column row segments hold an observation, for every frame and the cells
    within ``sw`` of the tile ``[ty0, ty1) x [tx0, tx1)``, those its passes may read.

    ``seen[f, r - (ty0 - sw), sg - sg0]`` is for row ``r`` and segment ``sg`` (block columns
    ``sg * SEG`` on), ``sg0`` the first segment the tile reaches. Made once per tile, when its
    first frame with something to fill comes, so the values it reads are in cache for them.
    """
    nt, ny, nx = v.shape
    sg0 = max(0, tx0 - sw) // SEG
    sg1 = (min(nx, tx1 + sw) - 1) // SEG + 1
    for f in range(nt):
        for r in range(max(0, ty0 - sw), min(ny, ty1 + sw)):
            row = v[f, r]
            for sg in range(sg0, sg1):
                count = 0
                if (sg + 1) * SEG <= nx:  # a whole segment: a fixed count, unrolled
                    for j in range(sg * SEG, (sg + 1) * SEG):
                        count += row[j] == row[j]
                else:
                    for j in range(sg * SEG, nx):
                        count += row[j] == row[j]
                seen[f, r - (ty0 - sw), sg - sg0] = count > 0


@njit(nogil=True, cache=True)
def _make_bufs(sw, tile, nt):
    ty, tx = tile
    pn = np.empty((ty + 2 * sw, tx + 2 * sw))
    pd = np.empty((ty + 2 * sw, tx + 2 * sw))
    qn = np.empty(tx + 2 * sw)
    qd = np.empty(tx + 2 * sw)
    rn = np.empty(tx)
    rd = np.empty(tx)
    ranges = np.empty((8, ty + 2 * sw), np.int64)
    no_land = np.zeros(tx, np.uint8)
    seen = np.empty((nt, ty + 2 * sw, (tx + 2 * sw) // SEG + 2), np.bool_)
    seen_for = np.full(1, -1, np.int64)  # the tile whose summary `seen` holds
    return pn, pd, qn, qd, rn, rd, ranges, no_land, seen, seen_for


@njit(nogil=True, cache=True)
def n_items(core, tile):
    """Number of work items (one tile of one frame each) in the core region.

    Item ``i`` is frame ``i % nt`` of tile ``i // nt`` (``nt`` frames in the core): a tile's
    frames follow one another, so the time pass of the next frame finds the frames it shares
    with this one still in cache, where frame after frame of the whole block would read each
    one from memory up to ``2 * time_window + 1`` times.
    """
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    nty = (cy1 - cy0 + tile[0] - 1) // tile[0]
    ntx = (cx1 - cx0 + tile[1] - 1) // tile[1]
    return (ct1 - ct0) * nty * ntx


@njit(nogil=True, cache=True)
def _fill_items(v, land, has_land, core, tile, tw, sw, gt, gs, out, lo, hi):
    """Fill work items ``lo..hi-1`` of the core region ``core`` of block ``v`` into ``out``."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    ntx = (cx1 - cx0 + tile[1] - 1) // tile[1]
    bufs = _make_bufs(sw, tile, v.shape[0])
    for item in range(lo, hi):
        t = ct0 + item % (ct1 - ct0)
        rest = item // (ct1 - ct0)
        ty0 = cy0 + (rest // ntx) * tile[0]
        tx0 = cx0 + (rest % ntx) * tile[1]
        ty1 = min(cy1, ty0 + tile[0])
        tx1 = min(cx1, tx0 + tile[1])
        _fill_tile(v, land, has_land, t, ty0, ty1, tx0, tx1, tw, sw, gt, gs, out, ct0, cy0, cx0,
                   bufs, rest)


@njit(nogil=True, cache=True)
def fill_serial(v, land, has_land, core, tile, tw, sw, gt, gs):
    """Fill the core region of block ``v`` on the calling thread (Dask supplies the parallelism)."""
    ct0, ct1, cy0, cy1, cx0, cx1 = core
    out = np.empty((ct1 - ct0, cy1 - cy0, cx1 - cx0), v.dtype)
    _fill_items(v, land, has_land, core, tile, tw, sw, gt, gs, out, 0, n_items(core, tile))
    return out


@njit(nogil=True, cache=True, parallel=True)
def fill_parallel(v, land, has_land, core, tile, tw, sw, gt, gs, n_groups, out):
    """Fill the core region of ``v`` into ``out`` (its shape, ``v``'s dtype) with numba threads;
    groups of tiles are independent."""
    n = n_items(core, tile)
    for g in prange(n_groups):
        lo, hi = g * n // n_groups, (g + 1) * n // n_groups
        _fill_items(v, land, has_land, core, tile, tw, sw, gt, gs, out, lo, hi)
    return out


@njit(nogil=True, cache=True)
def axis_weights(time_window, space_window, alpha, sigma):
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
def interpolate_time(v, land, has_land, ct0, ct1, max_gap):
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


# --- the cube's final steps ----------------------------------------------------------------------


_HUNDRED = np.float32(100.0)
# FillFlag values as plain ints for the numba kernels.
_OBSERVED, _FILLED, _NO_NEIGHBOUR, _LAND = (int(flag) for flag in list(FillFlag)[:4])
_N_FLAGS = len(FillFlag)


@njit(nogil=True, cache=True)
def finish_core(source, filled, land, core, fraction, weights, scale):
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
