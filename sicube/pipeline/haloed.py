"""Haloed spatial blocks of a Zarr array, mapped on this process's threads without Dask.

A local build or update fills each spatial block of a batch's read window with its
neighbours' halo, as ``dask.array.map_overlap(..., boundary="none", trim=False)`` would hand
it out, but reads every haloed block straight from the store on a thread pool: importing
dask.array (and the xarray, pandas and scipy it loads) costs a one-day update about as long
as its own work (issue 22). A cluster's fill still goes through Dask.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Threads of the local run in progress (None: none is, and the fill goes through Dask's
# scheduler, e.g. its processes); set for the run by `threads`.
_threads: int | None = None


@contextlib.contextmanager
def threads(workers: int | None) -> Iterator[None]:
    """Inside the block, map blocks here on `workers` threads (None: one per usable core)."""
    global _threads
    before, _threads = _threads, workers or usable_cores()
    try:
        yield
    finally:
        _threads = before


@contextlib.contextmanager
def dask_on_threads() -> Iterator[None]:
    """Inside a local threads run (`threads`), dask's work in the block runs on its threads:
    dask is imported here, by the stages that use it, not by every run. Elsewhere (a
    cluster, the processes scheduler) nothing changes."""
    if _threads is None:
        yield
        return
    import dask
    from dask import threaded

    # threaded.get itself, not "threads": dask imports distributed (0.7 s) to resolve a name
    with dask.config.set(scheduler=threaded.get, num_workers=_threads):
        yield


def thread_count() -> int | None:
    """The threads of the local run in progress (`threads`); None outside one."""
    return _threads


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(usable) if usable else os.cpu_count() or 1


def regular_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """A Zarr array's chunks as sizes per axis, the last one short (dask's normalize_chunks)."""
    return tuple((c,) * (n // c) + ((n % c,) if n % c else ()) for n, c in zip(shape, chunks,
                                                                             strict=True))


def map_haloed_blocks(func: Callable[..., np.ndarray], array, land, window: tuple[int, int],
                      spatial: tuple[tuple[int, ...], tuple[int, ...]],
                      depth: tuple[int, int], **kwargs) -> np.ndarray:
    """``func(block, land_block, block_info=..., **kwargs)`` for every spatial block of
    ``array[window[0]:window[1]]`` (time, y, x), its results stacked (blocks row by row).

    Each block is widened by `depth` (y, x) cells into its neighbours (not beyond the
    array's edges), `land_block` is the same cells of the 2-D `land` with a leading axis of
    one, and ``block_info[0]["chunk-location"]`` is ``(0, iy, ix)``: what map_overlap with
    ``boundary="none", trim=False`` passes. `spatial` holds the block sizes along y and x
    (whole Zarr chunks, each at least as large as the depth along its axis, as
    `kernels.fill.halo_layout` makes them).

    Every chunk is read and decoded once: the window is read a row of blocks at a time (a
    band), and each haloed block is cut, on the thread that maps it, straight from its band
    and the neighbour bands' edge rows into one contiguous array (what the fill reads; no
    copy of a whole haloed row of blocks is made). Memory: the bands of at most
    `ROWS_IN_FLIGHT` rows of blocks being mapped and their neighbours, and a block per thread.
    """
    first, last = window
    nx, (dy, dx) = array.shape[2], depth
    y_starts, x_starts = (np.cumsum((0, *sizes)) for sizes in spatial)
    n_rows, n_cols = len(spatial[0]), len(spatial[1])
    land = np.asarray(land[...])
    bands: dict[int, np.ndarray] = {}

    def band(iy: int) -> np.ndarray:
        if iy not in bands:
            bands[iy] = array[first:last, y_starts[iy]:y_starts[iy + 1], :]
        return bands[iy]

    def row_parts(iy: int) -> tuple[list[np.ndarray], int]:
        """The row's band with the halo rows above and below; the y where they start."""
        parts = [band(iy)]
        if iy > 0 and dy:
            parts.insert(0, band(iy - 1)[:, -dy:])
        if iy + 1 < n_rows and dy:
            parts.append(band(iy + 1)[:, :dy])
        for old in [k for k in bands if k < iy]:  # no later row needs the bands above
            del bands[old]  # (the tasks of the rows in flight hold their own parts)
        return parts, y_starts[iy] - (dy if iy > 0 else 0)

    def one(parts: list[np.ndarray], y0: int, iy: int, ix: int) -> np.ndarray:
        x0, x1 = max(0, x_starts[ix] - dx), min(nx, x_starts[ix + 1] + dx)
        block = np.concatenate([part[:, :, x0:x1] for part in parts], axis=1)
        return func(block, land[y0:y0 + block.shape[1], x0:x1][None],
                    block_info={0: {"chunk-location": (0, iy, ix)}}, **kwargs)

    results: dict[tuple[int, int], object] = {}
    threads_now = min(thread_count() or usable_cores(), n_rows * n_cols)
    with ThreadPoolExecutor(threads_now) as pool:
        for iy in range(n_rows):
            if iy >= ROWS_IN_FLIGHT:  # bound the bands held by waiting tasks
                for ix in range(n_cols):
                    results[iy - ROWS_IN_FLIGHT, ix].result()
            parts, y0 = row_parts(iy)
            for ix in range(n_cols):
                results[iy, ix] = pool.submit(one, parts, y0, iy, ix)
            del parts
        stacked = [np.asarray(results[iy, ix].result()).reshape(-1)
                   for iy in range(n_rows) for ix in range(n_cols)]
    return np.stack(stacked)


# Rows of blocks whose haloed copies may be held at once: two keep every thread of a small
# machine busy while the next band is read.
ROWS_IN_FLIGHT = 2


__all__ = ["dask_on_threads", "map_haloed_blocks", "regular_chunks", "thread_count", "threads",
           "usable_cores"]
