"""Day-of-year climatology of a cube: per-cell mean and standard deviation, and anomalies.

The rule. Each date has a day-of-year slot 0..364 of the 365-day (no-leap) calendar: a date
keeps its month and day, so 1 March is slot 59 in every year, and **29 February is pooled
with 28 February** (slot 58: one extra sample there in a leap year, no slot that exists in
one year in four). A slot's sample is every day of the chosen years whose slot lies within
±`half_window` days of it (circular across the new year; default 7, a 15-day window, which
smooths the year-to-year noise of a 10-year record without blurring the melt onset); the mean
and the (population) standard deviation are over that pooled sample, per cell. Only days
with a source file count (`day_observed`; a day flagged in `day_quality`, where the cube has
it, is left out too): the filled field on a day without a file is made of its neighbours.

The reduction is chunk-friendly: per slot, the sum and sum of squares of its days are Dask
sums over the cube's own chunks (each chunk is read once), the circular window is a Dask
overlap along the slot axis; the span is never loaded. `window_sum` and `pooled_mean_std`
are the pure rule, on NumPy arrays, also used for the extent series' band (`sicube.extent`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sicube import cube
from sicube.errors import BadInput

N_SLOTS = 365
DEFAULT_HALF_WINDOW = 7
FEB29_RULE = "29 February is pooled with 28 February (slot 58)"
MEAN, STD, COUNT = "sic_mean", "sic_std", "sample_count"
CHANNEL_STATS = "channel_stats"  # attribute: {channel: [mean, std]} for SICDataset(normalize=)
DAY_QUALITY = "day_quality"  # (time) bitmask from the suspicious-day check, where present
SLOT_CHUNK = 30  # slots per output chunk: (30 + 2k) x 512 x 512 float64 per task, ~90 MB


def day_slot(days: Sequence[dt.date] | np.ndarray) -> np.ndarray:
    """The no-leap day-of-year slot 0..364 of each date (29 February -> 28 February's, 58)."""
    dates = np.asarray(days, dtype="datetime64[D]")
    years = dates.astype("datetime64[Y]")
    doy = (dates - years).astype(np.int64)  # 0-based day of the year
    leap = _is_leap(years.astype(np.int64) + 1970)
    # In a leap year, 29 February (doy 59) joins 28 February and later days move back one.
    return np.where(leap & (doy >= 59), doy - 1, doy)


def _is_leap(year: np.ndarray) -> np.ndarray:
    return (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))


def window_sum(values: np.ndarray, half_window: int) -> np.ndarray:
    """Σ over slots s-k..s+k (circular, k = `half_window`) along axis 0 of `values`."""
    k = int(half_window)
    n = values.shape[0]
    if not 0 <= k < n:
        raise ValueError(f"half_window {k}: must be in 0..{n - 1}")
    values = np.asarray(values, np.float64)
    return _sliding_sum(np.concatenate([values[n - k:], values, values[:k]]), k)


def _sliding_sum(padded: np.ndarray, k: int) -> np.ndarray:
    """Σ of 2k+1 consecutive entries along axis 0 of `padded`: len(padded) - 2k results."""
    total = np.zeros((padded.shape[0] - 2 * k, *padded.shape[1:]), np.float64)
    for j in range(2 * k + 1):  # adds in a fixed order: the same result for any chunking
        total += padded[j:j + total.shape[0]]
    return total


