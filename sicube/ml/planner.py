"""Makes a dataset's `SamplePlan` from a cube: reads what the plan depends on, once.

The plan's rules are pure (`sicube.ml.sample_plan`); this module gives them their inputs:
the cube's calendar and the span on it, the grid and its chunks, the days observed and the
suspicious ones, the share of filled ocean cells per day in the ROI (for the quality filter,
cached on disk), and the climatology's statistics (for normalisation). It checks every
parameter of `SICDataset` that says *what* the items are, in the order a user meets them,
and reads nothing per item: that is the reader's job, from the finished plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from sicube.cache import cache_dir
from sicube.datacube import cube
from sicube.datacube.store import atomic_file
from sicube.dates import DateLike, parse_date, yyyymmdd
from sicube.errors import BadInput
from sicube.ml.channels import item_channels, normalization
from sicube.ml.reader import decode_days
from sicube.ml.sample_plan import (
    SamplePlan,
    positive_int,
    positive_pair,
    select_windows,
    tile_patches,
)

log = logging.getLogger(__name__)


def plan_samples(store, start_time: DateLike, end_time: DateLike, rule: tuple[int, ...], *,
                 roi=None, coarsen: int = 1, patch_size=None, patch_stride=None,
                 random_patches: int | None = None, variables=(), target_variables=(),
                 apply_land_mask: bool = False, return_mask: bool = False,
                 max_filled_fraction=None, quality_cache=True, allow_unobserved: bool = False,
                 skip_suspicious: bool = False, climatology=None, normalize=None,
                 storage_options: dict | None = None,
                 allow_incomplete: bool = False) -> SamplePlan:
    """The plan of `SICDataset(store, start_time, end_time, *rule, ...)` (see there).

    `rule` is (input_length, pred_length, input_gap, pred_shift, pred_gap, samples_gap).
    Opens the cube for this call only (nothing is kept open).
    """
    group = cube.open_group(store, allow_incomplete=bool(allow_incomplete),
                            storage_options=storage_options)
    day_ints, span = _span(group, start_time, end_time)
    conc = group[cube.CONC]
    grid_shape = tuple(int(n) for n in conc.shape[1:])
    roi, coarsen, frame_shape = _region(grid_shape, roi, coarsen)
    patch_shape, patches, random_patches = _patches(frame_shape, patch_size, patch_stride,
                                                    random_patches)
    inputs_ch, targets_ch = item_channels(variables, target_variables, coarsen)
    channels = (*inputs_ch, *targets_ch)
    stats = _climatology_stats(group, climatology, channels, storage_options)
    normalize = normalization(normalize, stats, channels)
    observed = _usable_days(group, store, allow_unobserved, skip_suspicious)
    fraction = limits = None
    if max_filled_fraction is not None:
        limits = _check_fraction(max_filled_fraction)
        y0, y1, x0, x1 = roi
        ocean = np.asarray(group[cube.LAND][y0:y1, x0:x1]) == 0
        fraction = _filled_fractions(group, store, roi, span, day_ints, ocean, conc.chunks[0],
                                     quality_cache)
    inputs, targets, report = select_windows(span, rule, observed, fraction, limits, day_ints)
    return SamplePlan(
        day_ints, span, inputs, targets, roi, coarsen, frame_shape, patch_shape, patches,
        random_patches, tuple(int(c) for c in conc.chunks), grid_shape, report,
        input_channels=inputs_ch, target_channels=targets_ch,
        apply_land_mask=bool(apply_land_mask), return_mask=bool(return_mask),
        normalize=normalize, climatology=None if climatology is None else str(climatology))


def check_fits(plan: SamplePlan, group, store) -> None:
    """BadInput unless the cube in `group` holds `plan`'s days at its day indices and its grid.

    A cube updated since the plan was made fits (its new days come after the plan's).
    """
    shape = tuple(int(n) for n in group[cube.CONC].shape[1:])
    if shape != tuple(plan.grid_shape):
        raise BadInput(f"plan: made on a {plan.grid_shape[0]} x {plan.grid_shape[1]} grid, "
                       f"{store} is on {shape[0]} x {shape[1]}")
    days = np.array([yyyymmdd(d) for d in decode_days(group["time"])], np.int64)
    n = len(plan.day_ints)
    if len(days) < n or not np.array_equal(days[:n], plan.day_ints):
        held = f"{days[0]}..{days[-1]}" if len(days) else "no day"
        raise BadInput(f"plan: made on a cube of the days {plan.day_ints[0]}.."
                       f"{plan.day_ints[-1]}, {store} holds {held}")


def _span(group, start_time: DateLike, end_time: DateLike) -> tuple[np.ndarray, tuple[int, int]]:
    """YYYYMMDD of every cube day, and the cube day indices of [start_time, end_time]."""
    cube_days = decode_days(group["time"])
    first = parse_date(start_time, "start_time")
    last = parse_date(end_time, "end_time")
    if last < first:
        raise BadInput(f"end_time: {last} is before start_time {first}")
    if first < cube_days[0] or first > cube_days[-1]:
        raise BadInput(f"start_time: {first} is outside the cube "
                       f"({cube_days[0]}..{cube_days[-1]})")
    if last > cube_days[-1]:
        raise BadInput(f"end_time: {last} is outside the cube "
                       f"({cube_days[0]}..{cube_days[-1]})")
    day_ints = np.array([yyyymmdd(d) for d in cube_days], np.int64)
    return day_ints, (cube_days.index(first), cube_days.index(last))


def _region(grid_shape: tuple[int, int], roi, coarsen) -> tuple[tuple, int, tuple[int, int]]:
    """The ROI in grid cells, the coarsening factor and the (coarsened) frame shape."""
    ny, nx = grid_shape
    if roi is None:
        roi = (0, ny, 0, nx)
    try:
        y0, y1, x0, x1 = (int(v) for v in roi)
    except (TypeError, ValueError):
        raise BadInput(f"roi: expected (ymin, ymax, xmin, xmax), got {roi!r}") from None
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise BadInput(f"roi: {roi!r} is not a non-empty rectangle inside the "
                       f"{ny} x {nx} grid (ymin < ymax <= {ny}, xmin < xmax <= {nx})")
    c = positive_int(coarsen, "coarsen")
    if (y1 - y0) % c or (x1 - x0) % c:
        raise BadInput(f"coarsen: {c} does not divide the ROI's {y1 - y0} x {x1 - x0} cells")
    return (y0, y1, x0, x1), c, ((y1 - y0) // c, (x1 - x0) // c)


def _patches(frame_shape: tuple[int, int], patch_size, patch_stride,
             random_patches) -> tuple[tuple[int, int], np.ndarray, int | None]:
    """The patch shape, the patch origins (zeros with random patches: drawn per item) and
    the number of random patches per window (None for a fixed tiling)."""
    h, w = frame_shape
    random_patches = (None if random_patches is None
                      else positive_int(random_patches, "random_patches"))
    if patch_size is None:
        if patch_stride is not None or random_patches is not None:
            raise BadInput("patch_size: needed with patch_stride or random_patches")
        return (h, w), np.zeros((1, 2), np.int64), None
    ph, pw = positive_pair(patch_size, "patch_size")
    if ph > h or pw > w:
        raise BadInput(f"patch_size: {ph} x {pw} is larger than the (coarsened) "
                       f"ROI of {h} x {w}")
    if random_patches is not None:
        if patch_stride is not None:
            raise BadInput("patch_stride: random_patches places patches anywhere")
        return (ph, pw), np.zeros((random_patches, 2), np.int64), random_patches
    stride = positive_pair(patch_stride if patch_stride is not None else (ph, pw),
                           "patch_stride")
    return (ph, pw), tile_patches((h, w), (ph, pw), stride), None


def _climatology_stats(group, climatology, channels: tuple[str, ...],
                       storage_options: dict | None) -> dict:
    """The climatology's per-channel statistics ({} without one), after checking its grid;
    BadInput when the anomaly channel is asked for without a climatology."""
    from sicube.analysis.climatology import CHANNEL_STATS, MEAN, open_climatology

    if "anomaly" in channels and climatology is None:
        raise BadInput("variables: the anomaly channel needs climatology= (a store "
                       "written by `sicube climatology`)")
    if climatology is None:
        return {}
    clim = open_climatology(climatology, storage_options=storage_options)
    grid = tuple(group[cube.CONC].shape[1:])
    if clim[MEAN].shape[1:] != grid:
        raise BadInput(f"climatology: {climatology} is on a {clim[MEAN].shape[1:]} "
                       f"grid, the cube on {grid}")
    return json.loads(clim.attrs.get(CHANNEL_STATS, "{}"))


def _usable_days(group, store, allow_unobserved: bool,
                 skip_suspicious: bool) -> np.ndarray | None:
    """Per cube day, whether windows may touch it (None: every day may): observed unless
    `allow_unobserved`, and not suspicious with `skip_suspicious`."""
    observed = None if allow_unobserved else np.asarray(group[cube.OBSERVED][:], bool)
    if skip_suspicious:
        if cube.DAY_QUALITY not in group:
            raise BadInput(f"skip_suspicious: {store} has no {cube.DAY_QUALITY} "
                           "(built before sicube flagged suspicious days); rebuild it")
        usable = np.asarray(group[cube.DAY_QUALITY][:]) == 0
        observed = usable if observed is None else observed & usable
    return observed


def _check_fraction(value) -> tuple[float, float]:
    pair = value if isinstance(value, (tuple, list)) else (value, value)
    try:
        pair = tuple(float(v) for v in pair)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(0 <= v <= 1 for v in pair):
        raise BadInput(f"max_filled_fraction: expected a share in [0, 1] or a pair "
                       f"(inputs, targets), got {value!r}")
    return pair


def _filled_fractions(group, store, roi: tuple, span: tuple[int, int], day_ints: np.ndarray,
                      ocean: np.ndarray, step: int, quality_cache) -> np.ndarray:
    """Per day of the span: the share of ROI ocean cells whose value was filled (cached)."""
    a, b = span
    cache_file = None
    if quality_cache:
        directory = (cache_dir("filled_fraction") if quality_cache is True
                     else Path(os.fspath(quality_cache)))
        # The key names the cube's content: its group attributes carry the build time
        # and per-day provenance, so a rebuilt cube gets a new entry.
        where = str(store)
        if "://" not in where:  # a local path: the same cube from any working directory
            where = os.path.abspath(where)
        key = json.dumps([where, roi, a, b, day_ints[a], dict(group.attrs)], sort_keys=True,
                         default=str)
        cache_file = directory / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            cached = json.loads(cache_file.read_text())
            if len(cached["fraction"]) == b - a + 1:
                log.info("filled fractions from cache %s", cache_file)
                return np.array(cached["fraction"], np.float64)
    y0, y1, x0, x1 = roi
    n_ocean = max(int(ocean.sum()), 1)
    flags = group[cube.FLAG]
    step = int(step)  # the cube's time chunk
    fractions = []
    # Chunk-aligned batches of days: each chunk is read once, memory stays bounded.
    for t0 in range(a - a % step, b + 1, step):
        lo, hi = max(t0, a), min(t0 + step, b + 1)
        block = np.asarray(flags[lo:hi, y0:y1, x0:x1])
        filled = np.isin(block, cube.NOT_OBSERVED_FLAGS) & ocean
        fractions.append(filled.sum(axis=(1, 2)) / n_ocean)
    fraction = np.concatenate(fractions)
    if cache_file is not None:
        with contextlib.suppress(OSError):
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(cache_file) as tmp:
                tmp.write_text(json.dumps({"store": str(store), "roi": roi,
                                           "days": [int(day_ints[a]), int(day_ints[b])],
                                           "fraction": fraction.tolist()}))
    return fraction
