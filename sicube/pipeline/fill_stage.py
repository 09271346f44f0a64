"""The build's fill stage: every day whose fill is not current, a batch at a time.

A batch (`sicube.pipeline.plan.FillBatch`) is a `FillJob`: one task per spatial chunk, which
fills the chunk from its `space_window` halo of the batch's read days and writes whole Zarr
chunks of `sea_ice_conc` and `fill_flag` (on this process's threads without Dask, or as a
Dask graph whose tasks read their own haloed windows from the store). A batch that covers a
time chunk in part (an update's refill of the days before its new day) keeps the chunk's
other days as they are. What a batch gives back is a `FillBatchResult`: its flag counts per
time chunk and its share of each day's sea-ice extent and area. The executor
(`sicube.pipeline.executors`) decides where and how many batches run at once; this module
records each finished batch, after setting the north pole hole from its ring
(`fill_pole_hole`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sicube import settings
from sicube.datacube import cube
from sicube.datacube.cube import FillFlag
from sicube.kernels import area
from sicube.kernels.fill import (
    core_in_block,
    fill_fraction_block,
    fill_pole_hole,
    halo_layout,
    pole_hole_ring,
)
from sicube.params import FillParams
from sicube.pipeline import haloed
from sicube.pipeline import state as cube_state
from sicube.pipeline.plan import BuildState, FillBatch, fill_batches
from sicube.pipeline.summary import BuildSummary, count_flags, progress_bar


@dataclass(frozen=True)
class FillBatchResult:
    """What one fill batch gives back (plain arrays: it pickles from a cluster's worker).

    flag_counts : (time chunks of the batch, flags) int64, the cells of each `FillFlag`.
    extent, area : (days of the batch,) float64 km², the sea-ice extent and area of its
        filled cells, before the pole hole; None when the run has no cell areas.
    """

    flag_counts: np.ndarray
    extent: np.ndarray | None = None
    area: np.ndarray | None = None

    @staticmethod
    def pack_block(counts: np.ndarray, sums: np.ndarray | None) -> np.ndarray:
        """One block's share as the float64 vector a Dask array block carries (counts stay
        exact below 2^53): the flattened counts, then the extent and area per day."""
        parts = [counts.reshape(-1).astype(np.float64)]
        if sums is not None:
            parts += [sums[:, 0], sums[:, 1]]
        return np.concatenate(parts).reshape(1, 1, -1)

    @classmethod
    def from_blocks(cls, blocks: np.ndarray, n_chunks: int, n_days: int,
                    with_area: bool) -> FillBatchResult:
        """The batch's result: the sum of its blocks' `pack_block` vectors."""
        n_counts = n_chunks * len(FillFlag)
        out = blocks.reshape(-1, n_counts + 2 * n_days if with_area else n_counts)
        counts = np.rint(out[:, :n_counts]).astype(np.int64).reshape(
            -1, n_chunks, len(FillFlag)).sum(0)
        if not with_area:
            return cls(counts)
        return cls(counts, out[:, n_counts:n_counts + n_days].sum(0),
                   out[:, n_counts + n_days:].sum(0))


@dataclass(frozen=True)
class FillJob:
    """One batch's work for an executor: one task per spatial chunk, none depending on
    another, and the function that makes their packed shares the batch's result (run where
    they were computed: on a cluster, a worker).

    `fill_chunk(iy, ix)` reads the chunk's own haloed window from the store (`blocks`, the
    Dask graph of a cluster or of the processes scheduler); `run_here` instead reads each
    store chunk once and cuts the haloed blocks on this process's threads, without Dask
    (`haloed.map_haloed_blocks`: a daily update does not import it).
    """

    fill_chunk: Callable[[int, int], np.ndarray]
    fill_block: Callable[..., np.ndarray]
    raw: object  # the store's raw array, and its land mask
    land: object
    days: tuple[int, int]  # the batch's read days
    layout: tuple[tuple, tuple]  # (spatial chunks, halo depth), `fill_layout`
    per_block: int
    name: str
    result: Callable[[np.ndarray], FillBatchResult]

    @property
    def tasks(self) -> int:
        """The batch's fill tasks (one per spatial chunk)."""
        spatial = self.layout[0]
        return len(spatial[0]) * len(spatial[1])

    @property
    def blocks(self):
        """The lazy Dask array of the blocks' packed shares, one task per spatial chunk."""
        import dask.array as da
        from dask.highlevelgraph import HighLevelGraph

        spatial = self.layout[0]
        graph = {(self.name, 0, iy, ix): (self.fill_chunk, iy, ix)
                 for iy in range(len(spatial[0])) for ix in range(len(spatial[1]))}
        return da.Array(HighLevelGraph.from_collections(self.name, graph, dependencies=()),
                        self.name, dtype=np.float64, chunks=(
                            (1,), (1,) * len(spatial[0]), (self.per_block,) * len(spatial[1])))

    def run_here(self) -> FillBatchResult:
        """The batch filled now on this process's threads (`haloed.threads`)."""
        spatial, depth = self.layout
        return self.result(haloed.map_haloed_blocks(self.fill_block, self.raw, self.land,
                                                    self.days, spatial, depth))


