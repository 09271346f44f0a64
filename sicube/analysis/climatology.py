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

The reduction streams: tile by tile of the grid (on threads), each chosen day is read once
and added to its slot's sum and sum of squares; the circular window and the moments are then
taken on the tile's 365 slots. Memory is set by the tile, never by the span or the grid.
`window_sum` and `pooled_mean_std` are the pure rule, on NumPy arrays, also used for the
extent series' band (`sicube.extent`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sicube.datacube import cube
from sicube.datacube.store import atomic_folder, consolidated_quietly, open_store
from sicube.errors import BadInput

N_SLOTS = 365
DEFAULT_HALF_WINDOW = 7
FEB29_RULE = "29 February is pooled with 28 February (slot 58)"
MEAN, STD, COUNT = "sic_mean", "sic_std", "sample_count"
CHANNEL_STATS = "channel_stats"  # attribute: {channel: [mean, std]} for SICDataset(normalize=)
SLOT_CHUNK = 30  # slots per output chunk


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
    if cube.DAY_QUALITY in ds:  # a cube from before the suspicious-day check has none
        keep &= ds[cube.DAY_QUALITY].values == 0
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


def _template(ds, store, first: int, last: int, k: int, days_used: int, counts: np.ndarray,
              tile: tuple[int, int]):
    """The output Dataset: coordinates, `sample_count` and attributes, with `sic_mean` and
    `sic_std` as lazy placeholders (their chunks are written tile by tile)."""
    import dask.array as da
    import xarray as xr

    shape = (N_SLOTS, ds.sizes["y"], ds.sizes["x"])
    chunks = (SLOT_CHUNK, *tile)
    coords = {"day_of_year": ("day_of_year", np.arange(1, N_SLOTS + 1, dtype=np.int16),
                              {"long_name": "day of the 365-day year (no-leap calendar); "
                                            + FEB29_RULE}),
              "y": ds["y"], "x": ds["x"], cube.GRID_MAPPING: ds[cube.GRID_MAPPING]}
    common = {"grid_mapping": cube.GRID_MAPPING, "units": "1"}
    out = xr.Dataset(
        {MEAN: (("day_of_year", "y", "x"), da.zeros(shape, dtype=np.float32, chunks=chunks),
                {**common, "long_name": "sea_ice_conc mean over the pooled days"}),
         STD: (("day_of_year", "y", "x"), da.zeros(shape, dtype=np.float32, chunks=chunks),
               {**common, "long_name": "sea_ice_conc population standard deviation"}),
         COUNT: (("day_of_year",), window_sum(counts, k).astype(np.int32),
                 {"long_name": "observed days pooled into each day of year"})},
        coords=coords,
        attrs={"title": "sicube day-of-year climatology of sea_ice_conc",
               "source_store": str(store), "years": f"{first}-{last}", "half_window": k,
               "feb29": FEB29_RULE, "days_used": days_used, "Conventions": "CF-1.8"})
    for name in (MEAN, STD):
        out[name].encoding["chunks"] = chunks
    return out


