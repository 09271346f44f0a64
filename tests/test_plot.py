"""Maps render offline with the promised size and content; the explorer works; bad input: 2."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from sicube.archive.synthetic import geometry
from sicube.cli import main
from sicube.datacube import cube
from sicube.errors import BadInput
from sicube.views import plot

from .conftest import ARCHIVE_MISSING, ARCHIVE_START, ARCHIVE_STEP

DPI = 40  # small PNGs keep the tests fast; the layout does not depend on dpi


def _png(path, figsize) -> np.ndarray:
    """Read a PNG; check it has the figure's size in pixels and is not blank."""
    image = imread(path)[..., :3]
    assert image.shape[:2] == (round(figsize[1] * DPI), round(figsize[0] * DPI))
    colours = np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20, "a blank or nearly blank image"
    return image


def _has_colour(image: np.ndarray, colour: str, min_share: float = 0.005) -> bool:
    return np.all(np.abs(image - np.array(to_rgb(colour))) < 0.02, axis=-1).mean() >= min_share


def test_shipped_land_agrees_with_global_land_mask():
    # The sample archive's land comes from global-land-mask on the same projection.
    geo = geometry("n3125", ARCHIVE_STEP)
    shipped = plot.land_on_grid(geo.x, geo.y, 3411)
    assert shipped.shape == geo.land.shape
    assert (shipped == geo.land).mean() > 0.97
    assert sum(len(line) for line in plot.coastlines("n", 4)) > 1000


def test_day_map_from_a_source_file(archive, tmp_path):
    out = tmp_path / "day.png"
    plot.save_figure(plot.plot_day(archive.files[ARCHIVE_START]), out, dpi=DPI)
    image = _png(out, plot.DAY_FIGSIZE)
    # Land, missing data and open water are all on the map, in distinct colours.
    assert _has_colour(image, plot.LAND_COLOUR, 0.1)
    assert _has_colour(image, plot.MISSING_COLOUR)
    assert _has_colour(image, "#08306b", 0.05)  # Blues_r at 0 %: open water


@pytest.mark.parametrize("variable", [cube.RAW, cube.CONC])
def test_day_map_from_a_cube(small_cube, tmp_path, variable):
    out = tmp_path / "day.png"
    fig = plot.plot_day(store=small_cube, date=ARCHIVE_MISSING[0], variable=variable)
    assert "2024-04-05" in fig.axes[0].get_title()
    plot.save_figure(fig, out, dpi=DPI)
    image = _png(out, plot.DAY_FIGSIZE)
    if variable == cube.RAW:  # a missing day: no concentration anywhere, all grey or land
        assert not _has_colour(image, "#08306b", 0.001)
    else:  # the filled day has open water
        assert _has_colour(image, "#08306b", 0.05)


def test_mask_map_from_a_cube_and_from_a_mask_file(small_cube, tmp_path):
    out = tmp_path / "mask.png"
    plot.save_figure(plot.plot_mask(small_cube), out, dpi=DPI)
    _png(out, plot.MASK_FIGSIZE)
    # The same from a mask file like `sicube mask` writes.
    ds = xr.open_zarr(small_cube)
    mask_file = tmp_path / "land_mask.nc"
    mask = ds[[cube.LAND, cube.NAN_RATIO, cube.POLE_HOLE]]
    mask.attrs = {"mask_threshold": 0.85}
    mask.to_netcdf(mask_file)
    out2 = tmp_path / "mask2.png"
    from_file = plot.plot_mask(mask_file)
    plot.save_figure(from_file, out2, dpi=DPI)
    from_cube = plot.plot_mask(small_cube)
    np.testing.assert_array_equal(imread(out2)[..., :3].shape, imread(out)[..., :3].shape)
    # The same maps: every panel shows the same cells (the pictures differ by the title, which
    # names the source, and the layout's sub-pixel shifts that follow from its width).
    panels = [(a, b) for a, b in zip(from_file.axes, from_cube.axes, strict=True) if a.images]
    assert panels
    for a, b in panels:
        np.testing.assert_array_equal(np.ma.getdata(a.images[0].get_array()),
                                      np.ma.getdata(b.images[0].get_array()))
        np.testing.assert_array_equal(np.ma.getmaskarray(a.images[0].get_array()),
                                      np.ma.getmaskarray(b.images[0].get_array()))