def fill(group, state: BuildState, summary: BuildSummary, progress: bool, executor,
         cells=None) -> None:
    """Fill every day whose fill is not current, a batch at a time, recording each.

    `executor` runs the batches (`sicube.pipeline.executors`): here one after another (each
    already keeps every thread busy), on a cluster a window of them at once, so that every
    worker thread has a task.

    Each filled day's sea-ice extent and area (`sicube.kernels.area`) come out of the same pass:
    every block adds its cells' share while its filled values are in memory, the pole hole
    is added when it is set, so the fill's output is never read back. `cells`: the grid's
    cell areas (an array, or on a cluster the store's Zarr array); None: no extent and area.
    """
    raw = group[cube.RAW]
    chunk, nt = raw.chunks[0], raw.shape[0]
    params = state.args.fill
    todo = fill_batches(nt, chunk, params.time_window, state.stale_days(chunk))
    hole = group[cube.POLE_HOLE][:].astype(bool) if cube.POLE_HOLE in group else None
    if cube.EXTENT not in group:  # a cube from before extent and area
        cells = None
    with_area = cells is not None
    if hole is not None and hole.any():
        ring = pole_hole_ring(hole, group[cube.LAND][:], params.space_window)
        rows, cols = np.nonzero(hole | ring)  # the hole's box, found once for every chunk
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        hole, ring = hole[box], ring[box]
        hole_cells = cells[box][hole] if with_area else None
    else:
        hole = None
    drop = excluded_days(state)
    layout = fill_layout(raw, params.space_window)

    def job(batch: FillBatch) -> FillJob:
        return fill_job(group, batch, params, layout, cells, drop)

    bar = progress_bar(progress, total=len(todo), desc="fill", unit="batch")
    for batch, result in executor.fill_results(todo, job, summary):
        # copies: a result unpickled from a worker may hold read-only buffers
        extent, ice = (np.array(result.extent), np.array(result.area)) if with_area else (
            None, None)
        for c, chunk_counts in zip(batch.chunks, result.flag_counts, strict=True):
            if hole is not None:  # after the chunk's cells are written, before it is recorded
                days = slice(max(batch.start, c * chunk), min(batch.stop, (c + 1) * chunk))
                change, hole_extent, hole_ice = set_pole_hole(group, (days, *box), hole, ring,
                                                              hole_cells, drop[days])
                chunk_counts = chunk_counts + change
                if with_area:
                    extent[days.start - batch.start:days.stop - batch.start] += hole_extent
                    ice[days.start - batch.start:days.stop - batch.start] += hole_ice
            state.flag_counts[c] = [int(n) for n in chunk_counts]
        if with_area:
            group[cube.EXTENT][batch.start:batch.stop] = extent
            group[cube.AREA][batch.start:batch.stop] = ice
        state.record_fill(batch)
        summary.days_filled += batch.stop - batch.start
        cube_state.save(group, state)
        settings.release_memory()
        bar.update(1)
    bar.close()
    count_flags(state, summary)


def fill_layout(raw, space_window: int):
    """(spatial chunks, halo depth per axis) of the fill of `raw` (the store's array): its
    chunks, thin ones merged (`halo_layout`)."""
    return halo_layout(haloed.regular_chunks(raw.shape[1:], raw.chunks[1:]),
                       (space_window,) * 2)


def excluded_days(state: BuildState) -> np.ndarray:
    """Per day: left out of the fill (a suspicious day under the policy "missing")."""
    excluded = state.excluded()
    return np.array([f"{d:%Y%m%d}" in excluded for d in state.days], bool)


