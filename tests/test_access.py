"""Archive access: fallback hosts, fallback versions, `check`, AMSR-E beside AMSR2."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sys

import numpy as np
import pytest
import xarray as xr

from sicube import cli
from sicube.archive import products
from sicube.archive.download import check, default_raw_dir, download
from sicube.archive.mirror import Mirror
from sicube.archive.sources import find_day_files
from sicube.archive.synthetic import write_archive
from sicube.datacube import cube
from sicube.dates import day_range
from sicube.errors import BadInput
from sicube.pipeline.build import build
from sicube.testing import serve_directory, silent_server
from tests.conftest import ARCHIVE_MISSING

FAST = {"backoff": 0.01, "backoff_max": 0.05, "progress": False}
SMALL = {"time_window": 1, "space_window": 2, "alpha": 15.0, "sigma": 2.0, "progress": False}


def _closed_host() -> str:
    """A base URL on 127.0.0.1 where nothing listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/amsr2/asi_daygrid_swath/n3125/netcdf"


def _host(url: str) -> str:
    return url.split("/")[2]


# --- several hosts --------------------------------------------------------------------------


def test_a_dead_primary_gives_way_to_the_fallback_host(mirror, archive, tmp_path):
    dead = _closed_host()
    report = download("20240401", "20240406", tmp_path, base_url=[dead, mirror.base_url],
                      retries=2, concurrency=1, **FAST)
    assert not report.failed  # an unreachable host does not hold a missing day up
    assert [r.day for r in report.missing] == ARCHIVE_MISSING
    for record in report.ok:
        assert _host(record.source) == _host(mirror.base_url)
        assert record.path.read_bytes() == archive.files[record.day].read_bytes()
    # The first file moves on at the refused connection; later files ask the fallback first.
    assert [r.attempts for r in report.ok] == [1 + 1] + [1] * (len(report.ok) - 1)
    manifest = json.loads(report.manifest_path.read_text())
    assert manifest["base_urls"] == [dead, mirror.base_url]
    assert manifest["days"]["2024-04-01"]["source"].startswith(mirror.base_url)


def test_a_silent_primary_costs_one_timeout_per_file_in_flight(mirror, tmp_path, capsys):
    """A first host that accepts and never answers (issue 20): the files in flight when it
    goes silent pay one timeout each, the others go to the fallback first."""
    with silent_server() as silent:
        dead = f"{silent.url}/amsr2/asi_daygrid_swath/n3125/netcdf"
        code = cli.main(["download", "--start", "20240401", "--end", "20240409", "--out",
                         str(tmp_path), "--base-url", dead, "--base-url", mirror.base_url,
                         "--concurrency", "3", "--retries", "2", "--timeout", "2",
                         "--backoff", "0.01", "-q"])
        asked = silent.connections
    out = capsys.readouterr().out
    assert code == 0  # the two missing days are missing, not failed
    assert asked <= 3  # one attempt per file in flight, not 9 files x 3 attempts
    assert f"{mirror.base_url}: served 7 files" in out
    assert f"{dead}: skipped, timed out (no data for 2 s)" in out
    sources = json.loads((tmp_path / "manifest.json").read_text())["days"]
    assert {_host(d["source"]) for d in sources.values() if d["source"]} == \
        {_host(mirror.base_url)}


def test_check_asks_a_silent_primary_once_per_day_in_flight(mirror, capsys):
    with silent_server() as silent:
        dead = f"{silent.url}/amsr2/asi_daygrid_swath/n3125/netcdf"
        code = cli.main(["check", "--start", "20240401", "--end", "20240409", "--base-url",
                         dead, "--base-url", mirror.base_url, "--concurrency", "3",
                         "--retries", "2", "--timeout", "2", "--backoff", "0.01", "-q"])
        asked = silent.connections
    out = capsys.readouterr().out
    assert code == 0 and "present      7 days" in out and "missing      2 days" in out
    assert asked <= 3  # not one timeout per day
    assert f"{dead}: skipped, timed out (no answer for 2 s)" in out


def test_a_demoted_host_is_asked_again_later_once(mirror, tmp_path, monkeypatch):
    # later: now (the hosts module decides when a demoted host is asked first again)
    monkeypatch.setattr(sys.modules["sicube.archive.hosts"], "HOST_RETRY_AFTER", 0.0)
    with silent_server() as silent:
        dead = f"{silent.url}/amsr2/asi_daygrid_swath/n3125/netcdf"
        report = download("20240401", "20240403", tmp_path, base_url=[dead, mirror.base_url],
                          concurrency=1, retries=2, timeout=1, **FAST)
        asked = silent.connections
    assert len(report.ok) == 3 and asked == 3  # each file asks it first again, once
    assert [r.attempts for r in report.ok] == [2, 2, 2]


