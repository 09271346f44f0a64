"""The benchmarks' own bookkeeping: what each recorded section says of how it was made.

No benchmark runs here (they take minutes); these check the parts that decide what a record
claims: the provenance line, run_all's load limit, the build's verdicts and shortcuts, the
stream's "vs local".
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_build  # noqa: E402
import common  # noqa: E402
import run_all  # noqa: E402


def test_a_recorded_section_ends_with_its_command_machine_and_load(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "bench_x.py"), "--days", "8"])
    monkeypatch.setattr(common, "LOAD_AT_START", (0.2, 0.3, 0.4))
    common.record("## X\n\nfigures\n", "## X")
    monkeypatch.setattr(common, "LOAD_AT_START", (1.7, 1.2, 0.9))
    common.record("## Y\n\nfigures\n", "## Y")
    text = (tmp_path / "RESULTS.md").read_text()
    x, y = text.split("## Y")
    assert "Recorded by `python benchmarks/bench_x.py --days 8`" in x
    assert common.machine() in x and "load average 0.20, 0.30, 0.40" in x
    assert "above the quiet limit" not in x
    assert "load average 1.70" in y and "above the quiet limit of 1.0" in y
    common.record("## X\n\nnew figures\n", "## X")  # a re-run replaces the section whole
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count("## X") == 1 and text.count("Recorded by") == 2 and "new figures" in text


def test_run_all_refuses_to_start_a_benchmark_above_its_load_limit(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr(run_all, "LOGS", tmp_path)
    started = []
    monkeypatch.setattr(run_all.subprocess, "Popen", lambda *a, **k: started.append(a))
    assert run_all.main(["--only", "build", "--max-load", "-1", "--settle", "0"]) == 1
    assert "not quiet" in capsys.readouterr().err
    assert started == [] and not (tmp_path / "build.txt").exists()


def test_run_all_waits_for_the_load_to_settle(monkeypatch):
    loads = iter([(1.8, 1, 1), (1.3, 1, 1), (0.6, 1, 1), (0.6, 1, 1)])
    monkeypatch.setattr(run_all.os, "getloadavg", lambda: next(loads))
    monkeypatch.setattr(run_all.time, "sleep", lambda seconds: None)
    assert run_all.settled_load(1.0, 300)[0] == 0.6


def _script(name: str) -> str:
    """The source of the script run_all runs for benchmark `name`."""
    return (BENCHMARKS / f"{run_all.SCRIPTS.get(name, f'bench_{name}')}.py").read_text()


def test_the_full_runs_take_no_shortcut_and_repeat_every_method():
    for name, (full, _quick) in run_all.BENCHMARKS.items():
        source = _script(name)
        assert "--write" in full or "--no-record" in source, name  # each records its section
        assert "--no-record" not in full and "--skip-direct" not in full, name
    build, cluster = run_all.BENCHMARKS["build"][0], run_all.BENCHMARKS["cluster"][0]
    assert "--baseline-fill-days" not in build  # the original's fill timed in full
    assert "365" in build[build.index("--spans") + 1].split(",")
    assert int(cluster[cluster.index("--repeat") + 1]) >= 3


def test_run_all_regenerates_every_section_of_the_results_but_the_asv_one():
    headings = re.findall(r"^## .+$", (BENCHMARKS / "RESULTS.md").read_text(), re.M)
    written = " ".join(_script(name) for name in run_all.BENCHMARKS)
    unmade = [h for h in headings if h not in ("## How each number is made",
                                               "## Regression suite (asv)")
              and f'"{h}"' not in written and f'"{h}\\n' not in written]  # named as recorded
    assert headings and unmade == [], unmade


def _run(seconds, peak=1e9, **extra):
    return {"seconds": seconds, "peak": peak, "bytes": 7e6, **extra}


def _build_runs(year_s_per_day: float, scaled: bool, year_peak: float = 1e9):
    spans = [30, 365]
    runs = {}
    for d in spans:
        per_day = 0.3 if d == 30 else year_s_per_day
        runs["sicube", d] = [_run(per_day * d * f, peak=year_peak if d == 365 else 1e9,
                                  stages={"ingest": 0.1 * d, "fill": 0.05 * d},
                                  observed=f"{d - 2} observed, 2 missing") for f in (1, 1.1, 0.9)]
        runs["floor", d] = [_run(0.25 * d, decode=0.1 * d, write=0.1 * d) for _ in range(3)]
    stages = {"download": 1, "load": 7, "fill": 120, "fill_measured": 30 if scaled else 120,
              "write": 10}
    for kind in ("original", "tabulated"):
        runs[kind, 30] = [_run(s, stages=stages, measured_seconds=s - (90 if scaled else 0),
                               missing=["20240112", "20240123"]) for s in (140, 150, 145)]
    args = SimpleNamespace(days=30, spans=spans, workers=2, repeats=3, skip_original=False,
                           baseline_fill_days=7 if scaled else None)
    return bench_build.report(args, runs, {d: _run(10.0) for d in spans})


def test_build_report_writes_each_target_met_or_missed():
    met = _build_runs(0.3, scaled=False)
    assert "365 days: 0.30 s/day (target <= 0.4): met; 1.20x the floor (target <= 1.5x): met" \
        in met
    missed = _build_runs(0.5, scaled=False)
    assert "0.50 s/day (target <= 0.4): **missed**; 2.00x the floor (target <= 1.5x): " \
           "**missed**" in missed
    assert "median of 3 original runs" in missed and "shortcut" not in missed
    assert "flat with the span (that rise within the spread or 0.05 GB): met" in met


def test_build_report_says_whether_memory_stays_flat_with_the_span():
    assert "(that rise within the spread or 0.05 GB): **missed**" in _build_runs(
        0.3, scaled=False, year_peak=1.2e9)
    assert "target < 3 GB: **missed**" in _build_runs(0.3, scaled=False, year_peak=3.2e9)


def test_build_report_states_the_baseline_shortcut_beside_the_speed_up():
    text = _build_runs(0.3, scaled=True)
    speed_up = next(line for line in text.splitlines() if line.startswith("**Speed-up"))
    assert "shortcut: the original's fill timed on 7 of each batch's days and scaled" in speed_up
    assert "(the same shortcut)" in speed_up


def test_build_report_says_when_the_year_was_not_measured():
    args = SimpleNamespace(days=8, spans=[8], workers=2, repeats=1, skip_original=True,
                           baseline_fill_days=None)
    runs = {("sicube", 8): [_run(4.0, stages={"fill": 1.0}, observed="8 observed")],
            ("floor", 8): [_run(2.0, decode=1.0, write=0.5)]}
    text = bench_build.report(args, runs, {8: _run(4.0)})
    assert "365 days (<= 0.4 s/day, within 1.5x of the floor): not measured in this run" in text


def test_stream_compares_with_the_best_local_setting(tmp_path):
    pytest.importorskip("torch")
    import bench_stream
    import zarr

    from sicube.datacube import cube

    store = tmp_path / "cube.zarr"
    zarr.open_group(str(store), mode="w").create_array(cube.CONC, shape=(8, 4, 4),
                                                       chunks=(8, 4, 4), dtype="f4")
    best = {("local", 4): 380.0, ("local", 1): 400.0, ("http", 1): 200.0, ("http", 4): 300.0}
    args = SimpleNamespace(latency=0.05, repeat=3, step=1, days=24)
    text = bench_stream.results(args, best, 100, 4, store)
    assert "| HTTP, 50 ms per request | 4 (default) | 300 | 0.75x |" in text
    assert "| local disk | 4 (default) | 380 | 0.95x |" in text
    assert "HTTP 0.75x, met" in text
