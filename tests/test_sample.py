import hashlib

import numpy as np
import pytest
import xarray as xr

from sicube import products
from sicube.sample import sample_day, write_archive
from sicube.sources import find_day_files, read_day

from .conftest import ARCHIVE_MISSING, ARCHIVE_START


def test_archive_has_the_bremen_layout_and_structure(archive):
    assert sorted(archive.missing) == ARCHIVE_MISSING
    for day, path in archive.files.items():
        assert path.relative_to(archive.root).as_posix() == products.relative_path(day)
    with xr.open_dataset(archive.files[ARCHIVE_START]) as ds:
        assert ds["z"].dims == ("y", "x") and ds["z"].dtype == np.float32
        assert ds["z"].attrs["units"] == "%"
        assert ds["z"].encoding["zlib"] and np.isnan(ds["z"].encoding["_FillValue"])
        assert ds["z"].attrs["grid_mapping"] == "polar_stereographic"
        assert "polar_stereographic" in ds
        assert np.all(np.diff(ds["y"].values) > 0) and np.all(np.diff(ds["x"].values) > 0)


def test_content_looks_like_the_arctic(archive):
    z = read_day(archive.files[ARCHIVE_START]).z
    nan = np.isnan(z)
    assert 0.4 < nan.mean() < 0.7  # about half of an Arctic day is missing
    values = z[~nan]
    assert values.min() == 0 and values.max() <= 100
    assert (values == 0).mean() > 0.2  # open water
    assert ((values > 15) & (values < 80)).sum() > 50  # a marginal ice zone
    # The pole (grid centre is near x=0, y=0) is in the pole hole: NaN.
    grid = read_day(archive.files[ARCHIVE_START]).grid
    pole = np.argmin(np.abs(grid.y)), np.argmin(np.abs(grid.x))
    assert nan[pole]


def test_marginal_ice_zone_moves_from_day_to_day(archive):
    days = sorted(archive.files)
    a, b = (read_day(archive.files[d]).z for d in days[:2])
    both = ~np.isnan(a) & ~np.isnan(b)
    assert np.abs(a[both] - b[both]).max() > 1.0


def test_same_seed_gives_the_same_archive(tmp_path):
    first = write_archive(tmp_path / "a", 20240401, 20240402, step=32, missing_days=[], seed=5)
    again = write_archive(tmp_path / "b", 20240401, 20240402, step=32, missing_days=[], seed=5)
    other = write_archive(tmp_path / "c", 20240401, 20240402, step=32, missing_days=[], seed=6)
    for day in first.files:
        a, b, c = (read_day(x.files[day]).z for x in (first, again, other))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c, equal_nan=True)


def test_full_step_is_the_full_grid():
    day = sample_day(ARCHIVE_START, step=1)
    assert day.shape == (3584, 2432) and day.dtype == np.float32


def test_files_are_found_by_name_anywhere_below_a_folder(archive):
    found = find_day_files(archive.root)
    assert found == archive.files


def test_land_value_flags_land_out_of_range(tmp_path, caplog):
    arch = write_archive(tmp_path, 20240401, 20240401, step=32, missing_days=[], land_value=120.0)
    path = next(iter(arch.files.values()))
    field = read_day(path)
    assert field.out_of_range > 0
    assert np.nanmax(field.z) <= 100
    assert "outside [0, 100]" in caplog.text


def test_files_are_written_atomically_and_reproducibly(tmp_path):
    a = write_archive(tmp_path / "a", 20240401, 20240401, step=32, missing_days=[])
    assert not list((tmp_path / "a").rglob("*.part"))
    digest = hashlib.sha256(next(iter(a.files.values())).read_bytes()).hexdigest()
    b = write_archive(tmp_path / "b", 20240401, 20240401, step=32, missing_days=[])
    assert hashlib.sha256(next(iter(b.files.values())).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("kwargs, match", [({"step": 0}, "step"), ({"grid": "n999"}, "grid")])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    from sicube.errors import BadInput

    with pytest.raises(BadInput, match=match):
        write_archive(tmp_path, 20240401, 20240402, **kwargs)
