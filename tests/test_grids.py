"""Every grid end to end (a southern cube through build, mask, fill, maps, info, roi, explore
and the dataset) and the north pole hole (not land, flag 4, the ring's mean)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import xarray as xr
import zarr

from sicube.analysis.report import format_info, info, roi_report
from sicube.archive import products
from sicube.archive.sources import read_day
from sicube.archive.synthetic import write_archive
from sicube.cli import main
from sicube.datacube import cube
from sicube.datacube.cube import FillFlag
from sicube.dates import day_range
from sicube.errors import BadInput
from sicube.ml.dataset import SICDataset
from sicube.pipeline import mask
from sicube.pipeline.build import build
from sicube.views import plot

from .conftest import ARCHIVE_END, ARCHIVE_START, ARCHIVE_STEP, SMALL_CUBE_FILL
from .pole_oracle import expected_cube, expected_pole_hole, expected_ring

SOUTH_START, SOUTH_END = dt.date(2024, 9, 1), dt.date(2024, 9, 6)
SOUTH_MISSING = dt.date(2024, 9, 3)
SOUTH_STEP = 8  # s6250 coarsened 8 times: 166 x 158 cells of 50 km, the real coastline
FILL = SMALL_CUBE_FILL


@pytest.fixture(scope="module")
def south(tmp_path_factory):
    """(archive, cube path) of a few s6250 days, one missing, built from the folder."""
    root = tmp_path_factory.mktemp("south")
    archive = write_archive(root / "archive", SOUTH_START, SOUTH_END, step=SOUTH_STEP,
                            missing_days=[SOUTH_MISSING], seed=5, grid="s6250")
    store = root / "south.zarr"
    build(SOUTH_START, SOUTH_END, store, source=archive.root,
          chunks={"time": 4, "y": 64, "x": 64}, **FILL, progress=False)
    return archive, store


def _raw(archive, days):
    return np.stack([read_day(archive.files[d]).z if d in archive.files
                     else np.full(archive.shape, np.nan, np.float32) for d in days])


def test_southern_cube_declares_the_south_polar_stereographic_crs(south):
    import rioxarray  # a declared test dependency: a broken install fails, not skips

    ds = xr.open_zarr(south[1])
    crs = ds[cube.CONC].rio.crs
    assert rioxarray and crs.to_epsg() == 3412
    from pyproj import CRS

    parsed = CRS.from_wkt(crs.to_wkt())
    params = parsed.to_dict()
    assert (params["proj"], params["lat_0"], params["lon_0"]) == ("stere", -90, 0)
    assert params["lat_ts"] == -70 and parsed.ellipsoid.name == "Hughes 1980"
    assert products.GridCRS.from_attrs(ds[cube.GRID_MAPPING].attrs).south


def test_southern_fill_equals_the_reference_and_has_no_pole_hole(south):
    archive, store = south
    days = list(day_range(SOUTH_START, SOUTH_END))
    group = zarr.open_group(str(store), mode="r")
    raw = _raw(archive, days)
    assert group[cube.RAW][:].tobytes() == raw.tobytes()
    land = group[cube.LAND][:].astype(bool)
    assert not expected_pole_hole(raw, "s6250", SOUTH_STEP).any()
    assert not group[cube.POLE_HOLE][:].any()
    conc, flags = expected_cube(raw, land, np.zeros_like(land), FILL)
    np.testing.assert_allclose(group[cube.CONC][:], conc, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(group[cube.FLAG][:], flags)
    assert not (flags == FillFlag.POLE_HOLE).any()
    missing = days.index(SOUTH_MISSING)
    assert (flags[missing] == FillFlag.FILLED).sum() > 1000  # the missing day is filled
    # The mask found Antarctica: most cells within 1000 km of the pole are land.
    xx, yy = np.meshgrid(group["x"][:], group["y"][:])
    assert land[np.hypot(xx, yy) < 1_000_000].mean() > 0.85


def _pixels(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def test_day_map_of_the_southern_cube_shows_antarctica(south):
    from matplotlib.colors import to_rgb

    archive, store = south
    fig = plot.plot_day(store=store, date=SOUTH_START, variable=cube.CONC)
    pixels = _pixels(fig)
    ax = fig.axes[0]
    # Sample the map on a lattice of points within 2500 km of the pole; compare its land
    # colour with the shipped southern coastline (and with the northern one: not that).
    xs = np.linspace(-2_500_000, 2_500_000, 41)
    px, py = np.meshgrid(xs, xs)
    inside = np.hypot(px, py) < 2_500_000
    px, py = px[inside], py[inside]
    display = ax.transData.transform(np.column_stack([px, py]))
    height = pixels.shape[0]
    cols = np.rint(display[:, 0]).astype(int)
    rows = np.rint(height - display[:, 1]).astype(int)
    tan = np.array(to_rgb(plot.LAND_COLOUR)) * 255
    drawn_land = np.abs(pixels[rows, cols] - tan).max(axis=1) <= 3
    south_land = np.array([mask.coastline_land(np.array([x]), np.array([y]), south=True)[0, 0]
                           for x, y in zip(px, py, strict=True)])
    north_land = np.array([mask.coastline_land(np.array([x]), np.array([y]), south=False)[0, 0]
                           for x, y in zip(px, py, strict=True)])
    assert south_land.mean() > 0.4  # Antarctica fills much of the disc
    # Coastlines, graticule lines and labels cover a few of the sampled pixels.
    assert (drawn_land == south_land).mean() > 0.9
    assert (drawn_land == north_land).mean() < 0.6
    # A southern graticule: latitude labels in degrees south.
    labels = [t.get_text() for t in ax.texts]
    assert "60°S" in labels and not any(t.endswith("°N") for t in labels)


def test_southern_mask_compare_and_roi_maps(south, tmp_path):
    archive, store = south
    for fig in (plot.plot_mask(store), plot.plot_compare(store, SOUTH_MISSING)):
        assert _pixels(fig).std() > 10
    out = tmp_path / "mask.nc"
    mask.export_mask(store, out)
    with xr.open_dataset(out) as exported:
        assert not exported[cube.POLE_HOLE].values.any()
    assert _pixels(plot.plot_mask(out)).std() > 10
    report = roi_report(SOUTH_START, SOUTH_END, 60, 100, 60, 100, store=store)
    assert len(report.days) == 5 and report.unobserved == [SOUTH_MISSING]
    from_files = roi_report(SOUTH_START, SOUTH_END, 60, 100, 60, 100, source=archive.root)
    # A folder has no mask: it counts every cell; the cube counts ocean cells only, and here
    # its land is missing on every day of the files.
    assert report.land_cells > 0 and report.pole_hole_cells == 0
    assert [d.missing_pixels for d in from_files.days] == \
        [d.missing_pixels + report.land_cells for d in report.days]
    assert _pixels(plot.plot_roi(report)).std() > 10


def test_southern_explore_marks_southern_land(south):
    archive, store = south
    view = plot.explore(store, dynamic=False, width=80)
    ds = cube.open_cube(store)
    stacked = plot._explore_array(ds, (cube.CONC,))
    land = stacked.isel(variable=0, time=0).values == -1.0
    expected = mask.coastline_land(ds["x"].values, ds["y"].values, south=True)
    np.testing.assert_array_equal(land, expected)
    assert len(view.keys()) == 12  # two variables x six days


def test_southern_info_names_the_grid_and_crs(south, capsys):
    archive, store = south
    lines = format_info(info(store))
    text = "\n".join(lines)
    assert "grid: s6250 coarsened 8 times" in text and "EPSG:3412" in text
    assert "(south)" in text and "pole hole: none" in text
    assert "fill_flag cells:" in text and "4 pole hole 0" in text
    folder = info(archive.root)
    assert folder.grid == "s6250 coarsened 8 times" and "EPSG:3412" in folder.crs
    assert info(archive.files[SOUTH_START], grid="s6250").kind == "file"
    with pytest.raises(BadInput, match="holds the s6250"):
        info(archive.files[SOUTH_START], grid="n6250")
    assert main(["info", str(archive.root), "--grid", "n3125"]) == 2
    assert "no AMSR2 daily files (asi-AMSR2-n3125-*.nc)" in capsys.readouterr().err
    assert main(["info", str(archive.root), "--grid", "s6250"]) == 0
    assert "grid: s6250" in capsys.readouterr().out


def test_southern_dataset_windows(south):
    _, store = south
    data = SICDataset(store, SOUTH_START, SOUTH_END, input_length=2, pred_length=1,
                      variables=["filled"])
    assert len(data) == 1  # windows touching the missing 3 September are skipped: 4..6
    inputs, targets = data[0]
    assert tuple(inputs.shape) == (2, 2, 166, 158) and tuple(targets.shape) == (1, 1, 166, 158)
    group = zarr.open_group(str(store), mode="r")
    flags = group[cube.FLAG][3]
    np.testing.assert_array_equal(inputs[0, 1].numpy(), np.isin(flags, (1, 2, 4)))


# --- the north pole hole ------------------------------------------------------------------------


def test_pole_hole_detection_rules():
    g = products.GRIDS["n3125"]
    x, y = g.x(16), g.y(16)
    rows, cols = mask.pole_cells(x, y)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (106, 76), (106, 77), (107, 76), (107, 77)]  # the pole lies on their corners
    missing = np.zeros((y.size, x.size), bool)
    missing[105:109, 75:79] = True  # around the pole
    missing[10:20, 10:20] = True  # elsewhere: not connected to the pole
    hole = mask.detect_pole_hole(missing, x, y, south=False)
    assert hole.sum() == 16 and hole[105:109, 75:79].all()
    assert not mask.detect_pole_hole(missing, x, y, south=True).any()
    land = mask.coastline_land(x, y)
    missing |= land  # land touching the hole region stays land
    assert mask.detect_pole_hole(missing, x, y, south=False).sum() == 16


def test_north_pole_hole_is_not_land_and_takes_the_ring_mean(small_cube, archive):
    group = zarr.open_group(str(small_cube), mode="r")
    days = list(day_range(ARCHIVE_START, ARCHIVE_END))
    raw = group[cube.RAW][:]
    hole = group[cube.POLE_HOLE][:].astype(bool)
    np.testing.assert_array_equal(hole, expected_pole_hole(raw, "n3125", ARCHIVE_STEP))
    land = group[cube.LAND][:].astype(bool)
    rows, cols = mask.pole_cells(group["x"][:], group["y"][:])
    assert hole[rows, cols].all() and not land[hole].any()
    conc, flags = group[cube.CONC][:], group[cube.FLAG][:]
    assert (flags[:, hole] == FillFlag.POLE_HOLE).all()
    ring = expected_ring(hole, land, FILL["space_window"])
    for t, day in enumerate(days):
        seen = raw[t][ring][~np.isnan(raw[t][ring])]
        if day in archive.files:
            assert seen.size > 0
            low, high = seen.min() / 100, seen.max() / 100
        else:  # no file: the ring's filled values
            assert seen.size == 0
            values = conc[t][ring & (flags[t] == FillFlag.FILLED)]
            low, high = values.min(), values.max()
        assert ((conc[t][hole] >= low - 1e-6) & (conc[t][hole] <= high + 1e-6)).all(), day
        assert conc[t][hole].min() > 0.5  # ice at the pole, not a disc of open water
    text = "\n".join(format_info(info(small_cube)))
    assert f"pole hole: {hole.sum()} cells" in text
    assert f"4 pole hole {int(hole.sum()) * len(days):,}" in text


def test_pole_hole_in_flag_meanings_maps_and_dataset(small_cube):
    ds = xr.open_zarr(small_cube)
    assert ds[cube.FLAG].attrs["flag_meanings"].split()[4] == "pole_hole"
    assert list(ds[cube.FLAG].attrs["flag_values"]) == [0, 1, 2, 3, 4]
    assert len(plot.FLAG_COLOURS) == len(cube.FLAG_MEANINGS)
    fig = plot.plot_compare(small_cube, ARCHIVE_START)
    legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert legend[4].startswith("4 pole hole")
    data = SICDataset(small_cube, ARCHIVE_START, ARCHIVE_END, input_length=1, pred_length=1,
                      variables=["filled"])
    inputs, _ = data[0]
    hole = ds[cube.POLE_HOLE].values.astype(bool)
    assert (inputs[0, 1].numpy()[hole] == 1).all()


def test_sample_and_demo_grid_arguments(tmp_path, capsys):
    assert main(["sample", "--start", "20240901", "--end", "20240902", "--out",
                 str(tmp_path / "s"), "--grid", "s3125", "--step", "32", "-q"]) == 0
    files = sorted((tmp_path / "s").rglob("*.nc"))
    assert [f.name for f in files] == ["asi-AMSR2-s3125-20240901-v5.4.nc",
                                       "asi-AMSR2-s3125-20240902-v5.4.nc"]
    assert read_day(files[0]).crs.epsg == 3412
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["mirror", "--root", str(tmp_path), "--grid", "x9999"])
    assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err
