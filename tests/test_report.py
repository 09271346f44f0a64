"""ROI counts equal direct counting on the source files; `info` matches what is on disk."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr

from sicube.analysis.report import (
    ALL_CELLS,
    OCEAN,
    ROI_CSV_COLUMNS,
    ROI_CSV_OCEAN_COLUMNS,
    format_info,
    info,
    roi_report,
)
from sicube.archive.sources import read_day
from sicube.cli import main
from sicube.datacube import cube
from sicube.errors import BadInput

from .conftest import (
    ARCHIVE_END,
    ARCHIVE_MISSING,
    ARCHIVE_START,
    SMALL_CUBE_CHUNKS,
    SMALL_CUBE_FILL,
    SMALL_CUBE_MASK_THRESHOLD,
)

# The whole grid, land and sea, one sea cell, a corner mostly land, one holding the pole hole.
ROIS = [(0, 224, 0, 152), (100, 140, 20, 60), (57, 58, 91, 92), (180, 224, 100, 152),
        (100, 112, 70, 82)]


def _direct(archive, ymin, ymax, xmin, xmax, counted=None) -> dict:
    """Missing cells per observed day, counted straight from the files with numpy (only the
    cells where `counted` is true, when given)."""
    keep = True if counted is None else counted
    return {day: int((np.isnan(read_day(path).z[ymin:ymax, xmin:xmax]) & keep).sum())
            for day, path in sorted(archive.files.items())}


def _grid_masks(store, ymin, ymax, xmin, xmax) -> tuple[np.ndarray, np.ndarray]:
    """(land, pole hole) inside the rectangle, read straight from the cube's arrays."""
    group = zarr.open_group(store, mode="r")
    rows, cols = slice(ymin, ymax), slice(xmin, xmax)
    return (group[cube.LAND][rows, cols].astype(bool),
            group[cube.POLE_HOLE][rows, cols].astype(bool))


@pytest.mark.parametrize("roi", ROIS)
def test_roi_counts_equal_direct_counting(archive, small_cube, roi):
    land, hole = _grid_masks(small_cube, *roi)
    ocean = ~land & ~hole
    size = (roi[1] - roi[0]) * (roi[3] - roi[2])
    # A cube counts its ocean cells only; a source folder (no mask) every cell.
    for where, counted, cells in (({"store": small_cube}, ocean, int(ocean.sum())),
                                  ({"source": archive.root}, None, size)):
        report = roi_report(ARCHIVE_START, ARCHIVE_END, *roi, **where)
        assert {d.date: d.missing_pixels for d in report.days} == _direct(archive, *roi,
                                                                           counted)
        assert report.counted_cells == cells
        for day in report.days:
            assert day.missing_percent == pytest.approx(100.0 * day.missing_pixels / cells)
        assert report.unobserved == ARCHIVE_MISSING
        assert report.grid_shape == (224, 152)
    cube_report = roi_report(ARCHIVE_START, ARCHIVE_END, *roi, store=small_cube)
    assert cube_report.counted == OCEAN
    assert (cube_report.land_cells, cube_report.pole_hole_cells) == (land.sum(), hole.sum())


def test_roi_leaves_out_land_and_the_pole_hole(archive, small_cube):
    roi = (100, 112, 70, 82)
    land, hole = _grid_masks(small_cube, *roi)
    assert hole.any() and not land.any()  # the ROI must hold the hole for this test
    report = roi_report(ARCHIVE_START, ARCHIVE_END, *roi, store=small_cube)
    every = _direct(archive, *roi)
    # The hole is missing on every observed day, and not counted: each day's count is the
    # source count less the hole's cells.
    assert {d.date: d.missing_pixels for d in report.days} == {
        day: n - int(hole.sum()) for day, n in every.items()}
    assert report.pole_hole_cells == int(hole.sum()) == 4
    assert "pole hole" in report.counted_text and "ocean" in report.counted_text


def test_roi_of_land_only_is_bad_input_from_a_cube(archive, small_cube, capsys):
    land, hole = _grid_masks(small_cube, 0, 1, 0, 1)
    assert land.all()
    with pytest.raises(BadInput, match="no ocean cell"):
        roi_report(ARCHIVE_START, ARCHIVE_END, 0, 1, 0, 1, store=small_cube)
    # A source folder has no mask: the land cell counts, and is missing on every day.
    report = roi_report(ARCHIVE_START, ARCHIVE_END, 0, 1, 0, 1, source=archive.root)
    assert [d.missing_pixels for d in report.days] == [1] * len(archive.files)
    assert report.counted == ALL_CELLS and "all 1 cells" in report.counted_text