def _tile(conc, rows: slice, cols: slice, index: np.ndarray, slots: np.ndarray,
          counts: np.ndarray, k: int, ocean: np.ndarray, targets) -> np.ndarray:
    """Climatology of one (rows, cols) tile, written into `targets` (mean, std); its share of
    the channel statistics: [Σ x, Σ x², Σ anomaly, Σ anomaly²] over its ocean cells.

    The chosen days (`index`, their `slots`) are read one time chunk at a time and added to
    their slot's sum and sum of squares (float64, 2 x 365 x tile cells): memory is set by
    the tile, not by the span, and every cube chunk is read once per tile.
    """
    h, w = rows.stop - rows.start, cols.stop - cols.start
    sums = np.zeros((N_SLOTS, h, w))
    squares = np.zeros((N_SLOTS, h, w))
    step = conc.chunks[0]
    for chunk in np.unique(index // step):
        mine = (index // step) == chunk
        days = index[mine]
        block = conc[int(days[0]):int(days[-1]) + 1, rows, cols]
        for day, slot in zip(days - days[0], slots[mine], strict=True):
            values = block[day].astype(np.float64)
            sums[slot] += values
            squares[slot] += values * values
    mean, std = pooled_mean_std(sums, squares, counts, k)
    targets[0][:, rows, cols] = mean.astype(np.float32)
    targets[1][:, rows, cols] = std.astype(np.float32)
    weight = ocean.astype(np.float64)
    m = np.nan_to_num(mean)
    n_m = counts[:, None, None] * m
    # Σ over a slot's days of (x - m_s)² = Q_s - 2 m_s S_s + N_s m_s²
    return np.array([(sums * weight).sum(), (squares * weight).sum(),
                     ((sums - n_m) * weight).sum(),
                     ((squares - 2 * m * sums + n_m * m) * weight).sum()])


def climatology(store: str | os.PathLike, years: str | Sequence[int],
                out: str | os.PathLike, *, half_window: int = DEFAULT_HALF_WINDOW,
                overwrite: bool = False, workers: int | None = None,
                tile: int = 256, storage_options: dict | None = None) -> ClimatologySummary:
    """Write the day-of-year climatology of the cube at `store` over `years` to `out` (Zarr).

    `out` holds `sic_mean`, `sic_std` (day_of_year, y, x) float32, `sample_count`
    (day_of_year), and in its attributes the years, the window, the 29 February rule and
    `channel_stats` ({channel: [mean, std]} of sea_ice_conc and anomaly over ocean cells),
    which `SICDataset(normalize=True)` uses. Written into a temporary folder renamed into
    place: all or nothing. BadInput (one line) on bad years, window, or an existing `out`.

    The cube is reduced `tile` x `tile` cells at a time on `workers` threads (default: one
    per core), each holding ~6 x 365 x tile² float64 at its peak (0.9 GB at 256): memory
    does not grow with the span or the grid. Each cube chunk is read once per tile.

    `store` is a path or any fsspec URL, with `storage_options` for its file system (as
    every reader of a cube); `out` is a local path.
    """
    import zarr

    k = int(half_window)
    if not 0 <= k < N_SLOTS // 2:
        raise BadInput(f"--half-window {half_window}: must be in 0..{N_SLOTS // 2 - 1}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise BadInput(f"--out {out}: exists; remove it or choose another path")
    first, last = parse_years(years)
    ds = cube.open_cube(store, storage_options=storage_options)
    index = selected_days(ds, first, last)
    times = ds["time"].values.astype("datetime64[D]")
    if index.size == 0:
        span = f"{ds['time'].values[0]!s:.10}..{ds['time'].values[-1]!s:.10}"
        raise BadInput(f"--years {first}-{last}: the cube ({span}) has no observed day in them")
    slots = day_slot(times[index])
    counts = np.bincount(slots, minlength=N_SLOTS).astype(np.float64)
    conc = cube.open_group(store, storage_options=storage_options)[cube.CONC]
    ocean = ds[cube.LAND].values == 0
    ny, nx = conc.shape[1:]
    size = (min(tile, ny), min(tile, nx))
    template = _template(ds, store, first, last, k, int(index.size), counts, size)
    with atomic_folder(out, replace=True) as tmp, consolidated_quietly():
        template.to_zarr(tmp, mode="w", zarr_format=3, compute=False)
        group = zarr.open_group(str(tmp), mode="r+")
        targets = (group[MEAN], group[STD])
        tiles = [(slice(y, min(y + size[0], ny)), slice(x, min(x + size[1], nx)))
                 for y in range(0, ny, size[0]) for x in range(0, nx, size[1])]
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            parts = list(pool.map(lambda t: _tile(conc, *t, index, slots, counts, k,
                                                  ocean[t], targets), tiles))
        total, total_sq, anomaly, anomaly_sq = np.sum(parts, axis=0)
        n = counts.sum() * ocean.sum()
        stats = {cube.CONC: (total / n, np.sqrt(max(total_sq / n - (total / n) ** 2, 0))),
                 "anomaly": (anomaly / n,
                             np.sqrt(max(anomaly_sq / n - (anomaly / n) ** 2, 0)))}
        group.attrs[CHANNEL_STATS] = json.dumps({c: [float(v[0]), float(v[1])]
                                                 for c, v in stats.items()})
        zarr.consolidate_metadata(str(tmp))
    return ClimatologySummary(str(out), (first, last), int(index.size), k,
                              (N_SLOTS, int(ny), int(nx)))


def open_climatology(path: str | os.PathLike, storage_options: dict | None = None):
    """A climatology store written by `climatology` (a path or fsspec URL, opened through
    `sicube.datacube.store.open_store`), lazily; BadInput when it is not one."""
    import xarray as xr

    try:
        with consolidated_quietly():
            ds = xr.open_zarr(open_store(path, storage_options=storage_options))
    except Exception as err:  # not there, not Zarr
        raise BadInput(f"climatology: {path} is not a readable Zarr store ({err})") from None
    if MEAN not in ds or "day_of_year" not in ds.dims:
        raise BadInput(f"climatology: {path} is not a sicube climatology (no {MEAN})")
    return ds


__all__ = ["DEFAULT_HALF_WINDOW", "FEB29_RULE", "N_SLOTS", "climatology",
           "day_slot", "open_climatology", "pooled_mean_std", "window_sum"]
