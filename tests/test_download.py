"""The downloader against the real loopback mirror: faults, retries, validation, atomicity."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sicube import cli
from sicube.archive import products
from sicube.archive.download import (
    DayRecord,
    default_raw_dir,
    download,
    iter_downloads,
    latest_available,
)
from sicube.archive.mirror import Mirror
from sicube.archive.sources import check_day_file
from sicube.archive.synthetic import write_archive
from sicube.errors import BadInput, BadSourceFile, SourceUnavailable
from sicube.testing import serve_directory
from tests.conftest import ARCHIVE_END, ARCHIVE_MISSING, ARCHIVE_START, ARCHIVE_STEP

FAST = {"backoff": 0.01, "backoff_max": 0.05, "progress": False}  # retries without waiting
REPO = Path(__file__).parents[1]


def _final_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.nc") if not p.name.startswith("."))


def _part_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.part"))


def _gets(mirror: Mirror, day: dt.date) -> int:
    return sum(1 for method, path, _ in mirror.log
               if method == "GET" and path == products.relative_path(day))


def test_every_fault_kind_ends_byte_identical_missing_or_failed(mirror, archive, tmp_path):
    plan = {
        "20240402": ["503", "drop", "500"],
        "20240403": ["truncate", "html"],
        "20240404": ["slow:2.0", "slow:2.0"],  # longer than the timeout: two timeouts
        "20240407": "500",  # every attempt fails
        "20240408": ["trickle:0.3"],  # slow but healthy
        "20240409": ["html", "truncate", "drop", "503"],
    }
    mirror.set_faults(plan)
    out = tmp_path / "data"
    report = download("20240401", "20240412", out, base_url=mirror.base_url, retries=4,
                      timeout=0.5, **FAST)

    by_day = {r.day: r for r in report.days}
    assert len(by_day) == 12
    failed = dt.date(2024, 4, 7)
    assert [r.day for r in report.missing] == [dt.date(2024, 4, 5), dt.date(2024, 4, 6)]
    assert [r.day for r in report.failed] == [failed]
    assert by_day[failed].attempts == 5 and _gets(mirror, failed) == 5
    assert "500" in by_day[failed].error
    assert not (out / products.relative_path(failed)).exists()
    ok_days = set(archive.files) - {failed}
    assert {r.day for r in report.ok} == ok_days
    for day in ok_days:
        record = by_day[day]
        assert record.path == out / products.relative_path(day)
        assert record.path.read_bytes() == archive.files[day].read_bytes()
        assert record.bytes == archive.files[day].stat().st_size
    # every planned fault was really served, and each cost the downloader an attempt
    served = [fault for _, path, fault in mirror.log]
    for kind in ("503", "500", "drop", "truncate", "html", "slow:2.0", "trickle:0.3"):
        assert kind in served
    assert by_day[dt.date(2024, 4, 3)].attempts == 3
    assert by_day[dt.date(2024, 4, 4)].attempts == 3
    assert by_day[dt.date(2024, 4, 1)].attempts == 1
    assert by_day[dt.date(2024, 4, 9)].attempts >= 4  # aiohttp may absorb one dropped reuse
    assert _part_files(tmp_path) == []
    assert _final_files(out) == sorted(by_day[d].path for d in ok_days)

    manifest = json.loads(report.manifest_path.read_text())
    assert manifest["base_url"] == mirror.base_url
    entries = manifest["days"]
    assert entries["2024-04-05"]["status"] == "missing"
    assert entries["2024-04-07"]["status"] == "failed"
    assert entries["2024-04-07"]["attempts"] == 5
    import hashlib

    for day in ok_days:
        entry = entries[day.isoformat()]
        assert entry["status"] == "ok"
        assert entry["url"] == products.file_url(mirror.base_url, day)
        assert entry["sha256"] == hashlib.sha256(archive.files[day].read_bytes()).hexdigest()
    assert "20240407" in report.summary()


def test_cli_exits_1_naming_the_failed_day_and_0_when_only_missing(mirror, tmp_path, capsys):
    mirror.set_faults({"20240404": "503"})
    args = ["download", "--start", "20240403", "--end", "20240406", "--out", str(tmp_path),
            "--base-url", mirror.base_url, "--retries", "2", "--backoff", "0.01", "-q"]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert "asi-AMSR2-n3125-20240404-v5.4.nc" in captured.err
    assert "failed" in captured.out and "missing" in captured.out
    mirror.set_faults(None)
    assert cli.main(args) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_client_error_is_not_retried_but_a_refused_connection_is(mirror, tmp_path):
    mirror.set_faults({"20240402": "403"})
    report = download("20240402", "20240402", tmp_path, base_url=mirror.base_url, **FAST)
    assert report.failed[0].attempts == 1 and "403" in report.failed[0].error

    closed = Mirror(tmp_path)  # bound, then released: nothing listens on its port any more
    closed.start()
    closed.stop()
    report = download("20240402", "20240402", tmp_path, base_url=closed.base_url, retries=2,
                      **FAST)
    assert report.failed[0].attempts == 3 and "Connect" in report.failed[0].error
    assert _part_files(tmp_path) == []


def test_rerun_skips_valid_files_refetches_damaged_ones_and_force(mirror, archive, tmp_path):
    options = {"base_url": mirror.base_url, **FAST}
    first = download("20240401", "20240404", tmp_path, **options)
    assert len(first.ok) == 4 and not any(r.skipped for r in first.ok)
    gets_before = len(mirror.log)

    again = download("20240401", "20240404", tmp_path, **options)
    assert all(r.skipped for r in again.ok) and len(again.ok) == 4
    assert len(mirror.log) == gets_before  # nothing was requested
    assert [r.sha256 for r in again.days] == [r.sha256 for r in first.days]

    truncated = tmp_path / products.relative_path(dt.date(2024, 4, 2))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    html = tmp_path / products.relative_path(dt.date(2024, 4, 3))
    html.write_text("<html><body>Service unavailable</body></html>")
    leftover = truncated.with_name(f".{truncated.name}.part")
    leftover.write_bytes(b"half a file from a killed run")
    repaired = download("20240401", "20240404", tmp_path, **options)
    by_day = {r.day: r for r in repaired.days}
    assert [d for d, r in by_day.items() if not r.skipped] == [dt.date(2024, 4, 2),
                                                               dt.date(2024, 4, 3)]
    for path in (truncated, html):
        day = products.parse_file_name(path.name)[1]
        assert path.read_bytes() == archive.files[day].read_bytes()
    assert _part_files(tmp_path) == []

    gets_before = len(mirror.log)
    forced = download("20240401", "20240404", tmp_path, force=True, **options)
    assert not any(r.skipped for r in forced.ok)
    assert len(mirror.log) == gets_before + 4


def test_a_file_on_another_grid_fails_naming_the_file(tmp_path):
    root = tmp_path / "server"
    write_archive(root, "20240401", "20240402", step=16, missing_days=[])
    odd = write_archive(root, "20240403", "20240403", step=32, missing_days=[])
    with Mirror(root) as server:
        # concurrency 1: days finish in date order, so 1 April defines the grid
        report = download("20240401", "20240403", tmp_path / "out", base_url=server.base_url,
                          concurrency=1, **FAST)
        assert [r.day for r in report.failed] == [dt.date(2024, 4, 3)]
        error = report.failed[0].error
        assert "asi-AMSR2-n3125-20240403-v5.4.nc" in error and "does not match" in error
        assert report.failed[0].attempts == 1  # a retry cannot cure a different grid
        assert report.grid.shape == (224, 152)

        expected = check_day_file(odd.files[dt.date(2024, 4, 3)])
        given = download("20240401", "20240403", tmp_path / "out2", base_url=server.base_url,
                         expected_grid=expected, **FAST)
        assert [r.day for r in given.ok] == [dt.date(2024, 4, 3)]
        assert len(given.failed) == 2
    assert not (tmp_path / "out" / products.relative_path(dt.date(2024, 4, 3))).exists()


def test_iter_downloads_yields_in_completion_order_while_fetching_continues(mirror, tmp_path):
    mirror.set_faults({"20240401": ["trickle:1.0"]})
    seen = []
    days = [dt.date(2024, 4, d) for d in range(1, 5)]
    for record in iter_downloads(days, tmp_path, base_url=mirror.base_url, backoff=0.01):
        assert isinstance(record, DayRecord)
        assert record.path.exists()  # the file is in place when its record arrives
        seen.append(record.day)
    assert sorted(seen) == [dt.date(2024, 4, d) for d in range(1, 5)]
    assert seen[-1] == dt.date(2024, 4, 1)  # the slow day came last, not first


def test_a_file_validating_does_not_hold_up_the_next_transfer(mirror, tmp_path, monkeypatch):
    # One transfer at a time: the first file's validation waits (bounded) for the second
    # file's request. It only comes when a validating day gives back its transfer slot.
    seen_while_validating = []
    calls = itertools.count()

    def waiting_check(path, expected=None, full=True):
        if next(calls) == 0:  # the first file
            deadline = time.monotonic() + 10
            while len([m for m, *_ in mirror.log if m == "GET"]) < 2 and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            seen_while_validating.append(len([m for m, *_ in mirror.log if m == "GET"]))
        return check_day_file(path, expected, full=full)

    monkeypatch.setattr(sys.modules["sicube.archive.fetch"], "check_day_file", waiting_check)
    report = download("20240401", "20240403", tmp_path, base_url=mirror.base_url,
                      concurrency=1, **FAST)
    assert len(report.ok) == 3
    assert seen_while_validating[0] >= 2  # the next GET came while the first validated
    assert mirror.requests.most_common(1)[0][1] == 1  # ... and still one request per file


def test_on_day_is_called_in_the_callers_thread_for_every_day(mirror, tmp_path):
    calls = []
    report = download("20240401", "20240406", tmp_path, base_url=mirror.base_url,
                      on_day=lambda r: calls.append((r.day, threading.get_ident())), **FAST)
    assert sorted(day for day, _ in calls) == [r.day for r in report.days]
    assert {ident for _, ident in calls} == {threading.get_ident()}


def test_closing_iter_downloads_early_cancels_and_leaves_no_part_files(mirror, archive,
                                                                       tmp_path):
    # every file but the first trickles (a string: each request; a list would be one
    # request of all files, and the others would finish while the first validates)
    mirror.set_faults({"*": "trickle:2.0", "20240401": ["ok"]})
    records = iter_downloads(archive.days, tmp_path, base_url=mirror.base_url, concurrency=2)
    first = next(records)
    assert first.day == dt.date(2024, 4, 1)
    records.close()
    # Transfers in flight were cancelled, not waited out: none of them reached a final name.
    assert _part_files(tmp_path) == []
    assert _final_files(tmp_path) == [first.path]


def test_iter_downloads_takes_any_days_and_refuses_bad_ones_before_fetching(mirror, tmp_path):
    wanted = ["20240409", dt.date(2024, 4, 2), "2024-04-09"]
    records = list(iter_downloads(wanted, tmp_path, base_url=mirror.base_url))
    assert sorted(r.day for r in records) == [dt.date(2024, 4, 2), dt.date(2024, 4, 9)]
    assert _final_files(tmp_path) == sorted(r.path for r in records)
    with pytest.raises(BadInput, match="2012-07-01"):
        iter_downloads([dt.date(2012, 7, 1)], tmp_path)
    with pytest.raises(BadInput, match="cannot read"):
        iter_downloads(["20240431"], tmp_path, base_url=mirror.base_url)
    assert len(mirror.log) == 2


def test_manifest_keeps_days_of_earlier_runs(mirror, tmp_path):
    download("20240401", "20240402", tmp_path, base_url=mirror.base_url, **FAST)
    report = download("20240405", "20240406", tmp_path, base_url=mirror.base_url, **FAST)
    days = json.loads(report.manifest_path.read_text())["days"]
    assert list(days) == ["2024-04-01", "2024-04-02", "2024-04-05", "2024-04-06"]
    assert days["2024-04-01"]["status"] == "ok" and days["2024-04-06"]["status"] == "missing"


def test_days_before_the_sensors_first_day_are_refused_on_any_server(mirror, tmp_path):
    # The record begins there whoever serves it: one line naming the first day.
    with pytest.raises(BadInput, match="begins 2012-07-02"):
        download("20120630", "20120701", tmp_path, base_url=mirror.base_url, **FAST)
    # On n6250 those days lie between AMSR-E and AMSR2: missing, and not even asked for.
    mirror.log.clear()
    report = download("20120630", "20120701", tmp_path, grid="n6250",
                      base_url=mirror.tree_url, **FAST)
    assert len(report.missing) == 2 and not report.failed and mirror.log == []


def test_sigkill_mid_transfer_never_leaves_an_invalid_final_file(mirror, archive, tmp_path):
    out = tmp_path / "data"
    # every transfer takes about a second: the kill lands while files are half written
    mirror.set_faults({"*": "trickle:1.0"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "sicube", "download", "--start", "20240401", "--end",
               "20240412", "--out", str(out), "--base-url", mirror.base_url,
               "--concurrency", "2", "-q"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checked: set[Path] = set()

    def check_final_files() -> None:
        for path in _final_files(out):
            if path not in checked:  # a final name is written once, by rename: check it once
                check_day_file(path)
                day = products.parse_file_name(path.name)[1]
                assert path.read_bytes() == archive.files[day].read_bytes()
                checked.add(path)

    try:
        deadline = time.monotonic() + 60
        while not (checked and _part_files(out)):
            assert process.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline
            check_final_files()
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    parts = _part_files(out)
    assert parts, "the kill should have interrupted a transfer"
    for part in parts:  # the half-written file never reached its final name ...
        final = part.with_name(part.name[1:-len(".part")])
        if final.exists():
            check_day_file(final)
        with pytest.raises(BadSourceFile):
            check_day_file(part)  # ... and really was incomplete
    check_final_files()
    assert len(checked) < len(archive.files)

    mirror.set_faults(None)
    report = download("20240401", "20240412", out, base_url=mirror.base_url, **FAST)
    assert not report.failed and len(report.ok) == len(archive.files)
    assert sum(r.skipped for r in report.ok) == len(checked)
    for day, source in archive.files.items():
        assert (out / products.relative_path(day)).read_bytes() == source.read_bytes()
    assert _part_files(out) == []


# --- the record of what was downloaded: reuse only what it vouches for ---------------------------


@pytest.fixture
def full_checks(monkeypatch) -> list[Path]:
    """Every file the downloader decodes in full (the real check, counted on the way)."""
    calls: list[Path] = []

    def counting(path, expected=None, full=True):
        if full:
            calls.append(Path(path))
        return check_day_file(path, expected, full=full)

    # the fetcher validates each file (`sicube.archive.fetch`)
    monkeypatch.setattr(sys.modules["sicube.archive.fetch"], "check_day_file", counting)
    return calls


@pytest.fixture
def other_archive(tmp_path_factory):
    """The archive's days and file names with other data (another seed): a second server."""
    return write_archive(tmp_path_factory.mktemp("other"), ARCHIVE_START, ARCHIVE_END,
                         step=ARCHIVE_STEP, missing_days=ARCHIVE_MISSING, seed=11)