def test_compare_map_with_and_without_a_source_file(small_cube, archive, tmp_path):
    day = ARCHIVE_START
    fig = plot.plot_compare(small_cube, day)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 3
    plot.save_figure(fig, tmp_path / "a.png", dpi=DPI)
    image = _png(tmp_path / "a.png", plot.COMPARE_FIGSIZE)
    assert _has_colour(image, plot.FLAG_COLOURS[1], 0.001)  # some cells were filled
    # The raw panel from the source file shows the same data as the cube's raw variable.
    from_file = plot.plot_compare(small_cube, day, source=archive.files[day])
    np.testing.assert_array_equal(from_file.axes[0].images[0].get_array(),
                                  fig.axes[0].images[0].get_array())
    assert archive.files[day].name in from_file.axes[0].get_title()


def test_roi_plot(small_cube, tmp_path):
    from sicube.analysis.report import roi_report

    report = roi_report(ARCHIVE_START, "20240412", 100, 140, 20, 60, store=small_cube)
    fig = plot.plot_roi(report)
    plot.save_figure(fig, tmp_path / "roi.png", dpi=DPI)
    _png(tmp_path / "roi.png", plot.ROI_FIGSIZE)
    # The rectangle covers exactly the ROI's cells (edges at half indices), on the full grid.
    (rectangle,) = fig.axes[0].patches
    assert rectangle.get_xy() == (19.5, 99.5)
    assert (rectangle.get_width(), rectangle.get_height()) == (40, 40)
    assert fig.axes[0].images[0].get_array().shape == report.grid_shape


def test_cli_plot_commands_write_pngs(small_cube, archive, tmp_path, capsys):
    day = f"{ARCHIVE_START:%Y%m%d}"
    runs = {
        "day": (["day", "--file", str(archive.files[ARCHIVE_START])], plot.DAY_FIGSIZE),
        "cube": (["day", "--store", str(small_cube), "--date", day, "--variable",
                  "sea_ice_conc"], plot.DAY_FIGSIZE),
        "mask": (["mask", "--store", str(small_cube)], plot.MASK_FIGSIZE),
        "compare": (["compare", "--store", str(small_cube), "--date", day],
                    plot.COMPARE_FIGSIZE),
    }
    for name, (args, figsize) in runs.items():
        out = tmp_path / f"{name}.png"
        assert main(["plot", *args, "-o", str(out), "--dpi", str(DPI)]) == 0
        _png(out, figsize)
    assert "wrote" in capsys.readouterr().out


def _bad(args, capsys, expected: str):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_cli_plot_bad_inputs_exit_2(small_cube, archive, tmp_path, capsys):
    import zarr

    out = ["-o", str(tmp_path / "x.png")]
    _bad(["plot", "day", "--file", str(tmp_path / "nope.nc"), *out], capsys, "no such file")
    not_nc = tmp_path / "asi-AMSR2-n3125-20240401-v5.4.nc"
    not_nc.write_text("<html>404</html>")
    _bad(["plot", "day", "--file", str(not_nc), *out], capsys, "not a netCDF file")
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    _bad(["plot", "day", "--store", str(plain), "--date", "20240401", *out], capsys,
         "not a sicube cube")
    _bad(["plot", "mask", "--store", str(tmp_path), *out], capsys, "not a sicube cube")
    _bad(["plot", "day", "--store", str(small_cube), "--date", "20240501", *out], capsys,
         "not in the cube")
    _bad(["plot", "day", "--store", str(small_cube), *out], capsys, "date: required")
    _bad(["plot", "compare", "--store", str(small_cube), "--date", "20240331", *out], capsys,
         "not in the cube")
    _bad(["plot", "day", "--file", str(archive.files[ARCHIVE_START]), "--variable",
          "sea_ice_conc", *out], capsys, "only raw data")
    _bad(["plot", "mask", "--mask", str(archive.files[ARCHIVE_START]), *out], capsys,
         "no land_mask variable")
    assert not (tmp_path / "x.png").exists()