def test_a_day_is_missing_only_when_no_answering_host_has_it(mirror, tmp_path):
    day = dt.date(2024, 4, 5)  # absent from the mirror's archive
    report = download(day, day, tmp_path / "a", base_url=[mirror.base_url, _closed_host()],
                      retries=1, **FAST)
    assert [r.day for r in report.missing] == [day]
    other = write_archive(tmp_path / "other", day, day, step=16, missing_days=[])
    with Mirror(other.root, faults={"*": "503"}) as failing:
        report = download(day, day, tmp_path / "b", base_url=[mirror.base_url,
                                                              failing.base_url],
                          retries=1, **FAST)
    assert len(report.failed) == 1 and "503" in report.failed[0].error
    assert failing.base_url in report.failed[0].error  # the error names the host


def test_a_plain_folder_of_downloaded_files_serves_as_a_base_url(mirror, archive, tmp_path):
    """`sicube download --out data/` served over HTTP is a base URL (issue 20, item 6)."""
    download("20240401", "20240408", tmp_path / "data", base_url=mirror.base_url, **FAST)
    with serve_directory(tmp_path / "data") as served:
        report = download("20240401", "20240408", tmp_path / "again", base_url=served.url,
                          concurrency=1, **FAST)
        probes = check("20240401", "20240408", base_url=served.url, **FAST)
    assert not report.failed and [r.day for r in report.missing] == ARCHIVE_MISSING
    for record in report.ok:
        assert record.source == f"{served.url}/2024/{record.path.name}"
        assert record.path.read_bytes() == archive.files[record.day].read_bytes()
    # a missing day's error names the URLs asked, not the base URL
    assert report.missing[0].error == (f"404 not found at {served.url}/2024/asi-AMSR2-n3125-"
                                       f"20240405-v5.4.nc, {served.url}/2024/asi-AMSR2-n3125-"
                                       f"20240405-v5.nc")
    assert [p.day for p in probes.present] == [r.day for r in report.ok]
    assert probes.present[0].url == f"{served.url}/2024/asi-AMSR2-n3125-20240401-v5.4.nc"