def test_roi_is_end_exclusive_and_threshold_inclusive(archive, small_cube):
    z = read_day(archive.files[ARCHIVE_START]).z
    row, col = np.argwhere(np.isnan(z))[1234]
    one = roi_report(ARCHIVE_START, ARCHIVE_START, row, row + 1, col, col + 1, store=small_cube)
    assert [d.missing_pixels for d in one.days] == [1]
    # A threshold equal to a day's share lists that day ("at or above").
    report = roi_report(ARCHIVE_START, ARCHIVE_END, 100, 140, 20, 60, store=small_cube)
    shares = sorted({d.missing_percent for d in report.days})
    assert len(shares) > 1
    cut = shares[1]
    flagged = roi_report(ARCHIVE_START, ARCHIVE_END, 100, 140, 20, 60, store=small_cube,
                         threshold_percent=cut).flagged
    assert [d.date for d in flagged] == [d.date for d in report.days if d.missing_percent >= cut]
    assert 0 < len(flagged) < len(report.days)


def test_roi_sub_span_of_the_cube(small_cube):
    report = roi_report("20240404", "20240407", 57, 67, 91, 101, store=small_cube)
    assert [f"{d.date:%d}" for d in report.days] == ["04", "07"]
    assert [f"{d:%d}" for d in report.unobserved] == ["05", "06"]


