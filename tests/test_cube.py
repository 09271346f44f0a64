"""Store helpers of sicube.cube."""

from __future__ import annotations

import numpy as np
import zarr

from sicube import cube


def test_for_writing_stores_chunks_that_hold_only_the_fill_value(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(4, 4), chunks=(2, 4), dtype="f4",
                              fill_value=np.nan)
    array[:2] = np.nan  # zarr's default: an all-fill chunk is not stored
    cube.for_writing(array)[2:] = np.nan
    assert sorted(p.name for p in (tmp_path / "a.zarr" / "c").iterdir()) == ["1"]
    np.testing.assert_array_equal(array[:], np.full((4, 4), np.nan, np.float32))


def test_codec_threads_follow_the_cores_unless_the_user_set_them():
    import os

    with zarr.config.set({"threading.max_workers": None}):
        cube.one_codec_thread_per_core()
        assert zarr.config.get("threading.max_workers") == os.cpu_count()
    with zarr.config.set({"threading.max_workers": 3}):
        cube.one_codec_thread_per_core()
        assert zarr.config.get("threading.max_workers") == 3