def test_a_build_from_a_base_url_without_files_names_the_url_asked(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with serve_directory(tmp_path / "empty") as served:
        code = cli.main(["build", "--start", "20240401", "--end", "20240402", "--store",
                         str(tmp_path / "c.zarr"), "--base-url", served.url,
                         "--raw-dir", str(tmp_path / "raw"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{served.url}/n3125/netcdf/2024/asi-AMSR2-n3125-20240401-v5.4.nc" in err
    assert f"{served.url}/2024/asi-AMSR2-n3125-20240401-v5.4.nc" in err
    assert not (tmp_path / "c.zarr").exists()


def test_check_and_download_say_when_every_day_is_missing_on_the_default_grid(tmp_path, capsys):
    south = write_archive(tmp_path / "s", 20240401, 20240403, step=16, grid="s3125",
                          missing_days=[])
    with Mirror(south.root, grid="s3125") as mirror:
        base = ["--start", "20240401", "--end", "20240403", "--base-url", mirror.tree_url, "-q"]
        assert cli.main(["check", *base]) == 0
        out = capsys.readouterr().out
        assert "every day is missing on grid n3125, the default" in out and "--grid" in out
        assert cli.main(["check", *base, "--grid", "s3125"]) == 0
        out = capsys.readouterr().out
        assert "present      3 days" in out and "every day is missing" not in out
        assert cli.main(["download", *base, "--out", str(tmp_path / "d")]) == 0
        assert "every day is missing on grid n3125, the default" in capsys.readouterr().out


def test_summaries_count_one_day_and_one_file_in_the_singular(mirror, tmp_path, capsys):
    day = "20240405"  # absent from the mirror's archive
    assert cli.main(["download", "--start", day, "--end", day, "--out", str(tmp_path / "d"),
                     "--base-url", mirror.base_url, "-q"]) == 0
    out = capsys.readouterr().out
    assert "missing      1 day   20240405" in out and "1 days" not in out
    assert cli.main(["sample", "--start", day, "--end", day, "--out", str(tmp_path / "s"),
                     "--step", "32", "--missing-days", "-q"]) == 0
    assert capsys.readouterr().out.startswith("wrote 1 daily file (")


def test_build_with_a_dead_primary_records_the_fallback_host_per_day(mirror, tmp_path):
    store = tmp_path / "c.zarr"
    summary = build("20240401", "20240404", store, base_url=[_closed_host(), mirror.base_url],
                    raw_dir=tmp_path / "raw", **SMALL)
    assert summary.exit_code == 0 and len(summary.observed) == 4
    ds = xr.open_zarr(store)
    sources = cube.record_attr(ds, cube.SOURCE_FILES)
    assert {_host(p["url"]) for p in sources.values()} == {_host(mirror.base_url)}
    assert {p["version"] for p in sources.values()} == {"v5.4"}
    assert cube.record_attr(ds, "source_base_urls")[1] == mirror.base_url


def test_the_cache_folder_is_the_first_hosts():
    primary, older = products.DEFAULT_BASE_URLS
    assert default_raw_dir([primary, older]) == default_raw_dir(primary) == default_raw_dir()
    assert default_raw_dir(older) != default_raw_dir(primary)


# --- fallback versions ----------------------------------------------------------------------


@pytest.fixture
def v5_archive(tmp_path):
    """Four days, the second only as v5 (as some s3125 days of 2018 are)."""
    archive = write_archive(tmp_path / "v5", 20240401, 20240404, step=16, missing_days=[])
    old = archive.files[dt.date(2024, 4, 2)]
    return archive, old.rename(old.with_name(old.name.replace("-v5.4.nc", "-v5.nc")))


def test_a_v54_404_falls_back_to_v5_and_records_the_version(v5_archive, tmp_path):
    archive, v5 = v5_archive
    with Mirror(archive.root) as mirror:
        report = download("20240401", "20240404", tmp_path / "raw", base_url=mirror.base_url,
                          **FAST)
        assert not report.missing and not report.failed
        by_day = {r.day: r for r in report.days}
        assert by_day[dt.date(2024, 4, 2)].version == "v5"
        assert by_day[dt.date(2024, 4, 2)].path.name == v5.name
        assert by_day[dt.date(2024, 4, 1)].version == "v5.4"

        store = tmp_path / "c.zarr"
        summary = build("20240401", "20240404", store, base_url=mirror.base_url,
                        raw_dir=tmp_path / "raw2", **SMALL)
    assert summary.exit_code == 0 and len(summary.observed) == 4
    sources = cube.record_attr(xr.open_zarr(store), cube.SOURCE_FILES)
    assert sources["20240402"]["version"] == "v5" and sources["20240402"]["name"] == v5.name
    assert sources["20240402"]["url"].endswith(f"/2024/{v5.name}")
    assert sources["20240401"]["version"] == "v5.4"


# --- check -------------------------------------------------------------------------------------


def test_check_reports_present_missing_failing_and_bytes(archive, capsys):
    faults = {"20240403": "503", "20240404": ["503"]}  # 3 keeps failing; 4 recovers
    with Mirror(archive.root, faults=faults, head_faults=True) as mirror:
        report = check("20240401", "20240408", base_url=mirror.base_url, retries=2, **FAST)
        assert [p.day for p in report.failing] == [dt.date(2024, 4, 3)]
        assert [p.day for p in report.missing] == ARCHIVE_MISSING
        present = [d for d in day_range(dt.date(2024, 4, 1), dt.date(2024, 4, 8))
                   if d not in ARCHIVE_MISSING and d != dt.date(2024, 4, 3)]
        assert [p.day for p in report.present] == present
        assert report.total_bytes == sum(archive.files[d].stat().st_size for d in present)
        assert "503" in report.failing[0].error and report.exit_code == 1
        assert {method for method, _, _ in mirror.log} == {"HEAD"}  # nothing downloaded

        code = cli.main(["check", "--start", "20240401", "--end", "20240408", "--base-url",
                         mirror.base_url, "--retries", "1", "--backoff", "0.01", "-q"])
        out = capsys.readouterr().out
        assert code == 1 and "failing" in out and "20240403" in out
        mirror.set_faults(None)
        assert cli.main(["check", "--start", "20240401", "--end", "20240408", "--base-url",
                         mirror.base_url, "-q"]) == 0
        out = capsys.readouterr().out
        assert "present      6 days" in out and "failing      0 days" in out


# --- AMSR-E and AMSR2 in one cube ---------------------------------------------------------------

AMSRE_LAST, AMSR2_FIRST = dt.date(2011, 10, 4), dt.date(2012, 7, 2)


def test_one_cube_spans_amsre_and_amsr2_with_the_sensor_per_day(tmp_path):
    first, last = dt.date(2011, 10, 1), dt.date(2012, 7, 10)
    gap = [d for d in day_range(first, last) if AMSRE_LAST < d < AMSR2_FIRST]
    archive = write_archive(tmp_path / "both", first, last, step=16, grid="n6250",
                            missing_days=gap, seed=5)  # 112 x 76 cells
    names = sorted(p.name for p in archive.files.values())
    assert names[0] == "asi-AMSR2-n6250-20120702-v5.4.nc"
    assert "asi-n6250-20111001-v5.4.nc" in names and len(names) == 4 + 9
    assert sorted(find_day_files(archive.root)) == sorted(archive.files)

    store = tmp_path / "record.zarr"
    with Mirror(archive.root, grid="n6250") as mirror:
        summary = build(first, last, store, base_url=mirror.tree_url, grid="n6250",
                        raw_dir=tmp_path / "raw", chunks={"time": 32}, **SMALL)
        asked = {path for _, path, _ in mirror.log}
    assert summary.exit_code == 0 and summary.missing == gap
    assert not any(f"{d:%Y%m%d}" in path for d in gap for path in asked)  # no request

    ds = xr.open_zarr(store)
    days = ds["time"].dt.date.values
    sensor = ds[cube.SENSOR].values
    codes = {"amsre": products.SENSORS["amsre"].code, "amsr2": products.SENSORS["amsr2"].code}
    assert np.array_equal(sensor, [codes["amsre"] if d <= AMSRE_LAST else
                                   codes["amsr2"] if d >= AMSR2_FIRST else 0 for d in days])
    assert ds[cube.SENSOR].attrs["flag_meanings"].split() == list(cube.SENSOR_MEANINGS)
    assert not ds[cube.OBSERVED].values[[d in set(gap) for d in days]].any()
    sources = cube.record_attr(ds, cube.SOURCE_FILES)
    assert "/amsre/asi_daygrid_swath/n6250/netcdf/2011/asi-n6250-20111001-v5.4.nc" in \
        sources["20111001"]["url"]
    assert sources["20120702"]["sensor"] == "amsr2" and "/amsr2/" in sources["20120702"]["url"]
    assert ds.attrs["source_grid"] == "n6250" and ds.attrs["source_sensor"] == "auto"


def test_the_mirror_serves_each_naming_only_in_its_sensors_tree(tmp_path):
    import urllib.error
    import urllib.request

    day = dt.date(2011, 10, 2)
    archive = write_archive(tmp_path, day, day, step=16, grid="n6250", missing_days=[])
    with Mirror(archive.root, grid="n6250") as mirror:
        url = products.file_url(mirror.base_url, day, "n6250")
        assert "/amsre/" in url and url.endswith("/2011/asi-n6250-20111002-v5.4.nc")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == archive.files[day].read_bytes()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url.replace("/amsre/", "/amsr2/"), timeout=10)


# --- refusals up front ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv, first", [
    (["build", "--start", "20120601", "--end", "20120705", "--store", "{tmp}/c.zarr"],
     "2012-07-02"),
    (["check", "--start", "20120601", "--end", "20120705"], "2012-07-02"),
    (["check", "--start", "20020501", "--end", "20020605", "--grid", "n6250"], "2002-06-01"),
    (["download", "--start", "20120601", "--end", "20120605", "--out", "{tmp}/out"],
     "2012-07-02"),
])
def test_days_before_the_first_day_are_refused_in_one_line(argv, first, mirror, tmp_path,
                                                            capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    grid = argv[argv.index("--grid") + 1] if "--grid" in argv else "n3125"
    argv += ["--base-url", mirror.tree_url if grid != "n3125" else mirror.base_url, "-q"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"begins {first}" in err[0]
    assert mirror.log == [] and not (tmp_path / "c.zarr").exists()


def test_a_grid_folder_of_another_grid_and_an_unknown_sensor_are_refused(mirror, tmp_path):
    with pytest.raises(BadInput, match="folder of grid n3125"):
        check("20240401", "20240402", base_url=mirror.base_url, grid="s6250")
    with pytest.raises(BadInput, match="sensor"):
        download("20240401", "20240402", tmp_path, base_url=mirror.base_url, sensor="amsr3")
    with pytest.raises(BadInput, match="AMSR-E record ends 2011-10-04"):
        check("20111001", "20111010", base_url=mirror.tree_url, grid="n6250", sensor="amsre")
