"""Shared fixtures: a small generated archive (real coastlines, missing days)."""

from __future__ import annotations

import datetime as dt

import pytest

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


# --- mirror (sicube.mirror) --------------------------------------------------------------------


@pytest.fixture
def mirror(archive):
    """A loopback mirror of `archive` on 127.0.0.1; set faults with `mirror.set_faults(plan)`."""
    from sicube.mirror import Mirror

    with Mirror(archive.root) as running:
        yield running
