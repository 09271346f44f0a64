import hashlib

import numpy as np
import pytest
import xarray as xr

from sicube.archive import products
from sicube.archive.sources import find_day_files, read_day
from sicube.archive.synthetic import geometry, sample_day, write_archive

from .conftest import ARCHIVE_MISSING, ARCHIVE_START, ARCHIVE_STEP


def test_archive_has_the_bremen_layout_and_structure(archive):
    assert sorted(archive.missing) == ARCHIVE_MISSING
    for day, path in archive.files.items():
        assert path.relative_to(archive.root).as_posix() == products.relative_path(day)
    with xr.open_dataset(archive.files[ARCHIVE_START]) as ds:
        assert ds["z"].dims == ("y", "x") and ds["z"].dtype == np.float32
        assert ds["z"].encoding["zlib"] and np.isnan(ds["z"].encoding["_FillValue"])
        assert ds["z"].attrs["grid_mapping"] == "polar_stereographic"
        assert "polar_stereographic" in ds
        assert np.all(np.diff(ds["y"].values) > 0) and np.all(np.diff(ds["x"].values) > 0)


def test_files_are_the_real_layout_attribute_for_attribute(archive):
    """What GDAL's netCDF driver makes of Bremen's GMT grids (docs/cube-format.md)."""
    import h5py
    import netCDF4

    path = archive.files[ARCHIVE_START]
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF4"
        assert nc.Conventions == "CF-1.5" and nc.title == "Produced by grdmath"
        assert {"GDAL", "GMT_version", "history", "author", "info"} <= set(nc.ncattrs())
        assert "GDAL CreateCopy" in nc.history and "FLIPUD" in nc.history
        z = nc["z"]
        assert set(z.ncattrs()) == {"_FillValue", "long_name", "actual_range", "grid_mapping"}
        assert z.long_name == "z" and np.isnan(z._FillValue)  # no units
        assert 0 <= z.actual_range[0] <= z.actual_range[1] <= 100
        nx = nc.dimensions["x"].size
        assert z.chunking() == [1, nx]
        assert z.filters()["zlib"] and z.filters()["complevel"] == 1 and z.filters()["shuffle"]
        gm = nc["polar_stereographic"]
        assert gm.dtype == "S1" and gm.shape == ()
        assert "epsg_code" not in gm.ncattrs()
        assert gm.grid_mapping_name == "polar_stereographic" and gm.long_name == "CRS definition"
        assert gm.latitude_of_projection_origin == 90 and gm.standard_parallel == 70
        assert gm.semi_major_axis == 6378273 and gm.spatial_ref == gm.crs_wkt
        # North-up: the top-left corner is the north edge, although row 0 is the south.
        x0, dx, _, y_top, _, dy = (float(v) for v in gm.GeoTransform.split())
        step = ARCHIVE_STEP * 3125.0
        assert (x0, dx, y_top, dy) == (-3_850_000, step, 5_850_000, -step)
        assert nc["y"][0] < nc["y"][-1] and nc["y"][-1] == y_top - step / 2
        for name in ("x", "y"):
            assert nc[name].units == "m"
            assert nc[name].standard_name == f"projection_{name}_coordinate"
    with h5py.File(path) as h5:
        assert h5["z"].compression == "gzip" and h5["z"].compression_opts == 1


@pytest.mark.parametrize("grid", list(products.GRIDS))
def test_every_grid_has_its_hemisphere_and_coastlines(tmp_path, grid):
    spec = products.GRIDS[grid]
    step = 16 if grid.endswith("3125") else 8  # the same cells on both resolutions
    arch = write_archive(tmp_path, 20240915, 20240915, step=step, missing_days=[], grid=grid)
    path = next(iter(arch.files.values()))
    assert path.name == f"asi-AMSR2-{grid}-20240915-v5.4.nc"
    field = read_day(path)
    assert field.z.shape == arch.shape == (spec.ny // step, spec.nx // step)
    assert field.crs.epsg == (3412 if spec.south else 3411) and field.crs.south == spec.south
    land = geometry(grid, step).land
    assert np.isnan(field.z[land]).all()
    if spec.south:
        # Antarctica sits at the centre of the grid; in September the pack surrounds it.
        assert land[land.shape[0] // 2, land.shape[1] // 2]
        assert 0.15 < land.mean() < 0.4
        assert (field.z > 15).mean() > 0.2
    else:
        assert 0.3 < land.mean() < 0.6
    assert (field.z == 0).mean() > 0.1  # open water


def test_both_resolutions_share_coastlines():
    fine, coarse = geometry("s3125", 16).land, geometry("s6250", 8).land
    np.testing.assert_array_equal(fine, coarse)


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
