"""The cube's record (`datacube.record.CubeRecord`): one place that reads every form of a cube's
root attributes, writes netCDF-legal ones, and guards against cubes of a newer format."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from sicube.cli import main
from sicube.datacube import cube
from sicube.datacube.record import KEYS, CubeRecord, NewerCubeWarning

RELEASE = Path(__file__).parent / "data" / "release-0.1"

day_keys = st.dates().map(lambda d: f"{d:%Y%m%d}")
text = st.text(max_size=12)
scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False,
                                                           allow_infinity=False), text)
records = st.builds(
    CubeRecord,
    format=st.none() | st.integers(1, 9),
    sicube_version=st.none() | text, status=st.none() | text,
    finish_command=st.none() | text, last_error=st.none() | text,
    build=st.none() | st.dictionaries(text, scalars | st.lists(scalars, max_size=3), max_size=4),
    source_files=st.none() | st.dictionaries(day_keys, st.fixed_dictionaries(
        {"name": text, "sha256": text}), max_size=4),
    missing_days=st.none() | st.lists(day_keys, max_size=4).map(tuple),
    failed_days=st.none() | st.dictionaries(day_keys, text, max_size=3),
    suspicious_days=st.none() | st.dictionaries(day_keys, text, max_size=3),
    source_directory=st.none() | text, source_base_url=st.none() | text,
    source_base_urls=st.none() | st.lists(text, max_size=3).map(tuple),
    source_grid=st.none() | text, source_sensor=st.none() | text,
    fill_parameters=st.none() | st.dictionaries(text, scalars, max_size=4),
    mask_threshold=st.none() | st.floats(0, 1),
    mask_source=st.none() | text, mask_span=st.none() | text,
    suspicious_policy=st.none() | text,
    quality_rules=st.none() | st.dictionaries(text, scalars, max_size=4),
    build_time=st.none() | text, history=st.none() | text)


@settings(max_examples=150, deadline=None)
@given(records)
def test_a_record_round_trips_through_netcdf_legal_attributes(record):
    attrs = record.to_attrs()
    assert set(attrs) <= set(KEYS.values())
    for key, value in attrs.items():  # what netCDF takes: text and numbers, no dicts/lists
        assert isinstance(value, (str, int, float)), key
    assert CubeRecord.from_attrs(attrs) == record
    assert CubeRecord.from_attrs(json.loads(json.dumps(attrs))) == record  # as Zarr keeps it


def test_every_older_form_decodes_to_the_record_of_today():
    """sicube 0.1 stored records as JSON values, missing days sometimes as ints, and an even
    older cube had no state attribute (its build record said "complete")."""
    new = CubeRecord(format=2, status=cube.COMPLETE, build={"complete": True},
                     source_files={"20240101": {"name": "a.nc"}},
                     missing_days=("20240102", "20240103"), failed_days={"20240104": "500"},
                     suspicious_days={}, source_base_urls=("http://a", "http://b"),
                     fill_parameters={"sigma": 7.0}, mask_threshold=0.85,
                     quality_rules={"k": 5.0})
    old = {cube.MARKER: 1, cube.BUILD_STATE: json.dumps({"complete": True}),
           cube.SOURCE_FILES: {"20240101": {"name": "a.nc"}},
           cube.MISSING_DAYS: [20240102, 20240103], cube.FAILED_DAYS: {"20240104": "500"},
           cube.SUSPICIOUS_DAYS: {}, cube.SOURCE_URLS: ["http://a", "http://b"],
           cube.FILL_PARAMETERS: {"sigma": 7.0}, cube.MASK_THRESHOLD_ATTR: 0.85,
           cube.QUALITY_RULES: {"k": 5.0}, "title": "not a record key"}
    record = CubeRecord.from_attrs(old)
    assert record.state == cube.COMPLETE and record.status is None
    assert record.replace(format=2, status=cube.COMPLETE) == new
    assert CubeRecord.from_attrs(new.to_attrs()) == new
    # Only the fields asked for (a state check on every open decodes no source files).
    assert CubeRecord.from_attrs(old, ["status", "build"]) == CubeRecord(build={"complete": True})
    bare = CubeRecord.from_attrs({cube.MARKER: 1, cube.BUILD_STATE: "{}"})
    assert bare.state == cube.BUILDING and not bare.has_day_lists
    assert bare.source_files is None and bare.fill_parameters is None and bare.grid is None
    # A 0.1 folder build left source_grid empty: the grid is in its files' names.
    named = CubeRecord(source_grid="", source_files={"20240101": {
        "name": "asi-AMSR2-n6250-20240101-v5.4.nc"}})
    assert named.grid == "n6250" and named.replace(source_grid="s3125").grid == "s3125"


def _tree(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def test_a_cube_of_a_newer_format_is_read_with_a_warning_and_never_written(tmp_path,
                                                                             capsys):
    store, source = tmp_path / "newer.zarr", tmp_path / "source"
    shutil.copytree(RELEASE / "cube.zarr", store)
    shutil.copytree(RELEASE / "source", source)
    zarr.open_group(str(store), mode="r+").attrs[cube.MARKER] = cube.FORMAT_VERSION + 1
    before = _tree(store)
    with pytest.warns(NewerCubeWarning, match="newer sicube"):
        ds = cube.open_cube(store)
    assert ds[cube.CONC].shape[0] == 10
    capsys.readouterr()
    assert main(["info", str(store)]) == 0  # said once, in one line, though opened twice
    err = capsys.readouterr().err
    assert err.startswith("sicube info: warning: ") and err.count("\n") == 1, err
    assert "newer sicube" in err
    for args in (["update", "--store", str(store), "--source", str(source)],
                 ["build", "--start", "20240401", "--end", "20240410", "--store", str(store),
                  "--source", str(source)]):
        assert main([*args, "-q"]) == 2, args
        err = capsys.readouterr().err
        assert "newer sicube" in err and "upgrade sicube" in err and err.count("\n") == 1, err
    assert _tree(store) == before


def test_a_format_1_record_is_decoded_as_a_copy_of_the_attributes():
    attrs = {cube.MARKER: 1, cube.SOURCE_FILES: {"20240101": {"name": "a.nc"}}}
    record = CubeRecord.from_attrs(attrs)
    record.source_files["20240101"]["stats"] = {"obs_fraction": 0.5}
    assert attrs[cube.SOURCE_FILES] == {"20240101": {"name": "a.nc"}}
