"""The quality report page (`sicube report --html`) and `explore --html`: their content, and
that a real headless Chromium with no network loads them without an error and draws them."""

from __future__ import annotations

import copy
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from sicube.cli import main
from sicube.datacube import cube
from sicube.dates import yyyymmdd
from sicube.testing import SYNTHETIC_START, synthetic_cube
from sicube.views import html as html_report

from .headless import SKIP_REASON, find_chromium, load_page, under_ci

# Under CI they run all the same, and fail without Chromium (load_page says why).
needs_chromium = pytest.mark.skipif(find_chromium() is None and not under_ci(),
                                    reason=SKIP_REASON)

RICH_DAYS = 400  # more than a year: the extent and area get their climatology band
SUSPICIOUS_INDEX, FAILED_INDEX = 2, 6  # index 6 is one of synthetic_cube's missing days
ALL_ZERO_BIT, NAN_SHARE_BIT = int(cube.DayQuality.ALL_EQUAL), int(cube.DayQuality.OBS_SHARE)
SUSPICIOUS_REASON = "every observed ocean value is 0 %; observed share 0.10 vs 0.60"


@pytest.fixture(scope="module")
def plain_cube(tmp_path_factory):
    """A cube from before the per-day statistics, extent, area and cell area (a current
    cube with those variables taken out)."""
    path = synthetic_cube(tmp_path_factory.mktemp("plain") / "plain.zarr", n_days=30)
    group = zarr.open_group(path, mode="r+")
    for name in (*cube.DAY_VARS, html_report.EXTENT, html_report.AREA, html_report.CELL_AREA):
        if name in group:
            del group[name]
    zarr.consolidate_metadata(path)
    return path


def _day(index: int) -> dt.date:
    return SYNTHETIC_START + dt.timedelta(days=index)


@pytest.fixture(scope="module")
def rich_cube(tmp_path_factory):
    """A cube of more than a year holding every variable the report can show (written here
    under the names the later sicube versions give them), one suspicious and one failed day."""
    path = synthetic_cube(tmp_path_factory.mktemp("rich") / "rich.zarr", n_days=RICH_DAYS,
                          shape=(24, 20), chunks={"time": 16})
    rng = np.random.default_rng(1)
    quality = np.zeros(RICH_DAYS, np.uint8)
    quality[SUSPICIOUS_INDEX] = ALL_ZERO_BIT | NAN_SHARE_BIT
    doy = np.arange(RICH_DAYS) * 2 * np.pi / 365.25
    extent = 10e6 + 4e6 * np.cos(doy) + rng.normal(0, 1e5, RICH_DAYS)
    added = xr.Dataset({
        cube.DAY_QUALITY: ("time", quality, cube.ATTRS[cube.DAY_QUALITY]),
        **{name: ("time", rng.random(RICH_DAYS), {"units": "1"})
           for name in html_report.DAY_STATS},
        html_report.EXTENT: ("time", extent, {"units": "km2"}),
        html_report.AREA: ("time", 0.8 * extent, {"units": "km2"}),
        html_report.CELL_AREA: (("y", "x"), np.full((24, 20), 3125.0 ** 2), {"units": "m2"}),
    })
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    with pytest.warns(UserWarning, match="[Cc]onsolidated"):
        added.to_zarr(path, mode="a", zarr_format=3)  # (it sets the group's attributes anew)
    group = zarr.open_group(path, mode="r+")
    missing = [d for d in cube.record_attr(attrs, cube.MISSING_DAYS)
               if d != yyyymmdd(_day(FAILED_INDEX))]
    group.attrs.update({**attrs, cube.MISSING_DAYS: missing,
                        cube.SUSPICIOUS_DAYS: {str(yyyymmdd(_day(SUSPICIOUS_INDEX))):
                                               SUSPICIOUS_REASON},
                        cube.FAILED_DAYS: {str(yyyymmdd(_day(FAILED_INDEX))): "not netCDF"}})
    return path


@pytest.fixture(scope="module")
def rich_quality(rich_cube):
    """What the report reads of `rich_cube` (read once: drawing takes seconds)."""
    return html_report.collect(rich_cube)


def _external_links(page: str) -> list[str]:
    """src / href values of `page` that are not inline (data:) or in-page (#) references."""
    return re.findall(r'(?:src|href)="(?!data:|#)([^"]*)"', page)


