"""A cube's Zarr arrays, opened once per process: the store handle behind the datasets.

`CubeReader` follows xarray's `CachingFileManager` idea: it holds only what it takes to
open the store (path or URL, fsspec options, whether an unfinished cube may be read), opens
it through `sicube.cube.open_group` (which checks the cube's state) on first use in the
calling process, and drops the handle when pickled, so that a copy sent to a DataLoader
worker (fork or spawn) opens its own.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np

from sicube import cube
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

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open handle (a copy from another process does not)."""
        return self._group is not None and self._pid == os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group"] = state["_arrays"] = state["_pid"] = None  # never cross processes
        return state

    def __repr__(self) -> str:
        return f"CubeReader({self.store!s})"


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
