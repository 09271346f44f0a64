"""The loopback mirror: real URL layout, HEAD and Range, 404s, and every fault kind."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sicube.archive import products
from sicube.archive.mirror import Mirror
from sicube.errors import BadInput

DAY = dt.date(2024, 4, 2)


def _get(url: str, headers: dict | None = None, method: str = "GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_serves_every_file_byte_identical_under_the_real_layout(mirror, archive):
    assert mirror.base_url.startswith("http://127.0.0.1:")
    assert mirror.base_url.endswith("/amsr2/asi_daygrid_swath/n3125/netcdf")
    assert products.grid_from_url(mirror.base_url) == "n3125"
    for day, path in archive.files.items():
        status, headers, body = _get(products.file_url(mirror.base_url, day))
        assert status == 200
        assert body == path.read_bytes()
        assert int(headers["Content-Length"]) == path.stat().st_size
    assert mirror.requests[products.relative_path(DAY)] == 1


def test_answers_head_and_range_requests(mirror, archive):
    url = products.file_url(mirror.base_url, DAY)
    data = archive.files[DAY].read_bytes()
    status, headers, body = _get(url, method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) == len(data)
    status, headers, body = _get(url, headers={"Range": "bytes=100-199"})
    assert status == 206
    assert body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"


@pytest.mark.parametrize("path", [
    "2024/asi-AMSR2-n3125-20240405-v5.4.nc",  # a missing day
    "2023/asi-AMSR2-n3125-20240402-v5.4.nc",  # the file in the wrong year folder
    "2024/notes.txt",
    "2024/..%2Fasi-AMSR2-n3125-20240402-v5.4.nc",
])
def test_absent_files_are_404(mirror, path):
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(f"{mirror.base_url}/{path}")
    assert err.value.code == 404


def test_each_fault_kind_in_sequence_then_normal_service(mirror, archive):
    data = archive.files[DAY].read_bytes()
    mirror.set_faults({f"{DAY:%Y%m%d}": ["503", "500", "drop", "truncate", "html",
                                          "slow:0.4", "trickle:0.4"]})
    url = products.file_url(mirror.base_url, DAY)
    for code in (503, 500):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(url)
        assert err.value.code == code
    with pytest.raises(http.client.RemoteDisconnected):
        _get(url)
    with pytest.raises(http.client.IncompleteRead) as err:
        _get(url)
    assert len(err.value.partial) == len(data) // 2
    assert err.value.expected == len(data) - len(data) // 2  # the full Content-Length was sent
    status, headers, body = _get(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body.lstrip().startswith(b"<!DOCTYPE html>")
    for _ in ("slow", "trickle"):
        began = time.perf_counter()
        status, _, body = _get(url)
        assert time.perf_counter() - began >= 0.35
        assert (status, body) == (200, data)
    assert _get(url)[2] == data  # the plan is used up: normal service (logged "ok" below)
    faults = [fault for method, path, fault in mirror.log if path.endswith(f"{DAY:%Y%m%d}-v5.4.nc")]
    assert faults == ["503", "500", "drop", "truncate", "html", "slow:0.4", "trickle:0.4", "ok"]


def test_always_form_star_key_and_most_specific_key(mirror, archive):
    other = dt.date(2024, 4, 3)
    mirror.set_faults({"*": "503", products.file_name(DAY): ["500"]})
    for _ in range(3):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(products.file_url(mirror.base_url, other))
        assert err.value.code == 503
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(products.file_url(mirror.base_url, DAY))
    assert err.value.code == 500
    assert _get(products.file_url(mirror.base_url, DAY))[2] == archive.files[DAY].read_bytes()


def test_head_requests_do_not_consume_faults(mirror):
    mirror.set_faults({f"{DAY:%Y%m%d}": ["503"]})
    url = products.file_url(mirror.base_url, DAY)
    assert _get(url, method="HEAD")[0] == 200
    with pytest.raises(urllib.error.HTTPError):
        _get(url)


def test_latency_delays_every_answer(archive):
    with Mirror(archive.root, latency=0.25) as slow:
        began = time.perf_counter()
        _get(products.file_url(slow.base_url, DAY), method="HEAD")
        with pytest.raises(urllib.error.HTTPError):
            _get(products.file_url(slow.base_url, dt.date(2024, 4, 5)))
        assert time.perf_counter() - began >= 0.5


def test_fault_plan_from_json_file(archive, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({f"{DAY:%Y%m%d}": ["html"]}))
    with Mirror(archive.root, faults=plan) as faulty:
        assert _get(products.file_url(faulty.base_url, DAY))[1]["Content-Type"].startswith(
            "text/html")


@pytest.mark.parametrize("plan", [
    {"20240402": ["teapot"]}, {"20240402": "slow:soon"}, {"20240402": ["200"]},
    {"20240402": 503}, ["503"],
])
def test_bad_fault_plans_are_refused(archive, plan):
    with pytest.raises(BadInput):
        Mirror(archive.root, faults=plan)


def test_unreadable_plan_file_and_missing_root_are_refused(archive, tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    with pytest.raises(BadInput, match="plan.json"):
        Mirror(archive.root, faults=bad)
    with pytest.raises(BadInput, match="not a folder"):
        Mirror(tmp_path / "nowhere")


def test_mirror_command_serves_until_stopped(archive):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    server = subprocess.Popen(
        [sys.executable, "-m", "sicube", "mirror", "--root", str(archive.root), "--port", "0"],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        base_url = server.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert _get(products.file_url(base_url, DAY))[2] == archive.files[DAY].read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_mirror_help_shows_the_fault_plan_format(capsys):
    from sicube.cli import main

    with pytest.raises(SystemExit):
        main(["mirror", "--help"])
    out = capsys.readouterr().out
    for fault in ("ok", "drop", "truncate", "html", "slow:S", "trickle:S"):
        assert f"`{fault}`" in out
    assert '{"20240402": ["503", "drop", "ok"]' in out  # the example, lines kept as written
