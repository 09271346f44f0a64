"""A small cube build from a local folder of sample files (`write_archive`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sicube.archive.synthetic import write_archive
from sicube.pipeline.build import build


class Build:
    """Build a few days on the grid coarsened 16 x from the sample archive's folder."""

    start, end = "2024-01-01", "2024-01-06"
    step = 16
    number = 1  # every call builds a fresh store
    repeat = 3
    warmup_time = 0

    def setup(self) -> None:
        self._tmp = Path(tempfile.mkdtemp())
        self.source = self._tmp / "archive"
        write_archive(self.source, self.start, self.end, step=self.step, missing_days=[])
        self._n = 0

    def teardown(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def time_build(self) -> None:
        self._n += 1
        build(self.start, self.end, self._tmp / f"cube-{self._n}.zarr", source=self.source,
              progress=False)
