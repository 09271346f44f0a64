"""A cube's Zarr arrays, opened once per process: the store handle behind the datasets.

`CubeReader` follows xarray's `CachingFileManager` idea: it holds only what it takes to
open the store (path or URL, fsspec options, whether an unfinished cube may be read), opens
it through `sicube.datacube.cube.open_group` (which checks the cube's state) on first use in the
calling process, and drops the handle when pickled, so that a copy sent to a DataLoader
worker (fork or spawn) opens its own. It also holds the process's reader threads
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


class CubeReader:
    """Opens a cube's root group and its time-varying arrays once per process; picklable."""

    def __init__(self, store, storage_options: dict | None = None,
                 allow_incomplete: bool = False):
        self.store = store
        self.storage_options = storage_options
        self.allow_incomplete = bool(allow_incomplete)
        self._group = None
        self._arrays: dict | None = None
        self._pid: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid: int | None = None
        self._threads = 0

    def group(self):
        """The cube's Zarr group, read-only (BadInput / IncompleteCube as `cube.open_group`)."""
        if self._group is None or self._pid != os.getpid():
            self._group = cube.open_group(self.store, allow_incomplete=self.allow_incomplete,
                                          storage_options=self.storage_options)
            self._arrays = None
            self._pid = os.getpid()
        return self._group

    def arrays(self) -> dict:
        """sea_ice_conc, sea_ice_conc_raw and fill_flag by name, opened in this process."""
        group = self.group()
        if self._arrays is None:
            self._arrays = {name: group[name] for name in TIME_ARRAYS}
        return self._arrays

    def executor(self, threads: int) -> ThreadPoolExecutor:
        """This process's pool of reader threads (at least `threads`), made on first use.

        Zarr's synchronous API is safe from several threads (each call runs on Zarr's own
        event loop), so reads submitted here overlap their requests.
        """
        if (self._executor is None or self._executor_pid != os.getpid()
                or self._threads < threads):
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix="sicube-read")
            self._executor_pid, self._threads = os.getpid(), threads
        return self._executor

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open handle (a copy from another process does not)."""
        return self._group is not None and self._pid == os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_group", "_arrays", "_pid", "_executor", "_executor_pid"):
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
