"""The north pole hole: the ring around it and the rule that fills it after the Gaussian fill.

Every cell of the hole gets, per day, the mean of the observed cells of the ring around it
(cells within ``space_window`` cells of the hole, not land), flag POLE_HOLE (4); on a day the
ring has no observed cell, the mean of its filled cells. The builder finds the hole
(`sicube.pipeline.mask`) and applies the rule after each fill batch.
"""

from __future__ import annotations

import numpy as np

from sicube.datacube.cube import FillFlag


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
