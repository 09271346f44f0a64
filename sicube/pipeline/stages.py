"""The build's stages before the fill, on an open cube: ingest what arrives (recording each
day), judge the days (`sicube.pipeline.quality`), make or keep the mask (`sicube.pipeline.mask`);
and the per-day variables written when a run ends. Each step saves the build's state
(`sicube.pipeline.state`) when it is done, so a killed run redoes only what was unfinished.
"""

from __future__ import annotations

import contextlib

import numpy as np

from sicube.archive import products
from sicube.archive.sources import GridCoords
from sicube.datacube import cube
from sicube.params import OK
from sicube.pipeline import ingest, mask, quality
from sicube.pipeline import state as cube_state
from sicube.pipeline.plan import BuildState
from sicube.pipeline.summary import BuildSummary


def ingest_days(group, state: BuildState, executor, arrivals, grid: GridCoords,
                summary: BuildSummary, progress: bool, cells=None) -> ingest.NanTally:
    """Look for every unobserved day in the source and write the chunks whose days arrived,
    recording each in the state as it is written. `executor` runs the writes
    (`sicube.pipeline.executors`: here in two threads, or on a cluster's workers, whose
    tasks read their own cell areas); `arrivals` are its, for those days; `cells` the
    grid's cell areas for the day statistics."""
    chunk = group[cube.RAW].chunks[0]
    days = state.days
    looked_for = state.unobserved()
    kept = {}
    for i, day in enumerate(days):
        if f"{day:%Y%m%d}" in state.observed:
            kept.setdefault(i // chunk, []).append(i % chunk)
    failed_before = set(state.failed)
    before = set(state.missing) | failed_before
    summary.looked_again = len(before)
    position = {day: i for i, day in enumerate(days)}

    def record(result: ingest.ChunkResult) -> None:
        changed = []
        news = result.chunk in state.rewrite
        for arrival in result.arrivals:
            key = f"{arrival.day:%Y%m%d}"
            if arrival.status == OK:
                state.record_day(key, OK, result.provenance[key])
                changed.append(position[arrival.day])
                if key in before:
                    summary.recovered.append(arrival.day)
                if key in failed_before:
                    summary.recovered_after_failure.append(arrival.day)
                if arrival.attempts > 1:
                    summary.retried[arrival.day] = arrival.attempts
            else:
                news |= state.record_day(key, arrival.status, arrival.error)
        state.invalidate(changed, chunk)
        state.rewrite.discard(result.chunk)
        if news or changed:  # a day still missing for the same reason changes nothing
            cube_state.save(group, state)

    def will_write(chunks: list[int]) -> None:
        # Said before the write (on a cluster: of every chunk a task may write, before any
        # is submitted, in one save): a run killed during it rewrites the chunk next time.
        state.rewrite.update(chunks)
        cube_state.save(group, state)

    tally = executor.ingest(group, days, looked_for, kept, arrivals, grid,
                            cube_state.cube_crs(group), will_write=will_write, record=record,
                            progress=progress, cells=cells)
    summary.recovered.sort()
    summary.recovered_after_failure.sort()
    return tally


def clean_rewrites(group, state: BuildState, grid: GridCoords) -> None:
    """Rewrite the chunks a killed run was writing: its observed days, NaN elsewhere."""
    chunk = group[cube.RAW].chunks[0]
    for c in sorted(state.rewrite):
        days = state.days[c * chunk:(c + 1) * chunk]
        kept = [i for i, d in enumerate(days) if f"{d:%Y%m%d}" in state.observed]
        tally = ingest.NanTally(np.zeros(grid.shape, np.int32))
        ingest.write_chunk(group, c, state.days, [], kept, grid, cube_state.cube_crs(group),
                           tally, contextlib.nullcontext())
        state.invalidate(range(c * chunk, c * chunk + len(days)), chunk)
        state.rewrite.discard(c)
        cube_state.save(group, state)


def judge_days(group, state: BuildState, grid: GridCoords) -> np.ndarray:
    """Flag the suspicious days of the whole span from the days' statistics
    (`sicube.pipeline.quality`), and forget the fills that depend on a day whose verdict changed.

    Run after every ingest, over every day: a day's rules look at its neighbours, so days
    added by an update (or a late file) change the verdict of the days before them. Days
    ingested before statistics existed get theirs from the store, once. Returns the
    per-day `day_quality` flags.
    """
    days = [f"{d:%Y%m%d}" for d in state.days]
    lacking = [i for i, k in enumerate(days)
               if k in state.observed and "stats" not in state.observed[k]]
    if lacking:
        cells = ingest.stat_cells(group, grid, cube_state.cube_crs(group))
        raw = group[cube.RAW]
        for i in lacking:
            provenance = state.observed[days[i]]
            provenance["stats"] = quality.day_stats(
                np.ascontiguousarray(raw[i], np.float32), cells,
                int(provenance.get("out_of_range_cells") or 0))
    table = quality.stats_table([(state.observed.get(k) or {}).get("stats") for k in days])
    flags, reasons = quality.judge(table, state.args.quality)
    changed = state.judge({days[i]: why for i, why in reasons.items()},
                          group[cube.RAW].chunks[0])
    if lacking or changed:
        cube_state.save(group, state)
    return flags


def write_day_quality(group, state: BuildState, flags: np.ndarray) -> None:
    """The per-day statistics and `day_quality` (cubes from before them have no place)."""
    if cube.DAY_QUALITY not in group:
        return
    table = quality.stats_table([(state.observed.get(f"{d:%Y%m%d}") or {}).get("stats")
                                 for d in state.days])
    for name in cube.DAY_STATS:
        group[name][:] = table[name].astype(np.float32)
    group[cube.DAY_QUALITY][:] = flags


def write_observed(group, state: BuildState) -> None:
    """`day_observed` and `sensor` from the state, written when the run ends: a reader of a
    cube being updated sees a day as observed only once it is ingested and filled."""
    group[cube.OBSERVED][:] = [f"{d:%Y%m%d}" in state.observed for d in state.days]
    if cube.SENSOR in group:  # a cube from before the variable existed has none
        group[cube.SENSOR][:] = np.array(
            [sensor_code(state.observed.get(f"{d:%Y%m%d}")) for d in state.days], np.uint8)


def sensor_code(provenance: dict | None) -> int:
    """The `sensor` value of a day: its provenance's sensor, else its file name's; 0 if none."""
    if provenance is None:
        return 0
    name = provenance.get("sensor")
    if name is None:
        parts = products.file_name_parts(str(provenance.get("name", "")))
        name = parts.sensor if parts else None
    return products.SENSORS[name].code if name in products.SENSORS else 0


def make_mask(group, state: BuildState, grid: GridCoords, tally: ingest.NanTally) -> None:
    """Store land_mask, nan_ratio and pole_hole: given, kept, or from the observed days.

    The NaN frequency is updated incrementally: the counts of the days it already covers
    come back exactly from nan_ratio x days; the newly observed days are added from this
    run's tally (or read back from the store when a killed run ingested them). On north
    grids the pole hole (`mask.detect_pole_hole`: missing on every observed day, not land on
    the shipped coastline, connected to the pole) is taken out of the land. A given mask
    brings its pole hole, or (a mask from before the pole hole) its land cells off the
    coastline that touch the pole become the hole. When the land mask or the hole changes,
    every fill is redone.
    """
    south = cube_state.cube_crs(group).south
    if state.args.mask is not None and not state.mask_frozen:
        given = mask.load_mask(state.args.mask, grid)
        land, ratio = given.land_mask, given.nan_ratio
        hole = (given.pole_hole if given.pole_hole is not None
                else mask.pole_hole_from_land(land, grid.x, grid.y, south))
        if south:
            hole = np.zeros_like(hole)
        state.mask_frozen = True
    elif state.mask_frozen:
        state.mask_done = True
        cube_state.save(group, state)
        return
    else:
        counted = len(state.mask_days)
        counts = np.zeros(grid.shape, np.int64)
        if counted:
            counts += np.rint(group[cube.NAN_RATIO][:].astype(np.float64) * counted).astype(
                np.int64)
        # Suspicious days (policy "missing") do not count: those counted before they were
        # found suspicious, and those in this run's tally, are taken out again.
        excluded = state.excluded()
        eligible = set(state.observed) - excluded
        dropped = state.mask_days - eligible
        new = eligible - state.mask_days
        # This run's tally covers days newly observed in it (never already in the mask); the
        # others (ingested by a killed run) are counted from the store.
        unread = sorted(new - tally.days)
        counts += tally.missing
        index = {f"{d:%Y%m%d}": i for i, d in enumerate(state.days)}

        def nan_counts(keys) -> np.ndarray:
            import dask.array as da

            rows = np.array([index[k] for k in sorted(keys)])
            return da.isnan(da.from_zarr(group[cube.RAW])[rows]).sum(
                axis=0, dtype=np.int64).compute()

        if unread:
            counts += nan_counts(unread)
        taken_out = dropped | (tally.days & excluded)
        if taken_out:
            counts -= nan_counts(taken_out)
        state.mask_days -= dropped
        total = counted - len(dropped) + len(new)
        ratio = mask.ratio_from_counts(counts, total)
        land = mask.land_from_ratio(ratio, state.args.mask_threshold)
        hole = mask.detect_pole_hole((counts == total) & (total > 0), grid.x, grid.y, south)
        state.mask_days |= new
        observed_days = sorted(state.mask_days)
        state.mask_span = (f"{state.args.start}/{state.args.end} ({total} observed days"
                           + (f", {observed_days[0]}..{observed_days[-1]})" if total else ")"))
    has_hole = cube.POLE_HOLE in group
    if not has_hole:  # a cube from before the pole hole: no place to keep it, mask as before
        hole = np.zeros_like(hole)
    land = (land * (1 - hole)).astype(np.uint8)  # the pole hole is ocean, never land
    if not (np.array_equal(group[cube.LAND][:], land)
            and (not has_hole or np.array_equal(group[cube.POLE_HOLE][:], hole))):
        state.forget_every_fill()
    group[cube.NAN_RATIO][:] = ratio
    group[cube.LAND][:] = land
    if has_hole:
        group[cube.POLE_HOLE][:] = hole
    state.mask_done = True
    cube_state.save(group, state)
