"""Cell areas on the ellipsoid, and sea-ice extent and area of a block: pure computations.

`cell_area` gives the true (ellipsoidal) area of every cell of a polar stereographic grid.
The map is conformal, so a small patch of projected area dx dy covers dx dy / k² on the
ellipsoid, k being the point scale factor; the cell's area is that integrated over the
cell. k of a polar stereographic projection depends only on the distance from the pole
(Snyder 1987, eqs. 21-33/21-34 and 7-9), so it is evaluated in closed form (no iteration).
The mean of a smooth f over a dx x dy cell is f + (dx² f_xx + dy² f_yy)/24 at its centre,
up to terms of order (h/R)^4 ~ 1e-13 relative (h the cell, R the Earth's radius: f
changes over a 3.125 km cell by parts in 10^4). For f = 1/k², a function of the distance
from the pole, that second-order term is radial too, but for an orientation term on cells
that are not square; so it is tabulated once every 50 m of that distance (derivatives by
central differences) and interpolated linearly, one square root per cell (compiled: the 8.7
million cells of n3125 in about 0.1 s). Error: the interpolation's ~1e-11 relative; tested
against a direct 2 x 2 Gauss-Legendre rule on the exact 1/k² (1e-10), a polar cap's
closed-form area (0.05 % required, 3e-7 found) and pyproj.Geod's geodesic area of the whole
grid (4e-8); the latitude series' error is ~1e-12 rad.

`extent_area` gives a block's daily sea-ice extent (area of cells with concentration
>= 15 %, the NSIDC rule) and area (sum of concentration x cell area), in km², land
excluded; the builder adds the pole hole (counted as ice for extent, as NSIDC does).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from numba import njit

from sicube.params import EXTENT_THRESHOLD

KM2 = 1e-6  # m² -> km²
TABLE_STEP = 50.0  # metres between the tabulated cell means (see cell_area)
DERIVATIVE_STEP = 1000.0  # metres either side in the central differences of 1/k²


def _stere_params(crs) -> dict:
    """a, e, the radius constant and the false origin of a polar stereographic pyproj CRS."""
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    with warnings.catch_warnings():  # "you may lose information": the parameters are all we use
        warnings.simplefilter("ignore", UserWarning)
        params = crs.to_dict()
    if params.get("proj") != "stere" or abs(abs(float(params.get("lat_0", 0))) - 90) > 1e-9:
        raise ValueError(f"cell_area: not a polar stereographic CRS: {crs.to_proj4()}")
    ell = crs.ellipsoid
    a, b = float(ell.semi_major_metre), float(ell.semi_minor_metre)
    e = np.sqrt(1.0 - (b / a) ** 2)
    if "lat_ts" in params and abs(abs(float(params["lat_ts"])) - 90) > 1e-12:
        phi_c = np.radians(abs(float(params["lat_ts"])))
        # rho = scale * t(phi): eq. 21-34 with the standard parallel's m_c and t_c
        scale = a * _m(phi_c, e) / _t(phi_c, e)
    else:
        k0 = float(params.get("k_0", params.get("k", 1.0)))
        scale = 2 * a * k0 / np.sqrt((1 + e) ** (1 + e) * (1 - e) ** (1 - e))  # eq. 21-33
    return {"a": a, "e": e, "scale": scale, "x0": float(params.get("x_0", 0.0)),
            "y0": float(params.get("y_0", 0.0))}


def _t(phi, e):
    s = np.sin(phi)
    return np.tan(np.pi / 4 - phi / 2) / ((1 - e * s) / (1 + e * s)) ** (e / 2)


def _m(phi, e):
    return np.cos(phi) / np.sqrt(1 - (e * np.sin(phi)) ** 2)


def _latitude(rho: np.ndarray, p: dict) -> np.ndarray:
    """|latitude| (radians) at distance `rho` from the pole: conformal latitude, then Snyder's
    series 3-5 (terms to e^8)."""
    e2 = p["e"] ** 2
    chi = np.pi / 2 - 2 * np.arctan(rho / p["scale"])
    return (chi + (e2 / 2 + 5 * e2**2 / 24 + e2**3 / 12 + 13 * e2**4 / 360) * np.sin(2 * chi)
            + (7 * e2**2 / 48 + 29 * e2**3 / 240 + 811 * e2**4 / 11520) * np.sin(4 * chi)
            + (7 * e2**3 / 120 + 81 * e2**4 / 1120) * np.sin(6 * chi)
            + 4279 * e2**4 / 161280 * np.sin(8 * chi))


def inverse_scale_squared(x: np.ndarray, y: np.ndarray, crs) -> np.ndarray:
    """1 / k² at projected points (x, y) in metres: ellipsoid area per projected area."""
    p = _stere_params(crs)
    return _inverse_scale_squared_p(np.asarray(x, np.float64), np.asarray(y, np.float64), p)


def _pole_inverse_k(p: dict) -> float:
    e = p["e"]
    # lim m/t at the pole = 2 / sqrt((1+e)^(1+e) (1-e)^(1-e))
    return p["a"] * 2 / np.sqrt((1 + e) ** (1 + e) * (1 - e) ** (1 - e)) / p["scale"]


def cell_area(x: np.ndarray, y: np.ndarray, crs) -> np.ndarray:
    """(y, x) float64 area in m² on the CRS's ellipsoid of every cell of a regular grid.

    `x`, `y` are cell centres (metres, evenly spaced); `crs` a polar stereographic CRS
    (anything pyproj takes: EPSG code, WKT, `products.GridCRS.to_pyproj()`). The integral of
    1/k² over each cell, to second order in the cell's size (module docstring: ~1e-11).
    """
    return cell_area_parts(x, y, crs)()


def cell_area_parts(x: np.ndarray, y: np.ndarray, crs) -> Callable[..., np.ndarray]:
    """A function `part(rows=slice(None), cols=slice(None))` giving `cell_area` of any
    rectangle of the grid, bit for bit as in the whole grid's result: the set-up (CRS, the
    tables) is done once here, so the builder computes the grid chunk by chunk."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx = float(np.mean(np.diff(x))) if x.size > 1 else 0.0
    dy = float(np.mean(np.diff(y))) if y.size > 1 else 0.0
    if x.size < 2 or y.size < 2 or dx <= 0 or dy <= 0:
        raise ValueError("cell_area: x and y must be ascending cell centres, 2 or more each")
    p = _stere_params(crs)
    px, py = x - p["x0"], y - p["y0"]  # cell centres relative to the pole
    reach = np.hypot(np.abs(px).max(), np.abs(py).max()) + 2 * TABLE_STEP
    mean, anisotropy = _cell_mean_tables(p, reach, dx, dy)

    def part(rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        (r0, r1, _), (c0, c1, _) = rows.indices(y.size), cols.indices(x.size)
        return _cell_areas(px[c0:c1], py[r0:r1], mean, anisotropy,
                           (dx * dx - dy * dy) / 48.0, TABLE_STEP, dx * dy)

    return part


def _cell_mean_tables(p: dict, reach: float, dx: float, dy: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Every TABLE_STEP metres of the distance rho from the pole: the mean of f = 1/k² over a
    dx x dy cell centred there, to second order, f + (dx² + dy²)/48 ∇²f (the orientation-free
    part), and f'' - f'/rho, whose share (dx² - dy²)/48 (x² - y²)/rho² is the rest.

    The derivatives are central differences over ±DERIVATIVE_STEP of the exact values (f is
    even in rho, so points beyond the pole mirror); at the pole f'/rho -> f''(0)."""
    n = int(reach / TABLE_STEP) + 2
    k = int(round(DERIVATIVE_STEP / TABLE_STEP))
    h = k * TABLE_STEP
    rho = np.arange(-k, n + k) * TABLE_STEP  # the table's rho, k steps further either side
    f = _inverse_scale_squared_p(np.abs(rho) + p["x0"], p["y0"], p)
    at, before, after = f[k:n + k], f[:n], f[2 * k:]
    second = (after - 2 * at + before) / (h * h)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (after - before) / (2 * h) / rho[k:n + k]
    slope[0] = second[0]  # the limit at the pole (f'(0) = 0)
    return at + (dx * dx + dy * dy) / 48.0 * (second + slope), second - slope


@njit(nogil=True, cache=True)
def _cell_areas(px, py, mean, anisotropy, share, step, projected):
    """The area of each cell centred at (px, py) (metres from the pole), `projected` (dx dy)
    times the mean of 1/k² over it: the tables (`_cell_mean_tables`) interpolated linearly
    at the centre's distance from the pole (a uniform table: no search); one compiled pass,
    one square root per cell."""
    out = np.empty((py.size, px.size))
    for row in range(py.size):
        y2 = py[row] * py[row]
        for col in range(px.size):
            x2 = px[col] * px[col]
            r2 = x2 + y2
            at = np.sqrt(r2) / step
            i = int(at)
            at -= i
            value = mean[i] * (1.0 - at) + mean[i + 1] * at
            if share != 0.0 and r2 > 0.0:  # cells that are not square
                value += share * (x2 - y2) / r2 * (anisotropy[i] * (1.0 - at)
                                                   + anisotropy[i + 1] * at)
            out[row, col] = value * projected
    return out


def _inverse_scale_squared_p(x, y, p: dict) -> np.ndarray:
    rho = np.hypot(x - p["x0"], y - p["y0"])
    phi = _latitude(rho, p)
    # 1/k = a m / rho (eq. 21-32), with rho = scale * t: write it a m / (scale t) and take
    # its limit at the pole, where both vanish.
    t = np.maximum(rho, 1e-300) / p["scale"]
    inv_k = np.where(rho > 0, p["a"] * _m(phi, p["e"]) / (p["scale"] * t), _pole_inverse_k(p))
    return inv_k**2


def extent_area(conc: np.ndarray, area: np.ndarray, ocean: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of `conc` (t, y, x) fraction: (extent, area) in km², float64.

    extent = Σ cell area where conc >= 0.15; area = Σ conc x cell area; over `ocean` cells
    (default all; land is 0 in sea_ice_conc anyway). NaN counts as no ice. One compiled
    pass with fixed-point sums (the same bits on every CPU) and no temporaries
    (`extent_area_sums`, which the fill's finishing pass calls row by row for the builder).
    """
    conc = np.ascontiguousarray(conc)
    weights = area * KM2 if ocean is None else np.where(ocean, area * KM2, 0.0)
    weights = np.ascontiguousarray(weights, np.float64).ravel()
    out = _extent_area(conc.reshape(conc.shape[0], -1), weights, fixed_point_scale(weights))
    return out[:, 0], out[:, 1]


def counts_toward_extent(conc):
    """The extent rule (NSIDC): whether a concentration (fraction; a number or a NumPy or Dask
    array) counts toward the sea-ice extent: at least `EXTENT_THRESHOLD`. NaN does not."""
    return conc >= EXTENT_THRESHOLD


# The same rule for compiled kernels, inlined into them (as fast as the comparison itself).
_counts_toward_extent = njit(inline="always")(counts_toward_extent)


# Sums in fixed point: each term is rounded once to a multiple of 1/scale and the terms are
# added as integers. A float sum's bits depend on its order, and a vectorized loop's order on
# the CPU's vector width (a reassociated float sum gave other last bits on an SSE2-only target
# than on AVX2/AVX-512); integer sums are the same in any order, so every CPU gives the same
# extent and area, and LLVM still vectorizes the loop (no fastmath needed).
_FIXED_BITS = 62  # the weights' total in units of 1/scale stays below 2**62: no int64 overflow


def fixed_point_scale(weights: np.ndarray) -> float:
    """The power of two `extent_area_sums` counts in for these cell weights: as fine as their
    total allows (a term's rounding is 2**-63 of it, a sum's error ~1e-16 relative)."""
    total = float(np.abs(weights).sum())
    if not np.isfinite(total):
        raise ValueError("cell areas must be finite for the extent and area sums")
    return math.ldexp(1.0, _FIXED_BITS - math.frexp(total)[1]) if total > 0 else 1.0


@njit(nogil=True, cache=True)
def extent_area_sums(conc, weights, scale):
    """(extent, area) of one flat frame or row `conc` (fraction; NaN: no ice) with its cells'
    `weights` (areas), in fixed point of `scale` units (`fixed_point_scale` of the weights or
    of a whole they are part of): compiled, for `extent_area` and the fill's finishing pass.
    The same bits on every CPU."""
    extent = 0
    ice = 0
    for i in range(conc.size):
        c = np.float64(conc[i])
        w = weights[i] * scale  # exact: a power of two
        ice += np.int64(c * w + 0.5) if c == c else 0  # NaN: no ice
        extent += np.int64(w + 0.5) if _counts_toward_extent(c) else 0
    return extent / scale, ice / scale


@njit(nogil=True, cache=True)
def _extent_area(conc, weights, scale):
    out = np.zeros((conc.shape[0], 2))
    for t in range(conc.shape[0]):
        out[t, 0], out[t, 1] = extent_area_sums(conc[t], weights, scale)
    return out


__all__ = ["EXTENT_THRESHOLD", "cell_area", "cell_area_parts", "counts_toward_extent",
           "extent_area", "extent_area_sums", "fixed_point_scale",
           "inverse_scale_squared"]