def test_a_cube_from_before_the_new_variables_says_what_each_absent_section_lacks(plain_cube):
    quality = html_report.collect(plain_cube)
    page = html_report.render_html(quality)
    assert quality.states.count(html_report.OBSERVED) == 27
    assert quality.states.count(html_report.MISSING) == 3
    assert ("not in this cube (built before sicube wrote sea_ice_extent, sea_ice_area)"
            in page)
    assert "built before sicube wrote day_quality" in page
    assert "built before sicube wrote obs_fraction, zero_fraction, mean_conc, extent_raw" in page
    assert "built before sicube wrote cell_area" in page
    assert set(quality.figures) == {"shares", "mask"}
    assert "<script" not in page and not _external_links(page)
    assert page.count('src="data:image/png;base64,') == 2
    assert f'title="{_day(5).isoformat()}: missing"' in page


def test_daily_flag_counts_equal_numpy_on_the_whole_array(plain_cube):
    quality = html_report.collect(plain_cube)
    flags = xr.open_zarr(plain_cube)[cube.FLAG].values
    want = np.stack([np.bincount(day.ravel(), minlength=5) for day in flags])
    np.testing.assert_array_equal(quality.flag_counts, want)


def test_every_section_is_drawn_when_the_cube_holds_its_variables(rich_quality):
    quality = rich_quality
    page = html_report.render_html(quality)
    assert set(quality.figures) == {"shares", "stats", "extent", "mask", "cell_area"}
    assert quality.notes == {}  # nothing absent, and the band is drawn (span > 1 year)
    suspicious, failed = _day(SUSPICIOUS_INDEX), _day(FAILED_INDEX)
    assert quality.states[SUSPICIOUS_INDEX] == html_report.SUSPICIOUS
    assert quality.states[FAILED_INDEX] == html_report.FAILED
    assert f'title="{suspicious}: suspicious ({SUSPICIOUS_REASON})"' in page
    assert f'title="{failed}: failed (failed: not netCDF)"' in page
    assert f"<td>{failed}</td><td>failed: not netCDF</td>" in page
    assert "<script" not in page and not _external_links(page)


def test_a_short_cube_gets_no_climatology_band_and_says_why(rich_quality, rich_cube):
    quality = copy.copy(rich_quality)
    quality.figures, quality.notes = {}, {}
    keep = slice(0, 200)
    quality.days, quality.states = quality.days[keep], quality.states[keep]
    quality.series = {k: v[keep] for k, v in quality.series.items()}
    quality.flag_counts = quality.flag_counts[keep]
    html_report._draw(quality, xr.open_zarr(rich_cube))
    assert quality.notes["extent"] == "no climatology band: the cube spans less than a year"


def test_doy_band_is_the_pooled_mean_and_std_of_nearby_days_of_year():
    rng = np.random.default_rng(3)
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(900)]
    values = rng.normal(size=900)
    values[17] = np.nan
    mean, std = html_report.doy_band(days, values, half_window=3)
    doy = np.array([d.timetuple().tm_yday for d in days])
    for i in (0, 100, 365, 800):  # 0 and 365: the window wraps around the year's end
        gap = np.abs(doy - doy[i])
        near = (np.minimum(gap, 366 - gap) <= 3) & np.isfinite(values)
        assert mean[i] == pytest.approx(values[near].mean())
        assert std[i] == pytest.approx(values[near].std())