def fill_job(group, batch: FillBatch, params: FillParams, layout, cells=None,
             drop: np.ndarray | None = None) -> FillJob:
    """Lazily fill the batch's days into `sea_ice_conc` and `fill_flag`, giving a
    `FillBatchResult` (`FillJob`). `layout`: the spatial chunks and halo depth
    (`fill_layout`); `cells`: the cell areas as an array or the store's Zarr array (None: no
    extent and area). Days where `drop` (per cube day) is set are read as missing
    (suspicious days).

    One task per spatial chunk, none depending on another: each reads its own haloed window
    of the batch's read days from the store (`_fill_spatial_chunk`), so a decade at full resolution
    is ~8,000 tasks, not the ~190,000 of a halo exchange through `map_overlap`
    (benchmarks/fill_graph_tasks.py), and writes whole Zarr chunks of both outputs.
    """
    raw, land = group[cube.RAW], group[cube.LAND]
    a, b = batch.read_start, batch.read_stop
    spatial, depth = layout
    chunk = raw.chunks[0]  # the days its chunks hold: written whole
    written = (batch.chunks[0] * chunk, min(raw.shape[0], (batch.chunks[-1] + 1) * chunk))
    n_days = batch.stop - batch.start
    per_block = len(batch.chunks) * len(FillFlag) + (2 * n_days if cells is not None else 0)
    fill_args = dict(
        bounds=tuple(np.cumsum((0, *c)) for c in spatial), halo=depth, params=params,
        core_t=(batch.start - a, batch.stop - a), t0=batch.start, written=written,
        time_chunk=chunk,
        targets=(cube.for_writing(group[cube.CONC]), cube.for_writing(group[cube.FLAG])),
        cells=cells, drop=None if drop is None or not drop[a:b].any() else drop[a:b])
    return FillJob(
        fill_chunk=functools.partial(_fill_spatial_chunk, raw=raw, land=land, days=(a, b),
                                     **fill_args),
        fill_block=functools.partial(_fill_given_block, **fill_args),
        raw=raw, land=land, days=(a, b), layout=layout, per_block=per_block,
        # named, not hashed: hashing the cell areas (70 MB at n3125) took 50 ms per batch
        name=f"fill-batch-{batch.start}-{uuid.uuid4().hex}",
        result=functools.partial(FillBatchResult.from_blocks, n_chunks=len(batch.chunks),
                                 n_days=n_days, with_area=cells is not None))


def _fill_spatial_chunk(iy: int, ix: int, *, raw, land, days, bounds, halo, **fill_args
                        ) -> np.ndarray:
    """Fill spatial chunk (iy, ix) reading its window (the chunk and its `halo`, cut at the
    grid's edges) of the read `days` from the store (`_fill_haloed_block`)."""
    (y0, y1), (x0, x1) = bounds[0][iy:iy + 2], bounds[1][ix:ix + 2]
    window = (slice(max(0, y0 - halo[0]), min(bounds[0][-1], y1 + halo[0])),
              slice(max(0, x0 - halo[1]), min(bounds[1][-1], x1 + halo[1])))
    return _fill_haloed_block(raw[(slice(*days), *window)], land[window], iy, ix,
                              bounds=bounds, halo=halo, **fill_args)


def _fill_given_block(block: np.ndarray, land: np.ndarray, block_info=None, **fill_args
                      ) -> np.ndarray:
    """`_fill_haloed_block` of a haloed block `haloed.map_haloed_blocks` hands out (its land
    with a leading axis of one, its place in `block_info`)."""
    _, iy, ix = block_info[0]["chunk-location"]
    return _fill_haloed_block(block, land[0], iy, ix, **fill_args)