def test_cli_roi_writes_csv_and_plot(small_cube, tmp_path, capsys):
    out_csv, out_png = tmp_path / "roi.csv", tmp_path / "roi.png"
    assert main(["roi", "--store", str(small_cube), "--start", "20240401", "--end", "20240412",
                 "--ymin", "100", "--ymax", "140", "--xmin", "20", "--xmax", "60",
                 "--csv", str(out_csv), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    report = roi_report(ARCHIVE_START, ARCHIVE_END, 100, 140, 20, 60, store=small_cube)
    with open(out_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == ROI_CSV_OCEAN_COLUMNS  # the header says ocean cells are counted
    # Every day of the span has a row; a day with no file is marked and has empty counts.
    assert [r[0] for r in rows[1:]] == [f"2024-04-{d:02d}" for d in range(1, 13)]
    missing = {d.isoformat() for d in ARCHIVE_MISSING}
    assert [r[1:] for r in rows[1:] if r[0] in missing] == [["false", "", ""]] * 2
    observed = [r for r in rows[1:] if r[0] not in missing]
    assert [r[1] for r in observed] == ["true"] * 10
    assert [(r[0], int(r[2])) for r in observed] == [
        (d.date.isoformat(), d.missing_pixels) for d in report.days]
    assert [float(r[3]) for r in observed] == pytest.approx(
        [d.missing_percent for d in report.days])
    land, hole = _grid_masks(small_cube, 100, 140, 20, 60)
    ocean = int((~land & ~hole).sum())
    assert (f"counted: ocean cells only: {ocean} of the ROI's 1600 "
            f"(left out: {int(land.sum())} land, 0 pole hole") in printed
    assert f"days with >= 0.1% missing in the ROI: {len(report.flagged)}" in printed
    assert out_png.stat().st_size > 10_000


def test_cli_roi_of_a_source_folder_counts_every_cell(archive, tmp_path, capsys):
    out_csv = tmp_path / "roi.csv"
    assert main(["roi", "--source", str(archive.root), "--start", "20240404", "--end",
                 "20240407", "--ymin", "0", "--ymax", "2", "--xmin", "0", "--xmax", "3",
                 "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "counted: all 6 cells of the ROI (a source folder has no land mask" in printed
    with open(out_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == ROI_CSV_COLUMNS
    expected = _direct(archive, 0, 2, 0, 3)
    assert rows[1:] == [
        ["2024-04-04", "true", str(expected[ARCHIVE_START.replace(day=4)]),
         f"{100.0 * expected[ARCHIVE_START.replace(day=4)] / 6:.6f}"],
        ["2024-04-05", "false", "", ""], ["2024-04-06", "false", "", ""],
        ["2024-04-07", "true", str(expected[ARCHIVE_START.replace(day=7)]),
         f"{100.0 * expected[ARCHIVE_START.replace(day=7)] / 6:.6f}"]]


@pytest.mark.parametrize("roi, why", [
    ((10, 10, 0, 5), "empty"), ((0, 5, 7, 3), "empty"), ((-1, 5, 0, 5), "outside"),
    ((0, 225, 0, 5), "outside"), ((0, 5, 100, 153), "outside"),
])
def test_roi_outside_the_grid_or_empty_is_bad_input(small_cube, archive, capsys, roi, why):
    ymin, ymax, xmin, xmax = (str(v) for v in roi)
    for where in (["--store", str(small_cube)], ["--source", str(archive.root)]):
        assert main(["roi", *where, "--start", "20240401", "--end", "20240403", "--ymin", ymin,
                     "--ymax", ymax, "--xmin", xmin, "--xmax", xmax]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "empty or outside the 224 x 152 grid" in err


def test_roi_bad_spans_and_sources(small_cube, archive, tmp_path, capsys):
    roi = ["--ymin", "0", "--ymax", "5", "--xmin", "0", "--xmax", "5"]
    cases = [
        (["--store", str(small_cube), "--start", "20250101", "--end", "20250105"], "outside"),
        (["--store", str(small_cube), "--start", "20240405", "--end", "20240401"], "before"),
        (["--store", str(tmp_path / "none.zarr"), "--start", "20240401", "--end", "20240402"],
         "does not exist"),  # the store opener's words, the same for every kind of store
        (["--store", str(tmp_path), "--start", "20240401", "--end", "20240402"], "not a sicube"),
        (["--source", str(archive.root), "--start", "20230101", "--end", "20230102"],
         "no daily files"),
        (["--store", str(small_cube), "--start", "20240401", "--end", "20240402",
          "--threshold-percent", "-1"], "threshold"),
    ]
    for args, expected in cases:
        assert main(["roi", *args, *roi]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err


def test_info_of_a_cube_matches_the_store(small_cube):
    import xarray as xr

    found = info(small_cube)
    ds = xr.open_zarr(small_cube)
    group = zarr.open_group(str(small_cube), mode="r")
    assert found.kind == "cube"
    assert found.grid_shape == (ds.sizes["y"], ds.sizes["x"]) == (224, 152)
    assert found.x_range == (ds.x.values[0], ds.x.values[-1])
    assert found.y_range == (ds.y.values[0], ds.y.values[-1])
    assert found.cell_size == 50_000.0
    assert (found.first_day, found.last_day, found.days) == (ARCHIVE_START, ARCHIVE_END, 12)
    assert found.observed_days == int(ds[cube.OBSERVED].sum()) == 10
    assert found.missing_days == ARCHIVE_MISSING
    assert found.crs.startswith("EPSG:3411 (Hughes 1980)")  # as the sample files declare
    assert found.grid == "n3125 coarsened 16 times"
    for name in cube.CUBE_VARS:
        assert found.chunks[name] == group[name].chunks == tuple(SMALL_CUBE_CHUNKS.values())
        codec = group[name].compressors[0]
        assert found.compression[name] == (
            f"{type(codec).__name__}(cname {codec.cname.value}, clevel {codec.clevel}, "
            f"shuffle {codec.shuffle.value})")
    assert found.size_bytes == sum(f.stat().st_size for f in small_cube.rglob("*") if f.is_file())
    assert found.provenance["fill_parameters"] == SMALL_CUBE_FILL
    assert found.provenance["mask_threshold"] == SMALL_CUBE_MASK_THRESHOLD
    assert found.provenance["source_files"] == 10
    text = "\n".join(format_info(found))
    assert "height 224 x width 152" in text and "20240405, 20240406" in text


def test_info_names_the_grid_of_a_failed_cube_with_no_day_ingested(small_cube, tmp_path,
                                                                    capsys):
    # No source file names the grid: n3125 coarsened 16 times is also n6250 coarsened 8
    # times; the finest source grid that explains the cells is the one said.
    import shutil

    from .test_cube import set_attrs

    store = tmp_path / "failed.zarr"
    shutil.copytree(small_cube, store)
    set_attrs(store, **{cube.STATUS: "failed: interrupted", cube.SOURCE_FILES: "{}"})
    assert info(store).grid == "n3125 coarsened 16 times"
    assert main(["info", str(store)]) == 0
    assert "grid: n3125 coarsened 16 times" in capsys.readouterr().out


def test_info_of_a_folder_and_a_file(archive, capsys):
    folder = info(archive.root)
    assert folder.kind == "folder" and folder.grid_shape == (224, 152)
    assert folder.missing_days == ARCHIVE_MISSING and folder.observed_days == 10
    assert folder.size_bytes == sum(p.stat().st_size for p in archive.files.values())
    one = info(archive.files[ARCHIVE_START])
    assert one.kind == "file" and one.first_day == ARCHIVE_START and one.observed_days == 1
    assert main(["info", str(archive.files[ARCHIVE_START])]) == 0
    assert folder.grid == one.grid == "n3125 coarsened 16 times"
    assert "grid: n3125 coarsened 16 times, height 224 x width 152" in capsys.readouterr().out


def test_info_bad_inputs_exit_2(tmp_path, capsys):
    not_nc = tmp_path / "asi-AMSR2-n3125-20240401-v5.4.nc"
    not_nc.write_text("<html>Not Found</html>")
    empty = tmp_path / "empty"
    empty.mkdir()
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    for path, expected in [(tmp_path / "none", "no such file"), (empty, "no AMSR2 daily files"),
                           (not_nc, "not a netCDF file"), (plain, "not a sicube cube")]:
        assert main(["info", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    with pytest.raises(BadInput):
        info(tmp_path / "none")


# --- info on a cube's life ------------------------------------------------------------------------


def test_info_first_line_is_the_state_and_the_source(small_cube, archive, capsys):
    assert main(["info", str(small_cube)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{small_cube}: complete"
    assert f"source: {archive.root}" in lines
    assert "failed days: 0" in lines and "not yet ingested: 0" in lines
    assert "missing days (no source file): 2 (20240405, 20240406)" in lines


def test_info_separates_missing_failed_and_not_ingested_days(small_cube, tmp_path, capsys):
    """A cube caught mid-build: days 1-4 and 7-8 ingested, 5 a 404, 6 failed, 9-12 not yet."""
    from .test_cube import FINISH, unfinished_copy

    path = unfinished_copy(
        small_cube, tmp_path, "building",
        **{cube.MISSING_DAYS: ["20240405"],
           cube.FAILED_DAYS: {"20240406": "not a netCDF file (HTML error page)"},
           cube.SOURCE_FILES: {f"202404{d:02d}": {"name": f"day{d}"} for d in (1, 2, 3, 4, 7, 8)},
           cube.SOURCE_DIRECTORY: "", cube.SOURCE_URL: "http://127.0.0.1:8000/amsr2"})
    zarr.open_group(str(path), mode="r+")[cube.OBSERVED][8:] = False  # not ingested yet
    found = info(path)
    assert found.status == "building"
    assert found.observed_days == 6
    assert [f"{d:%d}" for d in found.missing_days] == ["05"]
    assert {f"{d:%d}": r for d, r in found.failed_days.items()} == {
        "06": "not a netCDF file (HTML error page)"}
    assert [f"{d:%d}" for d in found.not_ingested] == ["09", "10", "11", "12"]
    assert main(["info", str(path)]) == 0  # info never refuses
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: building - unfinished; finish with: {FINISH}"
    assert "source: http://127.0.0.1:8000/amsr2" in lines
    assert "missing days (no source file): 1 (20240405)" in lines
    assert "failed days: 1" in lines
    assert "  20240406: not a netCDF file (HTML error page)" in lines
    assert "not yet ingested: 4 (20240409, 20240410, 20240411, 20240412)" in lines


def test_info_of_an_old_cube_falls_back_to_its_build_record(small_cube, tmp_path):
    """A cube written before the state and day-list attributes: its `sicube_build` record."""
    import json

    from .test_cube import unfinished_copy

    path = unfinished_copy(small_cube, tmp_path, cube.COMPLETE)
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    # Old cubes said "complete" in the record itself, beside its ingested chunks.
    record = {**json.loads(group.attrs["sicube_build"]), "complete": True, "ingested": [0, 1, 2]}
    group.attrs.update({"sicube_build": json.dumps(record)})
    for key in (cube.STATUS, cube.FINISH, cube.MISSING_DAYS, cube.FAILED_DAYS):
        group.attrs.pop(key, None)
    assert info(path).status == cube.COMPLETE
    assert info(path).missing_days == ARCHIVE_MISSING and info(path).not_ingested == []
    # Interrupted after its first time chunk (4 days), with 2 April failed.
    record.update(complete=False, ingested=[0], failed={"20240402": "truncated"})
    group.attrs.update({"sicube_build": json.dumps(record)})
    group.attrs.pop(cube.FAILED_DAYS, None)
    found = info(path)
    assert found.status == cube.BUILDING
    assert found.failed_days == {ARCHIVE_START.replace(day=2): "truncated"}
    assert len(found.not_ingested) == 8 and found.not_ingested[0] == ARCHIVE_START.replace(day=5)


def test_the_roi_report_says_itself_in_the_lines_the_cli_prints(small_cube, capsys):
    # the report's text is the API's (issue 21: the CLI parses and calls); the CLI prints it
    roi = (100, 112, 70, 82)
    report = roi_report(ARCHIVE_START, ARCHIVE_END, *roi, store=small_cube,
                        threshold_percent=0.0)
    lines = report.text()
    assert lines[0] == (f"ROI y 100:112, x 70:82 (144 cells) on the 224 x 152 grid, "
                        f"{ARCHIVE_START} .. {ARCHIVE_END}")
    assert lines[1] == f"counted: {report.counted_text}"
    assert len(lines) == 4 + len(report.flagged) and len(report.flagged) == len(report.days)
    assert main(["roi", "--store", str(small_cube), "--start", f"{ARCHIVE_START:%Y%m%d}",
                 "--end", f"{ARCHIVE_END:%Y%m%d}", "--ymin", "100", "--ymax", "112", "--xmin",
                 "70", "--xmax", "82", "--threshold-percent", "0"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
