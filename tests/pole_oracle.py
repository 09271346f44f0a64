"""What a cube should hold, computed the slow obvious way, independently of sicube's builder:
the pole hole (sample's own coastline, a breadth-first search) and the fill with its
pole-hole rule (the reference fill, a brute-force ring)."""

from __future__ import annotations

from collections import deque

import numpy as np

from sicube.archive.synthetic import geometry
from sicube.datacube.cube import FillFlag
from sicube.kernels.fill import reference_fill


def expected_pole_hole(raw: np.ndarray, grid: str, step: int) -> np.ndarray:
    """Cells NaN on every observed frame of `raw` (frames all NaN are days without a file),
    not land on the sample's coastline, 4-connected to a cell whose extent holds the pole."""
    geo = geometry(grid, step)
    hole = np.zeros(geo.land.shape, bool)
    if grid.startswith("s"):
        return hole
    observed = raw[~np.isnan(raw).all(axis=(1, 2))]
    candidate = np.isnan(observed).all(axis=0) & ~geo.land
    half = (geo.x[1] - geo.x[0]) / 2
    queue = deque((r, c) for r in range(geo.y.size) for c in range(geo.x.size)
                  if abs(geo.y[r]) <= half and abs(geo.x[c]) <= half and candidate[r, c])
    while queue:
        r, c = queue.popleft()
        if hole[r, c]:
            continue
        hole[r, c] = True
        for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= rr < hole.shape[0] and 0 <= cc < hole.shape[1] and candidate[rr, cc]:
                queue.append((rr, cc))
    return hole


def expected_ring(hole: np.ndarray, land: np.ndarray, width: int) -> np.ndarray:
    """Non-hole, non-land cells within `width` cells (along y and x) of some hole cell."""
    rows, cols = np.indices(hole.shape)
    near = np.zeros(hole.shape, bool)
    for r, c in zip(*np.nonzero(hole), strict=True):
        near |= (np.abs(rows - r) <= width) & (np.abs(cols - c) <= width)
    return near & ~hole & ~land


def expected_cube(raw: np.ndarray, land: np.ndarray, hole: np.ndarray,
                  fill: dict) -> tuple[np.ndarray, np.ndarray]:
    """(sea_ice_conc, fill_flag): the reference fill, NaN -> 0, percent -> fraction, land -> 0;
    then per day every pole-hole cell = the mean of the ring's observed cells (of its filled
    cells on a day with no observed one), flag 4."""
    filled = reference_fill(raw, **fill)
    conc = np.where(np.isnan(filled), 0.0, filled / 100.0)
    conc[:, land] = 0.0
    flags = np.where(~np.isnan(raw), FillFlag.OBSERVED,
                     np.where(np.isnan(filled), FillFlag.NO_NEIGHBOUR, FillFlag.FILLED))
    flags[:, land] = FillFlag.LAND
    if hole.any():
        ring = expected_ring(hole, land, fill["space_window"])
        for t in range(raw.shape[0]):
            seen = raw[t][ring][~np.isnan(raw[t][ring])]
            if seen.size:
                conc[t][hole] = seen.astype(np.float64).mean() / 100.0
            else:
                conc[t][hole] = conc[t][ring & (flags[t] == FillFlag.FILLED)].mean()
            flags[t][hole] = FillFlag.POLE_HOLE
    return conc, flags