def _fill_haloed_block(block: np.ndarray, land: np.ndarray, iy: int, ix: int, *, bounds,
                       halo, params, core_t, t0, written, time_chunk, targets, cells=None,
                       drop=None) -> np.ndarray:
    """Fill spatial chunk (iy, ix) from its haloed `block` (read days, y, x) and `land`:
    fill the chunk's core days (from day `t0`), write its fraction and flags over the days
    `written` (its time chunks' days: those outside the core keep their stored values); the
    flag counts of each of those time chunks, then (given `cells`, the grid's cell areas) its
    extent and area per core day, packed (`FillBatchResult.pack_block`). Days set in `drop`
    (per read day) are read as missing."""
    (y0, y1), (x0, x1) = bounds[0][iy:iy + 2], bounds[1][ix:ix + 2]
    if drop is not None:
        block = np.where(drop[:, None, None], np.float32(np.nan), block)
    core = (*core_t, *core_in_block((iy, ix), (y1 - y0, x1 - x0), halo))
    # land is 0 in the fraction: neither ice nor extent; the block's own cells' areas
    cell_km2 = None if cells is None else cells[y0:y1, x0:x1] * area.KM2
    fraction, flags, day_counts, sums = fill_fraction_block(
        block, land, core, **params.to_dict(), cell_km2=cell_km2)
    region = (slice(*written), slice(y0, y1), slice(x0, x1))
    core_days = slice(t0 - written[0], t0 - written[0] + fraction.shape[0])
    if core_days == slice(0, written[1] - written[0]):  # every day of the chunks is new
        targets[0][region] = fraction
        targets[1][region] = flags
    else:  # whole Zarr chunks: the kept days too, and only the chunks the refill changed
        outputs, day_counts, changed = _with_kept_days(targets, region, core_days,
                                                       (fraction, flags), day_counts,
                                                       time_chunk)
        for target, values, chunk_changed in zip(targets, outputs, changed.T, strict=True):
            for i in np.flatnonzero(chunk_changed):
                part = values[i * time_chunk:(i + 1) * time_chunk]
                start = written[0] + i * time_chunk
                target[(slice(start, start + len(part)), *region[1:])] = part
    counts = [day_counts[i:i + time_chunk].sum(0) for i in range(0, len(day_counts), time_chunk)]
    return FillBatchResult.pack_block(np.concatenate(counts), sums)


def _with_kept_days(targets, region: tuple[slice, slice, slice], core_days: slice,
                    new: tuple[np.ndarray, np.ndarray], day_counts: np.ndarray,
                    time_chunk: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray,
                                              np.ndarray]:
    """The stored fraction and flags of `region` with the core days (`core_days` of it)
    replaced by the `new` ones; each day's flag counts (the kept days' counted from the
    store: a refill rerun after a kill reads the same kept days); and per time chunk of the
    region and output, whether the new days change it (bit for bit).

    A daily update refills the `time_window` days before its new one. Where those reach
    back into the chunk before (with the defaults, for 3 new days in 8), most blocks of that
    chunk come out as they were stored: they are not encoded and written again."""
    stored = targets[0][region], targets[1][region]
    counts = np.empty((len(stored[1]), day_counts.shape[1]), day_counts.dtype)
    for t in range(len(stored[1])):
        if not core_days.start <= t < core_days.stop:  # a kept day: counted as stored
            counts[t] = np.bincount(stored[1][t].ravel(), minlength=len(FillFlag))
    counts[core_days] = day_counts
    changed = np.zeros((-(-len(counts) // time_chunk), len(stored)), bool)
    for values, now, column in zip(stored, new, changed.T, strict=True):
        bits = values.view(f"u{values.itemsize}")  # NaN equals NaN, and -0.0 differs from 0
        for t in range(core_days.start, core_days.stop):
            column[t // time_chunk] |= not np.array_equal(
                bits[t], now[t - core_days.start].view(bits.dtype))
        values[core_days] = now
    return stored, counts, changed


def set_pole_hole(group, box: tuple[slice, slice, slice], hole: np.ndarray,
                  ring: np.ndarray, hole_cells: np.ndarray | None,
                  drop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Set the pole hole's cells in `box` (days, and the bounding box of hole and ring, which
    `hole` and `ring` are cut to: a few chunks near the grid's centre) by `fill.fill_pole_hole`;
    the change in their flag counts, and per day in sea-ice extent and area (km²): the hole
    counts wholly toward extent (NSIDC), at its new value toward area."""
    conc_array, flag_array = (cube.for_writing(group[cube.CONC]),
                              cube.for_writing(group[cube.FLAG]))
    conc, flags = conc_array[box], flag_array[box]
    raw = group[cube.RAW][box]
    if drop is not None and drop.any():  # suspicious days: their ring is read as missing
        raw[drop] = np.nan
    before = conc[:, hole].astype(np.float64)
    change = fill_pole_hole(raw, conc, flags, hole, ring)
    conc_array[box] = conc
    flag_array[box] = flags
    if hole_cells is None:
        return change, 0.0, 0.0
    km2 = hole_cells * area.KM2
    # NumPy's row sums, not `@`: BLAS picks its kernel, and so its order of sums, by CPU
    extent = km2.sum() - np.where(area.counts_toward_extent(before), km2, 0.0).sum(axis=1)
    ice = ((conc[:, hole].astype(np.float64) - before) * km2).sum(axis=1)
    return change, extent, ice
