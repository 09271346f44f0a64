"""Reading daily files: the parallel raw-chunk decoder against netCDF-C, damage, range screening."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import numpy as np
import pytest

from sicube import sources
from sicube.errors import BadSourceFile
from sicube.sample import sample_day, write_day_file

STEP = 8  # 448 x 304 cells
DAY = dt.date(2024, 3, 15)


def _write(path: Path, z: np.ndarray, **storage) -> Path:
    """A daily file with `z` stored as `storage` says (netCDF4.createVariable arguments)."""
    return write_day_file(path, z, DAY, step=STEP, storage=storage)


@pytest.fixture(scope="module")
def day() -> np.ndarray:
    """One sample day in percent, NaN on land, in the pole hole and the swath gaps."""
    return sample_day(DAY, step=STEP, seed=1)


FAST = [
    {"zlib": True, "complevel": 4, "shuffle": True},  # netCDF's default chunking
    {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": (100, 128)},  # edge chunks
    {"zlib": True, "complevel": 6, "shuffle": False, "chunksizes": (448, 304)},  # one chunk
    {"zlib": True, "shuffle": True, "chunksizes": (1, 304)},  # a row per chunk
]
SLOW = [
    {"contiguous": True},  # no chunks
    {"zlib": True, "shuffle": True, "fletcher32": True},  # a checksum filter
    {"zlib": True, "shuffle": True, "datatype": "f8"},  # not float32
    {"chunksizes": (64, 64)},  # chunked, no compression
]


@pytest.mark.parametrize("layout", FAST + SLOW)
def test_decoder_gives_netcdf_c_bits_for_every_layout(tmp_path, day, layout):
    path = _write(tmp_path / "asi-AMSR2-n3125-20240315-v5.4.nc", day, **dict(layout))
    fast = np.empty(day.shape, np.float32)
    used_fast = sources._decode_fast(path, fast)
    assert used_fast == (layout in FAST)
    via_netcdf = np.empty(day.shape, np.float32)
    sources._decode_netcdf(path, via_netcdf)
    got = sources.read_day(path).z
    np.testing.assert_array_equal(got.view(np.uint32), via_netcdf.view(np.uint32))
    np.testing.assert_array_equal(got.view(np.uint32), day.view(np.uint32))
    if used_fast:
        np.testing.assert_array_equal(fast.view(np.uint32), day.view(np.uint32))


def test_read_day_fills_a_given_array(tmp_path, day):
    path = _write(tmp_path / "d.nc", day, zlib=True, shuffle=True)
    stack = np.full((2, *day.shape), -1.0, np.float32)
    field = sources.read_day(path, out=stack[1])
    assert np.shares_memory(field.z, stack[1])
    np.testing.assert_array_equal(stack[1], day)
    assert (stack[0] == -1).all()
    with pytest.raises(ValueError, match="float32"):
        sources.read_day(path, out=np.empty(day.shape, np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        sources.read_day(path, out=np.empty(day.shape[::-1], np.float32).T)


def test_days_decode_in_parallel_threads_identically(tmp_path, day):
    paths = [_write(tmp_path / f"d{i}.nc", np.where(day > i, day, np.nan).astype(np.float32),
                    zlib=True, shuffle=True, chunksizes=(64, 64)) for i in range(6)]
    want = [sources.read_day(p).z for p in paths]
    got: dict[int, np.ndarray] = {}

    def read(i: int) -> None:
        for _ in range(3):
            got[i] = sources.read_day(paths[i]).z

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[i], w)


def _damage(path: Path, at: float) -> None:
    """Overwrite 64 bytes at a relative position (inside the compressed data)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", [FAST[0], FAST[2], SLOW[1]])
def test_damaged_data_is_a_bad_source_file(tmp_path, day, layout):
    path = _write(tmp_path / "d.nc", day, **dict(layout))
    _damage(path, 0.6)
    with pytest.raises(BadSourceFile, match="d.nc"):
        sources.read_day(path)


def test_truncated_file_is_a_bad_source_file(tmp_path, day):
    path = _write(tmp_path / "d.nc", day, zlib=True, shuffle=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadSourceFile, match="d.nc"):
        sources.read_day(path)


def test_values_outside_0_100_become_nan_and_are_counted(tmp_path, day):
    z = day.copy()
    z[0, :5] = 150.0
    z[1, :3] = -1.0
    path = _write(tmp_path / "d.nc", z, zlib=True, shuffle=True)
    field = sources.read_day(path)
    assert field.out_of_range == 8
    assert np.isnan(field.z[0, :5]).all() and np.isnan(field.z[1, :3]).all()
    keep = np.ones(z.shape, bool)
    keep[0, :5] = keep[1, :3] = False
    np.testing.assert_array_equal(field.z[keep], z[keep])
