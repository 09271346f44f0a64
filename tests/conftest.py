"""Shared fixtures: a small generated archive (real coastlines, missing days)."""

from __future__ import annotations

import datetime as dt

import pytest

from sicube.fill import FillParams
from sicube.mask import DEFAULT_THRESHOLD
from sicube.sample import Archive, write_archive

ARCHIVE_START = dt.date(2024, 4, 1)
ARCHIVE_END = dt.date(2024, 4, 12)
ARCHIVE_MISSING = [dt.date(2024, 4, 5), dt.date(2024, 4, 6)]
ARCHIVE_STEP = 16  # 224 x 152 cells: small, still the real grid and coastlines


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Archive:
    """Twelve days of sample files on a coarse grid, 5 and 6 April missing."""
    root = tmp_path_factory.mktemp("archive")
    return write_archive(root, ARCHIVE_START, ARCHIVE_END, step=ARCHIVE_STEP,
                         missing_days=ARCHIVE_MISSING, seed=3)


# --- small_cube: the real builder over the archive ----------------------------------------------

SMALL_CUBE_CHUNKS = {"time": 4, "y": 64, "x": 64}  # several chunks on every axis
SMALL_CUBE_MASK_THRESHOLD = DEFAULT_THRESHOLD
SMALL_CUBE_FILL = FillParams().to_dict()


@pytest.fixture(scope="session")
def small_cube(archive, tmp_path_factory):
    """Path of a cube built by `sicube.build` from the archive's folder (default parameters)."""
    from sicube.build import build

    path = tmp_path_factory.mktemp("cube") / "small.zarr"
    build(ARCHIVE_START, ARCHIVE_END, path, source=archive.root, chunks=SMALL_CUBE_CHUNKS,
          **SMALL_CUBE_FILL, mask_threshold=SMALL_CUBE_MASK_THRESHOLD, progress=False)
    return path


# --- mirror (sicube.mirror) --------------------------------------------------------------------


@pytest.fixture
def mirror(archive):
    """A loopback mirror of `archive` on 127.0.0.1; set faults with `mirror.set_faults(plan)`."""
    from sicube.mirror import Mirror

    with Mirror(archive.root) as running:
        yield running