def test_default_raw_dir_is_one_folder_per_server(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    base = "https://data.seaice.uni-bremen.de/amsr2/asi_daygrid_swath/n3125/netcdf"
    folder = default_raw_dir(base)
    assert folder.is_relative_to(tmp_path / "sicube" / "raw")
    assert "data.seaice.uni-bremen.de" in folder.parts and "n3125" in folder.name
    assert default_raw_dir(base + "/") == folder
    others = [
        base.replace("n3125", "s3125"),
        "https://seaice.uni-bremen.de/data/amsr2/asi_daygrid_swath/n3125/netcdf",
        base.replace("uni-bremen.de", "uni-bremen.de:8443"),
        base.replace("https:", "http:"),
        "http://127.0.0.1:8000/a-b/c",
        "http://127.0.0.1:8000/a/b-c",  # reads like the one above once "/" becomes "-"
        "http://127.0.0.1:8001/a/b-c",
    ]
    folders = [default_raw_dir(url) for url in others]
    assert len(set(folders) | {folder}) == len(others) + 1
    with pytest.raises(BadInput, match="http"):
        default_raw_dir("ftp://example.org/x")


def test_two_servers_with_the_same_file_names_never_share_cached_files(
        mirror, archive, other_archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    days = [dt.date(2024, 4, 1), dt.date(2024, 4, 2)]
    assert all(archive.files[d].read_bytes() != other_archive.files[d].read_bytes()
               for d in days)
    with Mirror(other_archive.root) as other:
        for server, served in ((mirror, archive), (other, other_archive)):
            raw = default_raw_dir(server.base_url)
            for record in iter_downloads(days, raw, base_url=server.base_url):
                assert record.path.is_relative_to(tmp_path / "cache")
                assert record.path.read_bytes() == served.files[record.day].read_bytes()
                assert record.source == products.file_url(server.base_url, record.day)
        assert len([m for m, _, _ in other.log if m == "GET"]) == len(days)


def test_a_shared_folder_keeps_a_file_from_another_server_only_after_a_full_check(
        mirror, archive, other_archive, tmp_path, full_checks):
    days = [dt.date(2024, 4, 1), dt.date(2024, 4, 2)]
    download(days[0], days[-1], tmp_path, base_url=mirror.base_url, **FAST)
    full_checks.clear()
    with Mirror(other_archive.root) as other:
        report = download(days[0], days[-1], tmp_path, base_url=other.base_url, **FAST)
        assert other.log == []  # valid files were present: nothing fetched ...
    assert sorted(full_checks) == sorted(r.path for r in report.ok)  # ... but decoded in full
    for record in report.ok:  # and recorded as coming from where they really came from
        assert record.skipped and record.source == products.file_url(mirror.base_url,
                                                                     record.day)
    entries = json.loads(report.manifest_path.read_text())["days"]
    assert entries["2024-04-01"]["source"] == products.file_url(mirror.base_url, days[0])


def test_a_rerun_reuses_recorded_files_without_decoding_them(mirror, archive, tmp_path,
                                                             full_checks):
    days = archive.days
    first = list(iter_downloads(days, tmp_path, base_url=mirror.base_url))
    fetched = sorted(r.path for r in first if r.status == "ok")
    assert len(full_checks) == len(fetched)  # each new file is decoded in full (as .part)
    entries = json.loads((tmp_path / "manifest.json").read_text())["days"]
    assert len(entries) == len(days)  # iter_downloads keeps the record too
    assert {e["source"] for e in entries.values() if e["status"] == "ok"} == {
        products.file_url(mirror.base_url, d) for d in archive.files}

    full_checks.clear()
    gets = len(mirror.log)
    again = list(iter_downloads(days, tmp_path, base_url=mirror.base_url))
    ok = [r for r in again if r.status == "ok"]
    assert len(ok) == len(archive.files) and all(r.skipped for r in ok)
    assert full_checks == []  # reused on the record's word (size and sha256), not decoded
    # only the missing days re-asked, in each version (v5.4, then the fallback v5)
    assert len(mirror.log) == gets + len(archive.missing) * len(products.VERSIONS)
    assert {r.day: r.sha256 for r in ok} == {r.day: r.sha256 for r in first
                                              if r.status == "ok"}

    # Without the record nothing vouches for the files: each is decoded in full again.
    (tmp_path / "manifest.json").unlink()
    third = list(iter_downloads(days, tmp_path, base_url=mirror.base_url))
    assert sorted(full_checks) == fetched
    assert all(r.skipped and r.source is None for r in third if r.status == "ok")


def test_a_rerun_from_a_plain_folder_of_files_reuses_them_without_decoding(
        mirror, archive, tmp_path, full_checks):
    """A base URL serving `download --out`'s folder: the record vouches for its files although
    the next run does not know the folder's layout before it asks."""
    download(ARCHIVE_START, ARCHIVE_END, tmp_path / "data", base_url=mirror.base_url,
             progress=False)
    with serve_directory(tmp_path / "data") as served:
        copied = download(ARCHIVE_START, ARCHIVE_END, tmp_path / "copy", base_url=served.url,
                          progress=False)
        # files in flight when another found the layout are found too (8 at once here)
        assert [r.day for r in copied.missing] == ARCHIVE_MISSING
        full_checks.clear()
        again = download(ARCHIVE_START, ARCHIVE_END, tmp_path / "copy", base_url=served.url,
                         progress=False)
    assert len(again.ok) == len(archive.files) and all(r.skipped for r in again.ok)
    assert full_checks == []


def test_a_cached_file_altered_after_download_is_fetched_again(tmp_path, full_checks):
    import numpy as np

    from sicube.archive.synthetic import write_day_file

    # Stored uncompressed, so that one value can change in place and the file stays valid.
    day = dt.date(2024, 4, 3)
    grid = products.GRIDS["n3125"]
    served = write_day_file(tmp_path / "server" / products.relative_path(day),
                            np.full((grid.ny // 16, grid.nx // 16), 42.0, np.float32), day,
                            step=16, storage={"zlib": False})
    with Mirror(tmp_path / "server") as server:
        out = tmp_path / "out"
        download(day, day, out, base_url=server.base_url, **FAST)
        path = out / products.relative_path(day)
        data = path.read_bytes()
        at = data.index(np.float32(42.0).tobytes() * 8)
        path.write_bytes(data[:at] + np.float32(43.0).tobytes() + data[at + 4:])
        assert path.stat().st_size == served.stat().st_size  # same size, other bytes ...
        check_day_file(path)  # ... and still a valid file: only the record can tell

        gets = len(server.log)
        report = download(day, day, out, base_url=server.base_url, **FAST)
        assert not report.ok[0].skipped
        assert len(server.log) == gets + 1
    assert path.read_bytes() == served.read_bytes()


# --- latest_available -------------------------------------------------------------------------


def test_latest_available_finds_the_last_day_the_server_has(mirror, archive):
    assert latest_available(mirror.base_url, before=dt.date(2024, 4, 30)) == ARCHIVE_END
    assert latest_available(mirror.base_url, before="20240412") == ARCHIVE_END
    # 5 and 6 April are missing: the last day on or before the 6th is the 4th
    assert latest_available(mirror.base_url, before=dt.date(2024, 4, 6),
                            concurrency=1) == dt.date(2024, 4, 4)
    assert latest_available(mirror.base_url, before=dt.date(2024, 4, 20), limit=9) == ARCHIVE_END
    assert latest_available(mirror.base_url, before=dt.date(2024, 4, 20), limit=8) is None
    assert {method for method, _, _ in mirror.log} == {"HEAD"}  # nothing downloaded
    with pytest.raises(BadInput, match="limit"):
        latest_available(mirror.base_url, before=ARCHIVE_END, limit=0)


def test_latest_available_refuses_to_guess_when_the_server_is_down(tmp_path):
    closed = Mirror(tmp_path)  # bound, then released: nothing listens on its port any more
    closed.start()
    closed.stop()
    with pytest.raises(SourceUnavailable, match=r"127\.0\.0\.1.*Connect"):
        latest_available(closed.base_url, before=ARCHIVE_END, retries=1, backoff=0.01)


def test_latest_available_refuses_to_guess_when_the_server_keeps_failing():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Failing(BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 -- the name http.server dispatches to
            asked.append(self.path)
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/amsr2/asi_daygrid_swath/n3125/netcdf"
        with pytest.raises(SourceUnavailable, match="500"):
            latest_available(base, before=ARCHIVE_END, retries=2, backoff=0.01)
    finally:
        server.shutdown()
        server.server_close()
    newest = "/" + products.relative_path(ARCHIVE_END)
    assert asked.count(base.split(str(server.server_port))[1] + newest) == 3  # every retry


# --- bad input: one line on stderr, exit code 2, no traceback ----------------------------------


def _bad_input_cases(tmp_path: Path) -> dict[str, list[str]]:
    a_file = tmp_path / "a_file"
    if tmp_path.is_dir():
        a_file.write_text("not a folder")
    good = {"--start": "20240401", "--end": "20240402", "--out": str(tmp_path / "out"),
            "--base-url": "http://127.0.0.1:9/amsr2/asi_daygrid_swath/n3125/netcdf"}
    cases = {
        "unparsable start": {"--start": "2024-13-01"},
        "unparsable end": {"--end": "yesterday"},
        "end before start": {"--start": "20240410", "--end": "20240401"},
        "before data start on the default server": {"--start": "20120601", "--end": "20120705",
                                                     "--base-url": products.DEFAULT_BASE_URL},
        "output folder under a file": {"--out": str(a_file / "sub")},
        "output folder is a file": {"--out": str(a_file)},
        "base URL without scheme": {"--base-url": "data.seaice.uni-bremen.de/amsr2"},
        "base URL with another scheme": {"--base-url": "ftp://data.seaice.uni-bremen.de/x"},
        "base URL without host": {"--base-url": "http://"},
        "base URL with a bad port": {"--base-url": "http://127.0.0.1:99999999/x"},
        "zero concurrency": {"--concurrency": "0"},
        "negative retries": {"--retries": "-1"},
        "concurrency not a number": {"--concurrency": "many"},
    }
    return {name: [x for k, v in {**good, **change}.items() for x in (k, v)]
            for name, change in cases.items()}


BAD_INPUT_NAMES = list(_bad_input_cases(Path("/nonexistent")))


def _exit_code(argv: list[str]) -> int:
    """Run the CLI in-process; argparse's own errors exit via SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
def test_bad_input_is_one_line_and_exit_2(name, tmp_path, capsys):
    code = _exit_code(["download", "-q", *_bad_input_cases(tmp_path)[name]])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "sicube", "download", "--start", "20240405", "--end", "20240401",
         "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sicube download: error: end 2024-04-01 is before start 2024-04-05"]
