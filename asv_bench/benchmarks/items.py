"""SICDataset item reads from a small synthetic cube (`sicube.testing.synthetic_cube`)."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from sicube.testing import SYNTHETIC_START, synthetic_cube


class Items:
    """Read every item of a dataset over a synthetic cube: whole frames, and patches."""

    n_days = 60
    shape = (192, 160)
    chunks = {"time": 8, "y": 64, "x": 64}
    input_length, pred_length = 7, 3

    def setup(self) -> None:
        from sicube.ml.dataset import SICDataset

        self._tmp = tempfile.TemporaryDirectory()
        store = synthetic_cube(Path(self._tmp.name) / "cube.zarr", n_days=self.n_days,
                               shape=self.shape, missing=(), chunks=self.chunks)
        days = (SYNTHETIC_START, SYNTHETIC_START + dt.timedelta(days=self.n_days - 1))
        self.frames = SICDataset(store, *days, self.input_length, self.pred_length,
                                 quality_cache=False)
        patch = min(64, *self.shape)
        self.patches = SICDataset(store, *days, self.input_length, self.pred_length,
                                  patch_size=patch, quality_cache=False)
        self.frames[0]  # open the store and warm the reader before timing
        self.patches[0]

    def teardown(self) -> None:
        self._tmp.cleanup()

    def time_frames(self) -> None:
        for i in range(len(self.frames)):
            self.frames[i]

    def time_patches(self) -> None:
        for i in range(len(self.patches)):
            self.patches[i]
