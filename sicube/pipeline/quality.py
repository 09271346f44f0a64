"""Suspicious days: per-day statistics of the raw field, and the rules that flag a day.

No I/O, no Dask, no Zarr. The ingest stage computes `day_stats` of every newly decoded
day (one numba pass over the grid, a few ms at full resolution) and keeps them in the
day's provenance; the builder runs `judge` over the whole span after every ingest, so a
day's flags always follow from its own statistics and its neighbours', whatever run
ingested them (a first build, a resumed one, an update that added days after it).

The statistics are taken over the cells that are not land on the product's shipped
coastline (`sicube.pipeline.mask.coastline_land`), not over the cube's own land mask: that mask is
computed after ingest from the very days being judged (and changes as days arrive), while
the coastline is fixed, so a day's statistics never change once it is ingested. The pole
hole is counted as ocean: it is missing on every day alike, so it lowers every day's
`obs_fraction` by the same amount and does not affect the rules.

The rules (`QualityRules`, every threshold settable, `DayQuality` flags in `sicube.datacube.cube`):

- ALL_EQUAL: every observed ocean value of the day is the same (an all-zero day), or the
  day has no observed ocean value at all.
- OBS_SHARE: the day's `obs_fraction` differs from the median of the observed days within
  ``window // 2`` calendar days either side (the day itself left out) by more than
  ``max(k * 1.4826 * MAD, min_obs_deviation)``, MAD the median absolute deviation of those
  neighbours (1.4826 MAD estimates a standard deviation). Judged only with at least
  `min_neighbours` neighbours.
- EXTENT_JUMP: the day before and the day after are both observed, the day's `extent_raw`
  is off their mean by more than ``max(extent_jump * mean, min_extent_jump * ocean area)``
  and the next day comes back: the two neighbours differ by less than half that jump.
- OUT_OF_RANGE: the share of ocean cells outside [0, 100] (set NaN by the reader) exceeds
  the neighbours' median by more than ``max(k * 1.4826 * MAD, min_out_of_range)``: a
  product that writes a constant flag value on land every day is not flagged, a day with a
  patch of garbage is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.lib.stride_tricks import sliding_window_view

from sicube.datacube.cube import DayQuality
from sicube.params import EXTENT_THRESHOLD_PERCENT
from sicube.params import QualityRules as QualityRules  # its home; also importable from here

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD x this estimates a normal standard deviation
# Keys of a day's statistics, as kept in its provenance ("stats").
STAT_KEYS = ("obs_fraction", "zero_fraction", "mean_conc", "extent_raw", "min", "max",
             "out_of_range", "ocean_km2")


@dataclass(frozen=True)
class StatCells:
    """Where a day's statistics are taken: the ocean cells (not shipped land), each cell's
    area in m² (broadcast from one nominal value when the cube has no cell_area) and the
    ocean's total in km², summed once here rather than again for every day."""

    land: np.ndarray  # bool (y, x)
    area_m2: np.ndarray  # float64 (y, x), possibly a broadcast view of one value
    ocean_km2: float

    @classmethod
    def make(cls, land: np.ndarray, x: np.ndarray, y: np.ndarray,
             cell_area_m2: np.ndarray | None = None) -> StatCells:
        """Cells of a grid: `cell_area_m2` when given, else |dx·dy| of the projected grid."""
        land = np.ascontiguousarray(land, bool)
        if cell_area_m2 is not None:
            area = np.asarray(cell_area_m2, np.float64)
        else:
            nominal = abs(float(x[1] - x[0]) * float(y[1] - y[0])) if x.size > 1 else 0.0
            area = np.broadcast_to(np.float64(nominal), land.shape)
        return cls(land, area, float(np.sum(area, where=~land)) / 1e6)


@njit(nogil=True, cache=True)
def _stats_kernel(field, land, area):
    n_ocean = 0
    n_obs = 0
    n_zero = 0
    total = 0.0
    extent = 0.0
    lo = np.inf
    hi = -np.inf
    ny, nx = field.shape
    for i in range(ny):
        for j in range(nx):
            if land[i, j]:
                continue
            n_ocean += 1
            v = field[i, j]
            if v != v:
                continue
            n_obs += 1
            total += v
            if v == 0.0:
                n_zero += 1
            if v >= EXTENT_THRESHOLD_PERCENT:
                extent += area[i, j]
            lo = min(lo, v)
            hi = max(hi, v)
    return n_ocean, n_obs, n_zero, total, extent, lo, hi


def day_stats(field: np.ndarray, cells: StatCells, out_of_range: int = 0) -> dict[str, float]:
    """A day's statistics over the ocean cells of `field` (percent, NaN = missing).

    obs_fraction: share of ocean cells observed; zero_fraction: share of observed ones that
    are 0; mean_conc: their mean (percent); extent_raw: area (km²) of observed cells >= 15 %;
    min, max: of observed values; out_of_range: share of ocean cells the reader set NaN
    for lying outside [0, 100] (`out_of_range` counts them over the whole grid); ocean_km2.
    Values that cannot be taken (no ocean, no observation) are None.
    """
    n_ocean, n_obs, n_zero, total, extent, lo, hi = _stats_kernel(field, cells.land,
                                                                  cells.area_m2)

    def share(n: float, of: int) -> float | None:
        return float(n) / of if of else None

    return {"obs_fraction": share(n_obs, n_ocean), "zero_fraction": share(n_zero, n_obs),
            "mean_conc": share(total, n_obs),
            "extent_raw": float(extent) / 1e6 if n_ocean else None,
            "min": float(lo) if n_obs else None, "max": float(hi) if n_obs else None,
            "out_of_range": share(out_of_range, n_ocean), "ocean_km2": cells.ocean_km2}


