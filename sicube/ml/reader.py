"""A cube's Zarr arrays, opened once per process: the store handle behind the datasets.

`CubeReader` follows xarray's `CachingFileManager` idea: it holds only what it takes to
open the store (path or URL, fsspec options, whether an unfinished cube may be read, the
climatology the anomaly channel reads), opens it through `sicube.datacube.cube.open_group`
(which checks the cube's state; the climatology through `sicube.datacube.store.open_store`,
the one opener) on first use in the calling process, and drops every handle when pickled or
found in another process, so that a copy sent to a DataLoader worker (fork or spawn) opens
its own. It also holds the process's reader threads
(`executor`), and `read_ahead` keeps several reads in flight on them: each read waits on
the store's latency (an HTTP or S3 round trip per chunk request), so overlapping them is
what keeps a remote epoch from being a sum of round trips.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sicube.datacube import cube
from sicube.dates import parse_date

# The time-varying arrays a dataset reads items from.
TIME_ARRAYS = (cube.CONC, cube.RAW, cube.FLAG)
# Reads kept in flight per process: a SICStream's group reads, a SICDataset batch's items.
DEFAULT_PREFETCH = 4
# What a process opens for itself; a copy in another process (a pickle, a fork) drops them.
_HANDLES = ("_group", "_arrays", "_climatology_mean", "_executor")


class CubeReader:
    """Opens a cube's root group and its time-varying arrays once per process; picklable."""

    def __init__(self, store, storage_options: dict | None = None,
                 allow_incomplete: bool = False, climatology: str | None = None):
        self.store = store
        self.storage_options = storage_options
        self.allow_incomplete = bool(allow_incomplete)
        self.climatology = climatology
        self._pid: int | None = None
        self._threads = 0
        for name in _HANDLES:
            setattr(self, name, None)

    def _this_process(self) -> None:
        """Forget the handles another process opened (this object was forked or unpickled)."""
        if self._pid != os.getpid():
            for name in _HANDLES:
                setattr(self, name, None)
            self._pid, self._threads = os.getpid(), 0

    def group(self):
        """The cube's Zarr group, read-only (BadInput / IncompleteCube as `cube.open_group`)."""
        self._this_process()
        if self._group is None:
            self._group = cube.open_group(self.store, allow_incomplete=self.allow_incomplete,
                                          storage_options=self.storage_options)
        return self._group

    def arrays(self) -> dict:
        """sea_ice_conc, sea_ice_conc_raw and fill_flag by name, opened in this process."""
        group = self.group()
        if self._arrays is None:
            self._arrays = {name: group[name] for name in TIME_ARRAYS}
        return self._arrays

    def climatology_mean(self):
        """The climatology's day-of-year mean array, opened in this process (None without
        a climatology); `storage_options` apply to it as to the cube."""
        import zarr

        from sicube.analysis.climatology import MEAN
        from sicube.datacube.store import consolidated_quietly, open_store

        if self.climatology is None:
            return None
        self._this_process()
        if self._climatology_mean is None:
            zstore = open_store(self.climatology, storage_options=self.storage_options)
            with consolidated_quietly():
                self._climatology_mean = zarr.open_group(zstore, mode="r")[MEAN]
        return self._climatology_mean

    def executor(self, threads: int) -> ThreadPoolExecutor:
        """This process's pool of reader threads (at least `threads`), made on first use.

        Zarr's synchronous API is safe from several threads (each call runs on Zarr's own
        event loop), so reads submitted here overlap their requests.
        """
        self._this_process()
        if self._executor is None or self._threads < threads:
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix="sicube-read")
            self._threads = threads
        return self._executor

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open handle (a copy from another process does not)."""
        return self._group is not None and self._pid == os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in (*_HANDLES, "_pid"):
            state[name] = None  # never cross processes
        return state

    def __repr__(self) -> str:
        return f"CubeReader({self.store!s})"


def read_ahead(read: Callable, pieces: Iterable, depth: int,
               executor: ThreadPoolExecutor | None = None) -> Iterator:
    """`read(piece)` for each piece, in order, with up to `depth` reads in flight.

    depth 1 reads one piece after the other in the calling thread (no threads); more
    submits the next `depth` reads to `executor` ahead of the consumer, so their store
    requests overlap each other and the consumer's work. Reads still pending when the
    consumer stops are cancelled.
    """
    if depth <= 1 or executor is None:
        yield from map(read, pieces)
        return
    pieces = iter(pieces)
    pending: collections.deque = collections.deque()
    try:
        for piece in pieces:
            pending.append(executor.submit(read, piece))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            for piece in pieces:
                pending.append(executor.submit(read, piece))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()


def decode_days(time_array) -> list[dt.date]:
    """The calendar days of the cube's time coordinate (CF-encoded integers)."""
    from xarray.coding.times import decode_cf_datetime

    attrs = time_array.attrs
    values = decode_cf_datetime(time_array[:], attrs["units"],
                                attrs.get("calendar", "proleptic_gregorian"))
    return [parse_date(np.datetime64(v, "D")) for v in np.asarray(values)]


def read_frames(array, frames: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """Frames `frames` (sorted) of a (time, y, x) Zarr array, reading only their chunks."""
    first, last = int(frames[0]), int(frames[-1])
    if last - first + 1 == len(frames):  # contiguous: one basic slice
        return array[first:last + 1, rows, cols]
    return array.oindex[frames, rows, cols]


def read_into(array, start: int, stop: int, rows: slice, cols: slice, out: np.ndarray) -> None:
    """Decompress frames start..stop-1 of a region straight into `out`."""
    from zarr.core.buffer.cpu import NDBuffer

    array.get_basic_selection((slice(start, stop), rows, cols),
                              out=NDBuffer.from_numpy_array(out))