def test_explore_returns_a_rasterized_map_with_time_and_variable(small_cube):
    import holoviews as hv

    view = plot.explore(small_cube)
    assert isinstance(view, hv.DynamicMap)
    assert [d.name for d in view.kdims] == ["variable", "time"]
    assert list(view.kdims[0].values) == [cube.CONC, cube.RAW]
    frame = view[cube.CONC, np.datetime64(ARCHIVE_START, "ns")]
    values = frame.dimension_values(2)
    # Rasterized percent values (0..100), land below the colour range, missing NaN.
    finite = values[np.isfinite(values)]
    assert finite.max() <= 100 and finite.max() > 50 and (finite == -1).any()
    with pytest.raises(BadInput, match="choose from"):
        plot.explore(small_cube, variables=("fill_flag",))


def test_cli_explore_writes_standalone_html(small_cube, tmp_path, capsys):
    out = tmp_path / "explore.html"
    assert main(["explore", str(small_cube), "--html", str(out), "--end", "20240403",
                 "--width", "120"]) == 0
    html = out.read_text()
    assert '"name":"Slider"' in html and "CustomSelect" in html  # time slider, variable menu
    assert "<script src=\"http" not in html and "<script type=\"text/javascript\" src" not in html
    assert "sea-ice concentration (%)" in html
    captured = capsys.readouterr()
    assert "explore:" in captured.err and "frame" not in captured.out  # the bar on stderr
    _bad(["explore", str(small_cube), "--html", str(out), "--start", "20250101"], capsys,
         "no day of the cube")


def test_plot_writes_the_format_its_extension_names(archive, tmp_path, capsys):
    """`-o x.jpg` gives JPEG bytes, .pdf a PDF, .svg SVG; an unknown extension: one line, 2."""
    args = ["plot", "day", "--file", str(archive.files[ARCHIVE_START]), "--dpi", "30", "-o"]
    magic = {"jpg": b"\xff\xd8\xff", "pdf": b"%PDF", "png": b"\x89PNG", "svg": b"<?xml"}
    for ext, head in magic.items():
        out = tmp_path / f"day.{ext}"
        assert main([*args, str(out)]) == 0
        assert out.read_bytes().startswith(head), ext
    _bad([*args, str(tmp_path / "day.xyz")], capsys, "cannot write a .xyz")
    assert not (tmp_path / "day.xyz").exists()


def test_explore_progress_goes_to_stderr_labelled(small_cube, tmp_path, capsys):
    out = plot.save_explorer(small_cube, tmp_path / "e.html", end="20240402", width=60,
                             progress=True)
    captured = capsys.readouterr()
    assert out.exists() and captured.out == ""
    assert "explore" in captured.err and "frame" in captured.err


def test_the_api_refuses_a_bad_resolution_or_width_before_writing(small_cube, tmp_path):
    # the checks live where the figure and the page are written, not only in the CLI
    with pytest.raises(BadInput, match="dpi: must be between 10 and 1200, got 5"):
        plot.save_figure(plot.plot_mask(small_cube), tmp_path / "m.png", dpi=5)
    with pytest.raises(BadInput, match="width: must be between 50 and 4000 pixels, got 10"):
        plot.save_explorer(small_cube, tmp_path / "e.html", width=10)
    assert list(tmp_path.iterdir()) == []