def stats_table(records: Sequence[Mapping | None]) -> dict[str, np.ndarray]:
    """Per-day arrays (float64, NaN where unknown or the day not observed) of `STAT_KEYS`
    from each day's statistics (None for a day without)."""
    table = {key: np.full(len(records), np.nan) for key in STAT_KEYS}
    for i, record in enumerate(records):
        for key, value in (record or {}).items():
            if key in table and value is not None:
                table[key][i] = value
    return table


def _neighbour_medians(values: np.ndarray, half: int, min_neighbours: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per day: the median and the MAD of the known `values` within `half` days either side,
    the day itself left out; NaN where fewer than `min_neighbours` are known.

    All days at once, as rows of a (days, 2 * half + 1) window with the day itself and the
    days beyond the span set NaN: a loop over the days cost a decade's update 0.3 s."""
    padding = np.full(half, np.nan)
    around = sliding_window_view(np.concatenate([padding, values, padding]), 2 * half + 1)
    around = around.copy()
    around[:, half] = np.nan
    enough = np.count_nonzero(~np.isnan(around), axis=1) >= max(min_neighbours, 1)
    median, mad = np.full(values.size, np.nan), np.full(values.size, np.nan)
    if enough.any():
        rows = around[enough]
        median[enough] = np.nanmedian(rows, axis=1)
        mad[enough] = np.nanmedian(np.abs(rows - median[enough, None]), axis=1)
    return median, mad


def judge(table: Mapping[str, np.ndarray], rules: QualityRules
          ) -> tuple[np.ndarray, dict[int, str]]:
    """The `DayQuality` flags (uint8, per day) of the days of `table` (`stats_table`), and
    the reason of each flagged day (index -> text). Days without statistics get 0."""
    obs = np.asarray(table["obs_fraction"], np.float64)
    n = obs.size
    flags = np.zeros(n, np.uint8)
    reasons: dict[int, list[str]] = {}
    known = ~np.isnan(obs)
    half = rules.window // 2

    def flag(i: int, what: DayQuality, text: str) -> None:
        flags[i] |= np.uint8(what)
        reasons.setdefault(i, []).append(text)

    lo, hi = np.asarray(table["min"]), np.asarray(table["max"])
    for i in np.flatnonzero(known):
        if np.isnan(lo[i]):
            flag(i, DayQuality.ALL_EQUAL, "no observed ocean value")
        elif lo[i] == hi[i]:
            flag(i, DayQuality.ALL_EQUAL, f"every observed ocean value is {lo[i]:g} %")

    median, mad = _neighbour_medians(obs, half, rules.min_neighbours)
    limit = np.maximum(rules.k * MAD_TO_SIGMA * mad, rules.min_obs_deviation)
    for i in np.flatnonzero(known & ~np.isnan(median)):
        if abs(obs[i] - median[i]) > limit[i]:
            flag(i, DayQuality.OBS_SHARE, f"observed share {obs[i]:.2f} vs {median[i]:.2f} "
                                          f"on the days within {half} days")

    extent = np.asarray(table["extent_raw"], np.float64)
    ocean = np.asarray(table["ocean_km2"], np.float64)
    for i in range(1, n - 1):
        before, day, after = extent[i - 1], extent[i], extent[i + 1]
        if np.isnan([before, day, after]).any():
            continue
        mean = (before + after) / 2
        jump = day - mean
        limit_jump = max(rules.extent_jump * mean, rules.min_extent_jump * ocean[i])
        if abs(jump) > limit_jump and abs(after - before) < abs(jump) / 2:
            flag(i, DayQuality.EXTENT_JUMP, f"extent {day:.4g} km² vs {before:.4g} the day "
                                            f"before and {after:.4g} the day after")

    bad = np.asarray(table["out_of_range"], np.float64)
    median, mad = _neighbour_medians(bad, half, rules.min_neighbours)
    base = np.where(np.isnan(median), 0.0, median)  # too few neighbours: against none
    spread = np.where(np.isnan(mad), 0.0, rules.k * MAD_TO_SIGMA * mad)
    for i in np.flatnonzero(~np.isnan(bad)):
        if bad[i] - base[i] > max(spread[i], rules.min_out_of_range):
            flag(i, DayQuality.OUT_OF_RANGE, f"{bad[i]:.2%} of ocean cells outside [0, 100] "
                                             f"vs {base[i]:.2%} around")
    return flags, {i: "; ".join(texts) for i, texts in sorted(reasons.items())}


__all__ = ["QualityRules", "STAT_KEYS", "StatCells", "day_stats", "judge",
           "stats_table"]