def pooled_mean_std(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray,
                    half_window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per slot of the samples pooled over ±`half_window` slots.

    `sums`, `squares`: (365, ...) per-slot sums of values and of their squares; `counts`
    (365,) days per slot. A slot with no sample in its window is NaN.
    """
    n = window_sum(np.asarray(counts, np.float64), half_window)
    n = n.reshape(n.shape + (1,) * (np.ndim(sums) - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = window_sum(sums, half_window) / n
        var = window_sum(squares, half_window) / n - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


def parse_years(years: str | Sequence[int]) -> tuple[int, int]:
    """(first, last) of "2013-2022", "2016", or a pair; BadInput otherwise."""
    try:
        if isinstance(years, str):
            parts = years.split("-")
            first, last = int(parts[0]), int(parts[-1])
            if len(parts) > 2:
                raise ValueError
        elif isinstance(years, int):
            first = last = years
        else:
            first, last = (int(v) for v in years)
    except (TypeError, ValueError):
        raise BadInput(f"--years {years!r}: expected FIRST-LAST, e.g. 2013-2022") from None
    if last < first:
        raise BadInput(f"--years {years}: the last year is before the first")
    return first, last


def selected_days(ds, first: int, last: int) -> np.ndarray:
    """Indices of the cube's days in years first..last with a file and no quality flag."""
    times = ds["time"].values.astype("datetime64[D]")
    year = times.astype("datetime64[Y]").astype(np.int64) + 1970
    keep = (year >= first) & (year <= last) & ds[cube.OBSERVED].values.astype(bool)
    if DAY_QUALITY in ds:
        keep &= ds[DAY_QUALITY].values == 0
    return np.nonzero(keep)[0]


@dataclass
class ClimatologySummary:
    """What `climatology` wrote, for the command's one-screen summary."""

    out: str
    years: tuple[int, int]
    days_used: int
    half_window: int
    shape: tuple[int, int, int]

    def text(self) -> str:
        return (f"climatology {self.out}\n"
                f"years       {self.years[0]}-{self.years[1]} ({self.days_used} observed days)\n"
                f"window      ±{self.half_window} days; {FEB29_RULE}\n"
                f"shape       {' x '.join(map(str, self.shape))} (day_of_year, y, x)")


def _slot_sums(conc, times: np.ndarray, keep: np.ndarray):
    """Lazy (365, y, x) sums and sums of squares per slot of `conc`'s days where `keep`
    (dask, float64); a slot without days is 0.

    Year by year: a year's days are consecutive in the cube and in slot order, so each year
    is its slice of the cube (dropped days zeroed, 29 February added to 28 February) padded
    to 365 slots, and the years are added: every cube chunk is read once, the graph has a
    few tasks per chunk.
    """
    import dask.array as da

    spatial = conc.chunks[1:]
    years = times.astype("datetime64[Y]").astype(np.int64) + 1970
    sums = squares = None
    for year in np.unique(years[keep]):
        rows = np.nonzero(years == year)[0]
        a, b = int(rows[0]), int(rows[-1]) + 1
        weight = keep[a:b].astype(np.float64)[:, None, None]
        values = conc[a:b].astype(np.float64) * weight
        parts = []
        for x in (values, values * values):
            slots = day_slot(times[a:b])
            if _is_leap(np.array(year)) and (slots == 58).sum() == 2:  # 28 and 29 Feb
                i = int(np.nonzero(slots == 58)[0][0])
                x = da.concatenate([x[:i], x[i:i + 2].sum(axis=0, keepdims=True), x[i + 2:]])
                slots = np.delete(slots, i + 1)
            before, after = int(slots[0]), N_SLOTS - 1 - int(slots[-1])
            pad = [da.zeros((n, *conc.shape[1:]), np.float64, chunks=((n,), *spatial))
                   for n in (before, after)]
            # The same slot chunks every year, so that the years add chunk by chunk.
            parts.append(da.concatenate([p for p in (pad[0], x, pad[1]) if p.shape[0]])
                         .rechunk({0: SLOT_CHUNK}))
        sums = parts[0] if sums is None else sums + parts[0]
        squares = parts[1] if squares is None else squares + parts[1]
    return sums, squares


def _window_sum_dask(values, half_window: int):
    """`window_sum` of a dask (365, y, x) array: a periodic overlap along the slot axis."""
    import dask.array as da

    k = int(half_window)
    # Chunks of at least max(SLOT_CHUNK, k) slots: the overlap needs depth <= chunk size.
    parts = max(1, N_SLOTS // max(SLOT_CHUNK, k))
    values = values.rechunk({0: tuple(len(p) for p in np.array_split(np.arange(N_SLOTS),
                                                                     parts))})
    if k == 0:
        return values
    haloed = da.overlap.overlap(values, depth={0: k, 1: 0, 2: 0},
                                boundary={0: "periodic", 1: "none", 2: "none"})
    return haloed.map_blocks(_sliding_sum, k, dtype=np.float64,
                             chunks=values.chunks)


def compute(store: str | os.PathLike, years: str | Sequence[int], *,
            half_window: int = DEFAULT_HALF_WINDOW):
    """The climatology of `store` over `years` as a lazy xarray Dataset (see the module), and
    the lazy `channel_stats` ({channel: (mean, std)})."""
    import dask.array as da
    import xarray as xr

    k = int(half_window)
    if not 0 <= k < N_SLOTS // 2:
        raise BadInput(f"--half-window {half_window}: must be in 0..{N_SLOTS // 2 - 1}")
    first, last = parse_years(years)
    ds = cube.open_cube(store)
    index = selected_days(ds, first, last)
    times = ds["time"].values.astype("datetime64[D]")
    if index.size == 0:
        span = f"{ds['time'].values[0]!s:.10}..{ds['time'].values[-1]!s:.10}"
        raise BadInput(f"--years {first}-{last}: the cube ({span}) has no observed day in them")
    conc = ds[cube.CONC].data
    counts = np.bincount(day_slot(times[index]), minlength=N_SLOTS).astype(np.float64)
    keep = np.zeros(times.size, bool)
    keep[index] = True
    sums, squares = _slot_sums(conc, times, keep)
    n = window_sum(counts, k)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _window_sum_dask(sums, k) / np.where(n > 0, n, np.nan)
        var = _window_sum_dask(squares, k) / np.where(n > 0, n, np.nan) - mean**2
    std = da.sqrt(da.maximum(var, 0.0))
    ocean = ds[cube.LAND].data == 0
    stats = _channel_stats(sums, squares, counts, mean, ocean)
    coords = {"day_of_year": ("day_of_year", np.arange(1, N_SLOTS + 1, dtype=np.int16),
                              {"long_name": "day of the 365-day year (no-leap calendar); "
                                            + FEB29_RULE}),
              "y": ds["y"], "x": ds["x"], cube.GRID_MAPPING: ds[cube.GRID_MAPPING]}
    attrs_common = {"grid_mapping": cube.GRID_MAPPING, "units": "1"}
    out = xr.Dataset(
        {MEAN: (("day_of_year", "y", "x"), mean.astype(np.float32).rechunk({0: SLOT_CHUNK}),
                {**attrs_common, "long_name": "sea_ice_conc mean over the pooled days"}),
         STD: (("day_of_year", "y", "x"), std.astype(np.float32).rechunk({0: SLOT_CHUNK}),
               {**attrs_common, "long_name": "sea_ice_conc population standard deviation"}),
         COUNT: (("day_of_year",), window_sum(counts, k).astype(np.int32),
                 {"long_name": "observed days pooled into each day of year"})},
        coords=coords,
        attrs={"title": "sicube day-of-year climatology of sea_ice_conc",
               "source_store": str(store), "years": f"{first}-{last}", "half_window": k,
               "feb29": FEB29_RULE, "days_used": int(index.size), "Conventions": "CF-1.8"})
    return out, stats


def _channel_stats(sums, squares, counts, mean, ocean):
    """Lazy [mean, std] over ocean cells of sea_ice_conc and of its anomaly (what
    `SICDataset(normalize=True)` divides by)."""
    import dask.array as da

    w = ocean.astype(np.float64)
    n = counts.sum() * w.sum()
    total, total_sq = (sums * w).sum(), (squares * w).sum()
    m = da.nan_to_num(mean)
    # Σ (x - m_s)² over a slot's days = Q_s - 2 m_s S_s + N_s m_s²
    anomaly_sum = total - (counts[:, None, None] * m * w).sum()
    anomaly_sq = (squares * w).sum() - 2 * (m * sums * w).sum() + (
        counts[:, None, None] * m * m * w).sum()
    return {cube.CONC: (total / n, da.sqrt(da.maximum(total_sq / n - (total / n) ** 2, 0))),
            "anomaly": (anomaly_sum / n,
                        da.sqrt(da.maximum(anomaly_sq / n - (anomaly_sum / n) ** 2, 0)))}


def climatology(store: str | os.PathLike, years: str | Sequence[int],
                out: str | os.PathLike, *, half_window: int = DEFAULT_HALF_WINDOW,
                overwrite: bool = False) -> ClimatologySummary:
    """Write the day-of-year climatology of the cube at `store` over `years` to `out` (Zarr).

    `out` holds `sic_mean`, `sic_std` (day_of_year, y, x) float32, `sample_count`
    (day_of_year), and in its attributes the years, the window, the 29 February rule and
    `channel_stats` ({channel: [mean, std]} of sea_ice_conc and anomaly over ocean cells),
    which `SICDataset(normalize=True)` uses. Written into a temporary folder renamed into
    place: all or nothing. BadInput (one line) on bad years, window, or an existing `out`.
    """
    import dask
    import zarr

    out = Path(out)
    if out.exists() and not overwrite:
        raise BadInput(f"--out {out}: exists; remove it or choose another path")
    ds, stats = compute(store, years, half_window=half_window)
    for name in (MEAN, STD):
        ds[name].encoding["chunks"] = tuple(c[0] for c in ds[name].data.chunks)
    tmp = out.with_name(f".{out.name}.writing-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            # One pass over the cube for the maps and the channel statistics.
            _, stats = dask.compute(ds.to_zarr(tmp, mode="w", zarr_format=3, compute=False),
                                    stats)
            group = zarr.open_group(str(tmp), mode="r+")
            group.attrs[CHANNEL_STATS] = json.dumps({k: [float(v[0]), float(v[1])]
                                                     for k, v in stats.items()})
            zarr.consolidate_metadata(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first, last = parse_years(years)
    return ClimatologySummary(str(out), (first, last), int(ds.attrs["days_used"]),
                              int(ds.attrs["half_window"]), tuple(ds[MEAN].shape))


def open_climatology(path: str | os.PathLike):
    """A climatology store written by `climatology`, lazily; BadInput when it is not one."""
    import xarray as xr

    try:
        ds = xr.open_zarr(str(path))
    except Exception as err:  # not there, not Zarr
        raise BadInput(f"climatology: {path} is not a readable Zarr store ({err})") from None
    if MEAN not in ds or "day_of_year" not in ds.dims:
        raise BadInput(f"climatology: {path} is not a sicube climatology (no {MEAN})")
    return ds


__all__ = ["DEFAULT_HALF_WINDOW", "FEB29_RULE", "N_SLOTS", "climatology", "compute",
           "day_slot", "open_climatology", "pooled_mean_std", "window_sum"]
