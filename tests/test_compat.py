"""Cubes written by the previous release keep opening, reporting, training and updating.

`tests/data/release-0.1/` holds a small cube written by sicube 0.1.0 (cube format 1: its
records as JSON values, no format-2 keys) and the folder it was built from, which has two
more days than the cube (see its README.txt). Every test works on copies.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from sicube.cli import main
from sicube.datacube import cube
from sicube.datacube.record import CubeRecord
from sicube.pipeline.build import build

RELEASE = Path(__file__).parent / "data" / "release-0.1"
FIRST, LAST, SOURCE_LAST = dt.date(2024, 4, 1), dt.date(2024, 4, 10), dt.date(2024, 4, 12)
MISSING = dt.date(2024, 4, 5)  # no file in the folder


@pytest.fixture
def old(tmp_path) -> tuple[Path, Path]:
    """Copies of the release's cube and its source folder: (cube, folder)."""
    store, source = tmp_path / "old.zarr", tmp_path / "source"
    shutil.copytree(RELEASE / "cube.zarr", store)
    shutil.copytree(RELEASE / "source", source)
    return store, source


def _arrays(store) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: group[name][:] for name in (*cube.CUBE_VARS, *cube.GRID_VARS, cube.OBSERVED,
                                             cube.SENSOR, *cube.DAY_STATS, cube.DAY_QUALITY)}


def _check_reads_and_reports(store: Path, last: dt.date, tmp_path: Path, capsys) -> None:
    """The cube opens (sicube and plain xarray), `info` tells its span and days right, and
    `report --html` writes its page."""
    ds = cube.open_cube(store)
    days = ds["time"].values.astype("datetime64[D]")
    assert (str(days[0]), str(days[-1])) == (FIRST.isoformat(), last.isoformat())
    assert int(ds[cube.OBSERVED].sum()) == (last - FIRST).days  # every day but MISSING
    plain = xr.open_zarr(store)
    assert plain[cube.CONC].shape == ds[cube.CONC].shape
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"{FIRST}" in out and f"{last}" in out and "complete" in out, out
    assert f"{MISSING}" in out or f"{MISSING:%Y%m%d}" in out, out
    page = tmp_path / f"report-{last:%Y%m%d}.html"
    assert main(["report", "-q", "--store", str(store), "--html", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_the_previous_release_cube_decodes_into_the_record(old):
    store, _ = old
    record = CubeRecord.from_attrs(zarr.open_group(str(store), mode="r").attrs)
    assert record.format == 1 and record.sicube_version == "0.1.0"
    assert record.status == cube.COMPLETE
    assert record.missing_days == (f"{MISSING:%Y%m%d}",)
    assert record.failed_days == {} and record.suspicious_days == {}
    assert len(record.source_files) == 9
    assert record.fill_parameters == {"time_window": 3, "space_window": 7, "alpha": 15.0,
                                      "sigma": 7.0}
    assert record.mask_threshold == 0.85 and record.suspicious_policy == "missing"
    assert record.build["args"]["end"] == LAST.isoformat()


def test_the_previous_release_cube_opens_reports_and_trains(old, tmp_path, capsys):
    store, _ = old
    _check_reads_and_reports(store, LAST, tmp_path, capsys)
    from sicube.ml.dataset import SICDataset

    data = SICDataset(store, FIRST, LAST, 2, 1, quality_cache=False)
    conc = zarr.open_group(str(store), mode="r")[cube.CONC][:]
    inputs, targets = data.windows
    assert len(data) == len(inputs) > 0
    for index in (0, len(data) - 1):
        x, y = data[index]
        np.testing.assert_array_equal(x[:, 0].numpy(), conc[inputs[index]])
        np.testing.assert_array_equal(y[:, 0].numpy(), conc[targets[index]])


def test_the_previous_release_cube_updates_like_a_fresh_build(old, tmp_path, capsys):
    store, source = old
    assert main(["update", "-q", "--store", str(store), "--source", str(source)]) == 0
    _check_reads_and_reports(store, SOURCE_LAST, tmp_path, capsys)
    record = CubeRecord.from_attrs(zarr.open_group(str(store), mode="r").attrs)
    assert record.format == cube.FORMAT_VERSION  # the update rewrote the record in its form
    assert record.build["args"]["end"] == SOURCE_LAST.isoformat()
    # Today's build of the whole span with the old cube's mask (an update keeps its mask).
    fresh = tmp_path / "fresh.zarr"
    build(FIRST, SOURCE_LAST, fresh, source=source, mask_from=str(RELEASE / "cube.zarr"),
          progress=False)
    got, expected = _arrays(store), _arrays(fresh)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
