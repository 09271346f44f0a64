"""Other tools read what sicube writes: netCDF export checked by a CF checker, tensorstore's
Zarr v3 reader, and cubes of the previous release (record attributes as JSON values)."""

from __future__ import annotations

import datetime as dt
import json
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from sicube.cli import main
from sicube.datacube import cube
from sicube.pipeline.build import build, update

from .conftest import ARCHIVE_START, SMALL_CUBE_CHUNKS

# Every root attribute that holds a record (dict or list) as JSON text.
RECORDS = (cube.SOURCE_FILES, cube.MISSING_DAYS, cube.FAILED_DAYS, cube.SUSPICIOUS_DAYS,
           "source_base_urls", "fill_parameters", "quality_rules")


def cf_errors(path) -> list[str]:
    """The errors (high-priority failures) of the IOOS compliance checker's CF-1.9 suite on a
    netCDF file; it runs offline (its standard-name table and udunits come with it)."""
    try:
        from compliance_checker.runner import CheckSuite, ComplianceChecker
    except ImportError:  # CI installs it (the `test` extra): a missing checker is a failure
        pytest.fail("compliance-checker is not installed: pip install -e '.[test]'")
    CheckSuite.load_all_available_checkers()
    report = path.with_suffix(".json")
    ComplianceChecker.run_checker(str(path), ["cf:1.9"], 0, "strict",
                                  output_filename=str(report), output_format="json_new")
    result = json.loads(report.read_text())[str(path)]["cf:1.9"]
    return [f"{check['name']}: {msg}" for check in result["high_priorities"]
            for msg in check["msgs"]]


def test_root_attributes_are_netcdf_legal(small_cube):
    attrs = zarr.open_group(str(small_cube), mode="r").attrs
    for name, value in attrs.items():
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), name
    for name in RECORDS:
        assert isinstance(cube.record_attr(attrs, name), (dict, list)), name
    assert attrs["history"] and attrs["source_grid"] == "n3125"


def test_an_export_to_netcdf_passes_the_cf_checker(small_cube, tmp_path):
    # The first export: xarray's own opener writes it.
    xr.open_zarr(small_cube).isel(time=slice(0, 3)).to_netcdf(tmp_path / "plain.nc")
    out = tmp_path / "x.nc"
    cube.open_cube(small_cube).isel(time=slice(0, 3)).to_netcdf(out)
    assert cf_errors(out) == []
    back = xr.open_dataset(out)
    assert json.loads(back.attrs[cube.SOURCE_FILES]).keys() == \
        cube.record_attr(zarr.open_group(str(small_cube), mode="r"), cube.SOURCE_FILES).keys()
    assert back[cube.FLAG].attrs["flag_values"].dtype == np.uint8
    assert "_FillValue" not in back["x"].encoding and "_FillValue" not in back["y"].encoding


def test_the_mask_file_passes_the_cf_checker(small_cube, tmp_path):
    out = tmp_path / "land_mask.nc"
    assert main(["mask", "--store", str(small_cube), "-o", str(out)]) == 0
    assert cf_errors(out) == []
    with xr.open_dataset(out) as ds:
        assert ds.attrs["history"]
        # land_mask's own attributes: pole_hole's comment does not leak onto it
        assert set(ds[cube.LAND].attrs) == set(cube.ATTRS[cube.LAND])
        assert ds[cube.LAND].attrs["long_name"] == cube.ATTRS[cube.LAND]["long_name"]


def test_one_variable_has_the_sea_ice_standard_name(small_cube):
    import cf_xarray  # noqa: F401 - registers .cf

    ds = cube.open_cube(small_cube)
    assert ds.cf["sea_ice_area_fraction"].name == cube.CONC
    assert cube.RAW in ds[cube.CONC].attrs["ancillary_variables"].split()
    assert ds[cube.CONC].attrs["cell_measures"] == f"area: {cube.CELL_AREA}"
    assert ds[cube.GRID_MAPPING].attrs["long_name"]


def test_tensorstore_reads_every_array_bit_for_bit(small_cube):
    ts = _tensorstore()
    group = zarr.open_group(str(small_cube), mode="r")
    names = sorted(group.array_keys())
    assert cube.RAW in names and cube.CELL_AREA in names
    for name in names:
        expected = group[name][...]
        spec = {"driver": "zarr3", "kvstore": {"driver": "file",
                                               "path": str(small_cube / name)}}
        found = ts.open(spec, read=True).result().read().result()
        assert found.dtype == expected.dtype and found.shape == expected.shape, name
        assert found.tobytes() == expected.tobytes(), name


def _tensorstore():
    try:
        import tensorstore
    except ImportError:
        pytest.fail("tensorstore is not installed: pip install -e '.[test]'")
    return tensorstore


# --- cubes of the previous release: records as JSON values ------------------------------------


def _old_style(store) -> None:
    """Rewrite the cube's record attributes as the previous release wrote them (dicts and
    lists, not JSON text), and re-consolidate as the builder does."""
    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    group.attrs.update({name: json.loads(group.attrs[name]) for name in RECORDS
                        if isinstance(group.attrs.get(name), str)})
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))


def test_a_cube_of_the_previous_release_opens_reports_and_updates(archive, tmp_path, capsys):
    store = tmp_path / "old.zarr"
    build(ARCHIVE_START, dt.date(2024, 4, 3), store, source=archive.root,
          chunks=SMALL_CUBE_CHUNKS, progress=False)
    def info() -> list[str]:  # but its size on disk, which the rewrite changes
        assert main(["info", str(store)]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if "disk:" not in line]

    new_info = info()
    _old_style(store)
    assert isinstance(zarr.open_group(str(store), mode="r").attrs[cube.SOURCE_FILES], dict)
    assert info() == new_info
    assert main(["report", "--store", str(store), "--html", str(tmp_path / "r.html"),
                 "-q"]) == 0
    assert cube.cube_status(zarr.open_group(str(store), mode="r").attrs) == cube.COMPLETE
    assert len(cube.record_attr(cube.open_cube(store), cube.SOURCE_FILES)) == 3
    assert update(store, dt.date(2024, 4, 4), progress=False).exit_code == 0
    attrs = zarr.open_group(str(store), mode="r").attrs
    assert cube.open_cube(store)[cube.OBSERVED].values.all()
    # The update rewrote the records as JSON text.
    assert all(isinstance(attrs[name], str) for name in RECORDS)
    assert sorted(cube.record_attr(attrs, cube.SOURCE_FILES)) == [
        "20240401", "20240402", "20240403", "20240404"]


def test_record_attr_reads_both_ways():
    record = {"20240401": {"name": "a.nc"}}
    assert cube.record_attr({"r": record}, "r") == record
    assert cube.record_attr({"r": json.dumps(record)}, "r") == record
    assert cube.record_attr({"r": ""}, "r", {}) == {} == cube.record_attr({}, "r", {})
    assert cube.record_attrs({"r": record, "n": 1.5, "s": "x"}) == {
        "r": json.dumps(record), "n": 1.5, "s": "x"}

