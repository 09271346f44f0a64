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
    ``boundary="none", trim=False`` passes. `spatial` holds the chunk sizes along y and x,
    each at least as large as the depth along its axis, as `kernels.fill.halo_layout` makes
    them.
    """
    (ny, nx), (dy, dx) = array.shape[1:], depth
    starts = [np.cumsum((0, *sizes)) for sizes in spatial]
    first, last = window

    def one(iy: int, ix: int) -> np.ndarray:
        y0, y1 = max(0, starts[0][iy] - dy), min(ny, starts[0][iy + 1] + dy)
        x0, x1 = max(0, starts[1][ix] - dx), min(nx, starts[1][ix + 1] + dx)
        return func(array[first:last, y0:y1, x0:x1], land[y0:y1, x0:x1][None],
                    block_info={0: {"chunk-location": (0, iy, ix)}}, **kwargs)

    blocks = [(iy, ix) for iy in range(len(spatial[0])) for ix in range(len(spatial[1]))]
    with ThreadPoolExecutor(min(thread_count() or usable_cores(), len(blocks))) as pool:
        results = list(pool.map(lambda where: one(*where), blocks))
    return np.stack([np.asarray(r).reshape(-1) for r in results])


__all__ = ["map_haloed_blocks", "regular_chunks", "thread_count", "threads", "usable_cores"]