def test_cli_report_writes_the_page_and_refuses_bad_input_in_one_line(plain_cube, tmp_path,
                                                                      capsys):
    out = tmp_path / "sub" / "report.html"
    assert main(["report", "-q", "--store", str(plain_cube), "--html", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.read_text().startswith("<!DOCTYPE html>")
    assert not list(out.parent.glob("*.part"))
    for args, message in (
            (["--store", str(tmp_path / "none.zarr")], "does not exist"),
            (["--store", str(tmp_path)], "not a sicube cube"),
            (["--store", str(plain_cube), "--html", str(tmp_path)], "is a folder")):
        html = [] if "--html" in args else ["--html", str(tmp_path / "x.html")]
        assert main(["report", "-q", *args, *html]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.html").exists()


def test_an_unfinished_cube_is_refused_unless_allowed(plain_cube, tmp_path, capsys):
    store = tmp_path / "unfinished.zarr"
    shutil.copytree(plain_cube, store)
    group = zarr.open_group(store, mode="r+")
    group[cube.OBSERVED][26:] = False
    files = {k: v for k, v in cube.record_attr(group, cube.SOURCE_FILES).items()
             if int(k) < yyyymmdd(_day(26))}
    group.attrs.update({cube.STATUS: cube.BUILDING, cube.SOURCE_FILES: files})
    out = tmp_path / "r.html"
    assert main(["report", "-q", "--store", str(store), "--html", str(out)]) == 2
    assert "unfinished cube" in capsys.readouterr().err and not out.exists()
    assert main(["report", "-q", "--store", str(store), "--html", str(out),
                 "--allow-incomplete"]) == 0
    page = out.read_text()
    assert "This cube is unfinished" in page and "not ingested (4)" in page
    quality = html_report.collect(store, allow_incomplete=True)
    assert np.isnan(quality.flag_counts[26:]).all() and not np.isnan(quality.flag_counts[:26]).any()


# --- in a real browser ----------------------------------------------------------------------


def _assert_drawn(load, *, non_white: float, spread: float) -> None:
    assert load.errors == [], load.errors
    assert load.requests == [], f"the page reached for the network: {load.requests}"
    assert load.non_white_share() > non_white, load.non_white_share()
    assert load.spread() > spread, load.spread()


@pytest.mark.parametrize("ci, outcome", [("true", "1 failed"), ("", "1 skipped")])
def test_without_chromium_the_browser_tests_skip_but_fail_under_ci(tmp_path, ci, outcome):
    # a skipped browser test under CI would let a page that no longer loads pass unseen
    test = f"{Path(__file__).name}::test_the_browser_check_catches_errors_network_and_blank_pages"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfs", test],
        cwd=Path(__file__).parent, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CI": ci, "SICUBE_CHROMIUM": str(tmp_path / "no-chromium")})
    assert done.returncode == (1 if ci else 0), done.stdout + done.stderr
    assert outcome in done.stdout and "no Chromium found" in done.stdout, done.stdout


def test_ci_stops_when_chromium_cannot_be_installed(tmp_path):
    # .ci/run runs .ci/chromium first; here no Chromium is on PATH and apt-get finds none
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("id", "env"):
        (tools / name).symlink_to(shutil.which(name))
    apt_get = tools / "apt-get"
    apt_get.write_text('#!/bin/sh\necho "E: Unable to locate package chromium" >&2\nexit 100\n')
    apt_get.chmod(0o755)
    script = Path(__file__).parents[1] / ".ci" / "chromium"
    done = subprocess.run([shutil.which("bash"), str(script)], env={"PATH": str(tools)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("CI error: "), done.stderr
    assert "cannot run without Chromium" in done.stderr
    if os.geteuid() == 0:  # (elsewhere: no root and no sudo to install it, it says)
        assert "apt-get could not install chromium" in done.stderr

    (tools / "chromium").symlink_to(shutil.which("true"))  # one on PATH: nothing to do
    done = subprocess.run([shutil.which("bash"), str(script)], env={"PATH": str(tools)},
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@needs_chromium
def test_the_browser_check_catches_errors_network_and_blank_pages(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><head><script src="https://cdn.example.org/x.js"></script></head>'
                   '<body><script>console.error("boom"); missing();</script></body></html>')
    load = load_page(bad, width=400, height=300)
    assert any("boom" in e for e in load.errors) and any("missing" in e for e in load.errors)
    assert load.requests == ["https://cdn.example.org/x.js"]
    assert load.non_white_share() < 0.01 and load.spread() < 1


@needs_chromium
def test_report_page_loads_offline_without_errors_and_is_drawn(rich_quality, tmp_path):
    out = tmp_path / "report.html"
    out.write_text(html_report.render_html(rich_quality))
    load = load_page(out, width=1100, height=2400)
    _assert_drawn(load, non_white=0.1, spread=20)


@needs_chromium
def test_explorer_page_loads_offline_without_errors_and_is_drawn(plain_cube, tmp_path):
    from sicube.views.plot import save_explorer

    out = save_explorer(plain_cube, tmp_path / "explore.html", end="20240402", width=120)
    # Bokeh draws after the load event, from the page's embedded document.
    load = load_page(out, width=500, height=400, settle=2.0,
                     ready="window.Bokeh !== undefined && Bokeh.documents.length > 0")
    _assert_drawn(load, non_white=0.05, spread=20)
