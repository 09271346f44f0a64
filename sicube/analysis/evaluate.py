"""Fill quality: hide observed ocean cells, fill them back and score each parameter set.

Which ``alpha``, ``sigma`` and windows suit a region depends on how its ice moves and how its
gaps look. :func:`evaluate_fill` answers that from the data themselves: it hides a share of the
observed ocean cells (scattered cells and swath-like stripes that move every day), fills the
array with every parameter set, and reports RMSE, MAE and bias against the hidden values.

The hidden cells are a pure function of the seed and each cell's (t, y, x) position, so NumPy
and Dask inputs, any chunking and any scheduler hide exactly the same cells.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sicube.datacube import cube
from sicube.dates import count_text
from sicube.errors import BadInput
from sicube.kernels.fill import (
    DEFAULT_MAX_GAP,
    DEFAULT_METHOD,
    METHODS,
    FillParams,
    gaussian_fill,
    is_dask,
)

FILL_DEFAULTS = {**FillParams().to_dict(), "method": DEFAULT_METHOD, "max_gap": DEFAULT_MAX_GAP}
"""Every parameter a set may name, with the value used when it does not."""

METRICS = ("rmse", "mae", "bias", "n_hidden", "n_filled")


def _uniform(seed: int, index: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, cell index) by SplitMix64: the same for any chunking."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def hide_mask(
    shape: tuple[int, int, int],
    where: tuple[slice, slice, slice],
    hide_fraction: float,
    stripes: bool,
    seed: int,
) -> np.ndarray:
    """Cells to hide in the part ``where`` of an array of ``shape``, as a boolean array.

    Half of ``hide_fraction`` (all of it without ``stripes``) are straight stripes across each
    day, their direction and position drawn per day like the gaps between satellite swaths; the
    rest are scattered cells. Only observed ocean cells are hidden later.
    """
    nt, ny, nx = shape
    t = np.arange(where[0].start, where[0].stop)[:, None, None]
    y = np.arange(where[1].start, where[1].stop)[None, :, None]
    x = np.arange(where[2].start, where[2].stop)[None, None, :]
    stripe_share = hide_fraction / 2.0 if stripes else 0.0
    scatter_share = (hide_fraction - stripe_share) / (1.0 - stripe_share)
    hidden = _uniform(seed, (t * ny + y) * nx + x) < scatter_share
    if stripe_share > 0.0:
        # A stripe period of a quarter of the grid: wide stripes (a tenth of a period for a
        # hide_fraction of 0.2) test the fill far from data, as real swath gaps do.
        period = float(min(200, max(8, min(ny, nx) // 4)))
        for i, day in enumerate(t[:, 0, 0]):
            rng = np.random.default_rng([seed, int(day)])
            angle, offset = rng.uniform(0.0, np.pi), rng.uniform(0.0, period)
            along = x[0] * np.cos(angle) + y[0] * np.sin(angle) + offset
            hidden[i] |= np.mod(along, period) < stripe_share * period
    return hidden


def _check_sets(parameter_sets: Any) -> list[dict]:
    if isinstance(parameter_sets, dict) or not parameter_sets:
        raise BadInput("parameter_sets must be a non-empty list of dicts of fill parameters")
    full = []
    for params in parameter_sets:
        if not isinstance(params, dict):
            raise BadInput(f"parameter_sets: each set must be a dict, got {params!r}")
        unknown = set(params) - set(FILL_DEFAULTS)
        if unknown:
            raise BadInput(
                f"parameter_sets: unknown parameter {sorted(unknown)[0]!r}; "
                f"known: {', '.join(FILL_DEFAULTS)}"
            )
        full.append({**FILL_DEFAULTS, **params})
    return full


def evaluate_fill(
    array: Any,
    parameter_sets: list[dict],
    hide_fraction: float = 0.1,
    stripes: bool = True,
    seed: int = 0,
    land_mask: Any = None,
) -> list[dict]:
    """Score fill parameter sets by filling back hidden observations.

    Parameters
    ----------
    array
        (time, y, x) percent values, NaN = missing; NumPy or Dask (then computed chunk by chunk).
    parameter_sets
        Dicts of :func:`sicube.gaussian_fill` parameters (``time_window``, ``space_window``,
        ``alpha``, ``sigma``, ``method``, ``max_gap``); missing keys take the defaults.
    hide_fraction
        Share of the observed ocean cells to hide, in (0, 1).
    stripes
        Hide half of that share as swath-like stripes, the rest as scattered cells; otherwise
        scattered cells only.
    seed
        The same seed hides the same cells.
    land_mask
        Optional (y, x) mask, 1 = land: land cells are never hidden or filled.

    Returns
    -------
    list of dict
        One row per parameter set, in the given order: the full parameters, then ``rmse``,
        ``mae`` and ``bias`` (mean of filled minus true, percent) over the hidden cells the fill
        gave a value, ``n_hidden`` and ``n_filled`` (hidden cells that got a value).
    """
    sets = _check_sets(parameter_sets)
    if (
        isinstance(hide_fraction, bool)
        or not isinstance(hide_fraction, numbers.Real)
        or not 0.0 < hide_fraction < 1.0
    ):
        raise BadInput(f"hide_fraction must be between 0 and 1 (exclusive), got {hide_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise BadInput(f"seed must be a non-negative integer, got {seed!r}")
    for params in sets:
        if params["method"] not in METHODS:
            raise BadInput(f"method must be one of {', '.join(METHODS)}, got {params['method']!r}")
    lazy = is_dask(array)
    if not lazy:
        array = np.asarray(array)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
        raise BadInput(
            f"array must be a 3-D (time, y, x) floating-point array, got {array.ndim}-D "
            f"{array.dtype}"
        )
    if land_mask is not None and not is_dask(land_mask):
        land_mask = np.asarray(land_mask)
    if land_mask is not None and tuple(land_mask.shape) != tuple(array.shape[1:]):
        raise BadInput(
            f"land_mask must have the array's (y, x) shape {tuple(array.shape[1:])}, "
            f"got {tuple(land_mask.shape)}"
        )

    hidden = _hidden(array, float(hide_fraction), bool(stripes), int(seed), land_mask, lazy)
    xp = _array_module(lazy)
    masked = xp.where(hidden, np.float32(np.nan), array).astype(array.dtype)
    rows = []
    for params in sets:
        filled = gaussian_fill(masked, land_mask=land_mask, **params)
        got = hidden & ~xp.isnan(filled)
        err = xp.where(got, filled.astype(np.float64) - array.astype(np.float64), 0.0)
        sums = (hidden.sum(), got.sum(), err.sum(), (err**2).sum(), abs(err).sum())
        if lazy:
            import dask

            sums = dask.compute(*sums)
        n_hidden, n_filled, total, squares, absolute = (float(s) for s in sums)
        n = n_filled if n_filled else math.nan
        rows.append(
            {
                **params,
                "rmse": math.sqrt(squares / n),
                "mae": absolute / n,
                "bias": total / n,
                "n_hidden": int(n_hidden),
                "n_filled": int(n_filled),
            }
        )
    return rows


def _array_module(lazy: bool):
    if lazy:
        import dask.array as da

        return da
    return np


def _hidden(array, hide_fraction, stripes, seed, land_mask, lazy):
    """Boolean array of the observed ocean cells to hide, chunked like ``array``."""
    shape = tuple(array.shape)
    if not lazy:
        hidden = hide_mask(shape, tuple(slice(0, n) for n in shape), hide_fraction, stripes, seed)
        hidden &= ~np.isnan(array)
        if land_mask is not None:
            hidden &= ~np.asarray(land_mask, dtype=bool)[None]
        return hidden
    import dask.array as da

    def block(chunk, block_info=None):
        where = tuple(slice(a, b) for a, b in block_info[0]["array-location"])
        return hide_mask(shape, where, hide_fraction, stripes, seed) & ~np.isnan(chunk)

    hidden = da.map_blocks(block, array, dtype=bool, meta=np.empty((0, 0, 0), bool))
    if land_mask is not None:
        land = da.asarray(land_mask).astype(bool).rechunk(array.chunks[1:])
        hidden = hidden & ~land[None]
    return hidden




def open_raw(
    store: str, start: Any = None, end: Any = None, *, allow_incomplete: bool = False,
    storage_options: dict | None = None,
) -> tuple[Any, np.ndarray | None]:
    """The raw percent values (lazy Dask array) of a cube, cut to [start, end], and its land mask.

    Any Zarr store with a (time, y, x) ``sea_ice_conc_raw`` will do; a sicube cube whose build
    has not finished is refused (IncompleteCube) unless ``allow_incomplete``. Raises BadInput
    with one sentence when the store is missing, is not a readable Zarr store, lacks
    ``sea_ice_conc_raw`` or has no day in the span. `store` is a path or any fsspec URL
    (with `storage_options`), opened by `sicube.datacube.store.open_store`.
    """
    import xarray as xr

    from sicube.dates import parse_date, parse_span

    group = cube.open_group(store, allow_incomplete=allow_incomplete, require_cube=False,
                            storage_options=storage_options)
    try:
        ds = xr.open_zarr(group.store)
    except Exception as err:  # zarr and xarray raise many types for "not a store"
        raise BadInput(
            f"store {store} is not a readable Zarr store ({type(err).__name__})"
        ) from None
    if cube.RAW not in ds or ds[cube.RAW].dims != ("time", "y", "x"):
        raise BadInput(f"store {store} has no {cube.RAW} (time, y, x) variable")
    raw = ds[cube.RAW]
    if start is not None and end is not None:
        first, last = parse_span(start, end)
    else:
        first = parse_date(start, "start") if start is not None else None
        last = parse_date(end, "end") if end is not None else None
    if first is not None or last is not None:
        raw = raw.sel(
            time=slice(
                None if first is None else np.datetime64(first),
                None if last is None else np.datetime64(last),
            )
        )
    if raw.sizes["time"] == 0:
        raise BadInput(f"store {store} has no day between {start} and {end}")
    land = ds[cube.LAND].values.astype(bool) if cube.LAND in ds else None
    return raw.data, land


SCORE_COLUMNS = ("method", "time_window", "space_window", "alpha", "sigma", "max_gap",
                 "rmse", "mae", "bias", "n_filled", "n_hidden")


def write_scores_csv(rows: list[dict], path: str) -> None:
    """Write :func:`evaluate_fill` rows as CSV (``SCORE_COLUMNS``); an OSError names the path."""
    import csv

    from sicube.analysis.report import writing

    with writing(path) as out:
        writer = csv.DictWriter(out, fieldnames=SCORE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def parameter_grid(grid: dict[str, list]) -> list[dict]:
    """Every combination of the values in `grid` (name -> values, in order), as parameter
    sets; `max_gap` only matters to the hybrid method, so a Gaussian set is not repeated
    for each of its values (only the first is kept)."""
    import itertools

    sets = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    gaps = grid.get("max_gap") or [None]
    return [s for s in sets if s.get("method") == "hybrid" or s.get("max_gap") == gaps[0]]


# The options of `sicube evaluate` that list values to try, and the type of their values.
GRID_KINDS = {"method": str, "time_window": int, "space_window": int, "alpha": float,
              "sigma": float, "max_gap": int}


def parse_grid(options: Mapping[str, Any]) -> dict[str, list]:
    """The comma lists of the `GRID_KINDS` options (name -> text; other names are ignored) as
    a parameter grid; BadInput names the option whose item cannot be read."""
    grid = {}
    for name, kind in GRID_KINDS.items():
        values = []
        for item in options[name].split(","):
            try:
                values.append(kind(item.strip()))
            except ValueError:
                option = name.replace("_", "-")
                raise BadInput(f"--{option}: cannot read {item.strip()!r} as "
                               f"{kind.__name__}") from None
        grid[name] = values
    return grid


def evaluate_grid(store: str, grid: dict[str, list], start: Any = None, end: Any = None, *,
                  hide_fraction: float = 0.1, stripes: bool = True, seed: int = 0,
                  allow_incomplete: bool = False, storage_options: dict | None = None,
                  say: Callable[[str], None] | None = None) -> list[dict]:
    """Score every set of `parameter_grid(grid)` on a cube's days [start, end] (`open_raw`,
    `evaluate_fill`), the best first (`sort_scores`). `say`, when given, gets a line
    before the first set and one as each set is scored (`sicube evaluate` prints them)."""
    raw, land = open_raw(store, start, end, allow_incomplete=allow_incomplete,
                         storage_options=storage_options)
    sets = parameter_grid(grid)
    say = say or (lambda line: None)
    nt, ny, nx = raw.shape
    say(f"evaluating {count_text(len(sets), 'parameter set')} on {count_text(nt, 'day')} of "
        f"{ny} x {nx} cells")
    rows = []
    for i, params in enumerate(sets, 1):
        rows += evaluate_fill(raw, [params], hide_fraction=hide_fraction, stripes=stripes,
                              seed=seed, land_mask=land)
        say(f"  {i}/{len(sets)} {params}: rmse {rows[-1]['rmse']:.3f}")
    return sort_scores(rows)


def sort_scores(rows: list[dict]) -> list[dict]:
    """Rows by RMSE, the best first; NaN (nothing was filled) last."""
    return sorted(rows, key=lambda r: (r["rmse"] != r["rmse"], r["rmse"]))


def format_scores(rows: list[dict]) -> list[str]:
    """The `sicube evaluate` table of :func:`evaluate_fill` rows, then the best set in words
    (rows sorted by `sort_scores`)."""
    header = ["method", "tw", "sw", "alpha", "sigma", "gap", "RMSE", "MAE", "bias",
              "filled", "hidden"]
    lines = [" ".join(f"{h:>9s}" for h in header)]
    for r in rows:
        gap = r["max_gap"] if r["method"] == "hybrid" else "-"
        lines.append(f"{r['method']:>9s} {r['time_window']:>9d} {r['space_window']:>9d} "
                     f"{r['alpha']:>9g} {r['sigma']:>9g} {gap!s:>9s} {r['rmse']:>9.3f} "
                     f"{r['mae']:>9.3f} {r['bias']:>+9.3f} {r['n_filled']:>9d} "
                     f"{r['n_hidden']:>9d}")
    best = rows[0]
    lines.append(
        f"best: method={best['method']} time_window={best['time_window']} "
        f"space_window={best['space_window']} alpha={best['alpha']:g} sigma={best['sigma']:g}"
        + (f" max_gap={best['max_gap']}" if best["method"] == "hybrid" else "")
        + f" (RMSE {best['rmse']:.3f}, MAE {best['mae']:.3f}, bias {best['bias']:+.3f} percent"
        f" over {best['n_filled']} of {count_text(best['n_hidden'], 'hidden cell')})")
    return lines
