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


# --- small_cube (plot/report): a cube written directly from the archive -----------------------
# Stands in for `sicube.build` until the builder exists; switch it to the builder then.
# sea_ice_conc is a plausible stand-in for the fill (mean over observed days), not the real fill.

SMALL_CUBE_CHUNKS = {"time": 4, "y": 64, "x": 64}
SMALL_CUBE_MASK_THRESHOLD = 0.85
SMALL_CUBE_FILL = {"time_window": 3, "space_window": 7, "alpha": 15.0, "sigma": 7.0}


@pytest.fixture(scope="session")
def small_cube(archive, tmp_path_factory):
    """Path of a sicube cube (Zarr) over the `archive` span, with every variable and attribute."""
    import hashlib
    import warnings

    import numpy as np

    from sicube import cube
    from sicube.sources import read_day

    days = archive.days
    first = read_day(archive.files[min(archive.files)])
    ny, nx = first.grid.shape
    raw = np.full((len(days), ny, nx), np.nan, np.float32)
    observed = np.zeros(len(days), bool)
    for i, day in enumerate(days):
        if day in archive.files:
            raw[i] = read_day(archive.files[day], first.grid).z
            observed[i] = True
    missing = np.isnan(raw[observed])
    nan_ratio = missing.mean(axis=0).astype(np.float32)
    land = (nan_ratio >= SMALL_CUBE_MASK_THRESHOLD).astype(np.uint8)
    with warnings.catch_warnings():  # cells never observed: mean of nothing is NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(raw[observed], axis=0)  # stand-in for the fill
    has_mean = ~np.isnan(mean)
    gap = np.isnan(raw)
    filled = np.where(gap, np.where(has_mean, mean, 0.0), raw) / 100.0
    flag = np.where(gap, np.where(has_mean, 1, 2), 0).astype(np.uint8)
    flag[:, land == 1] = 3
    filled[:, land == 1] = 0.0
    attrs = {
        "source_base_url": "http://127.0.0.1/test",
        "source_files": {
            f"{d:%Y%m%d}": {"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for d, p in archive.files.items()
        },
        "fill_parameters": SMALL_CUBE_FILL,
        "mask_threshold": SMALL_CUBE_MASK_THRESHOLD,
        "mask_span": [f"{days[0]:%Y-%m-%d}", f"{days[-1]:%Y-%m-%d}"],
        "build_time": "2024-04-13T00:00:00Z",
    }
    ds = cube.template(days, first.grid.x, first.grid.y, first.epsg, chunks=SMALL_CUBE_CHUNKS,
                       attrs=attrs)
    for name, values in ((cube.RAW, raw), (cube.CONC, filled.astype(np.float32)),
                         (cube.FLAG, flag), (cube.OBSERVED, observed), (cube.LAND, land),
                         (cube.NAN_RATIO, nan_ratio)):
        ds[name] = ds[name].copy(data=values)
    path = tmp_path_factory.mktemp("cube") / "small.zarr"
    ds.to_zarr(path, mode="w")
    return path

# --- mirror (sicube.mirror) --------------------------------------------------------------------


@pytest.fixture
def mirror(archive):
    """A loopback mirror of `archive` on 127.0.0.1; set faults with `mirror.set_faults(plan)`."""
    from sicube.mirror import Mirror

    with Mirror(archive.root) as running:
        yield running
