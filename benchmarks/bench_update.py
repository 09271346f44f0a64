"""Benchmark: the daily cron job's `sicube update` process against an 8-day `sicube build`.

Run:  python benchmarks/bench_update.py [--repeats 3] [--long 120] [--no-record]

Uses the full-resolution sample archive of `bench_build.py` (3584 x 2432 cells, 2024-01-01 ..
2024-04-29, written once to ``benchmarks/_work/archive``). Times whole processes, as a cron
job runs them (interpreter, imports, numba loading its cached kernels, the store, the work):

- ``python -m sicube update --store C --end 20240117`` on a copy of a 16-day cube (made once
  by a build; a fresh copy for every run, not timed);
- ``python -m sicube build`` of 2024-01-01 .. 2024-01-08 into a fresh store;
- with ``--long N``, the same update adding day N to a cube of N - 1 days (N <= 120; its
  copy takes a while: 0 skips it).

The kinds are interleaved, ``--repeats`` rounds, so all see the same machine; best of the
runs each (the machine is shared: the least disturbed run is the fairest). Prints the
ratio update / build (the target of issue 22: at most 0.5) and writes ``## Update`` in
``benchmarks/RESULTS.md`` with the command, the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_build import FIRST, LAST, WORK, ensure_archive  # noqa: E402
from common import machine, record  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
BASE_DAYS = 16  # the cube the one-day update grows (issue 22's measurement)
BUILD_DAYS = 8  # the build it is compared with


def sicube(*args: str) -> tuple[float, str]:
    """Run `python -m sicube ARGS -q` in a fresh process; its wall time and output.

    The disk is synced first: the writes of the copy of the cube an update grows (and of the
    run before) land before the clock starts, as a cron job's cube has been on disk since the
    night before; otherwise their write-back runs during, and is timed with, the next run."""
    os.sync()
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sicube", *args, "-q"], env=ENV,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"sicube {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def day(n: int) -> dt.date:
    """The archive's n-th day (1 = its first)."""
    return FIRST + dt.timedelta(days=n - 1)


def built(days: int, archive: Path) -> Path:
    """A cube of the archive's first `days` days, built once and kept as the template."""
    store = WORK / f"update-base-{days}.zarr"
    if not is_complete(store):
        print(f"building the {days}-day template cube {store} ...", flush=True)
        shutil.rmtree(store, ignore_errors=True)
        sicube("build", "--start", f"{day(1):%Y%m%d}", "--end", f"{day(days):%Y%m%d}",
               "--store", str(store), "--source", str(archive))
    return store


def is_complete(store: Path) -> bool:
    """Whether `store` is a cube whose build finished (not one killed half way)."""
    from sicube.datacube import cube

    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return False
    return cube.cube_status(attrs) == cube.COMPLETE


def stage_seconds(output: str) -> dict[str, float]:
    """The stage times a command's summary prints (``time      ingest 0.7 s, fill 1.7 s``)."""
    line = next((x for x in output.splitlines() if x.startswith("time ")), "")
    return {name: float(sec) for name, sec in re.findall(r"(\w+) ([\d.]+) s", line)}


def one_day_update(template: Path, archive: Path) -> tuple[float, str]:
    """The process wall time and output of `sicube update` adding one day to a fresh copy
    of `template`."""
    store = WORK / "update-run.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(template, store)
    days = int(template.name.split("-")[-1].split(".")[0])
    run = sicube("update", "--store", str(store), "--end", f"{day(days + 1):%Y%m%d}",
                 "--source", str(archive))
    shutil.rmtree(store, ignore_errors=True)
    return run


def build_days(archive: Path) -> tuple[float, str]:
    """The process wall time and output of `sicube build` of the archive's first
    `BUILD_DAYS` days."""
    store = WORK / "update-build.zarr"
    shutil.rmtree(store, ignore_errors=True)
    run = sicube("build", "--start", f"{day(1):%Y%m%d}", "--end", f"{day(BUILD_DAYS):%Y%m%d}",
                 "--store", str(store), "--source", str(archive))
    shutil.rmtree(store, ignore_errors=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every kind")
    parser.add_argument("--long", type=int, default=120,
                        help="also a one-day update growing a cube to this many days (0: not)")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    if args.long > (LAST - FIRST).days + 1:
        raise SystemExit(f"the archive holds {(LAST - FIRST).days + 1} days")
    archive = ensure_archive()
    templates = {f"update {BASE_DAYS} -> {BASE_DAYS + 1} days": built(BASE_DAYS, archive)}
    if args.long:
        templates[f"update {args.long - 1} -> {args.long} days"] = built(args.long - 1, archive)
    kinds = {f"build {BUILD_DAYS} days": lambda: build_days(archive)}
    for name, template in templates.items():
        kinds[name] = lambda template=template: one_day_update(template, archive)
    sicube("info", str(templates[next(iter(templates))]))  # numba's cache and the OS's warm
    runs: dict[str, list[float]] = {name: [] for name in kinds}
    stages: dict[str, dict[str, float]] = {}  # the best run's stage times
    load = os.getloadavg()[0]
    for n in range(1, args.repeats + 1):
        for name, run in kinds.items():  # interleaved: every kind sees the same machine
            seconds, output = run()
            if not runs[name] or seconds < min(runs[name]):
                stages[name] = stage_seconds(output)
            runs[name].append(seconds)
            print(f"  round {n}: {name}: {seconds:.2f} s", flush=True)
    best = {name: min(times) for name, times in runs.items()}
    build_name = next(iter(kinds))
    rows = ["| process | runs (s) | best (s) | best / build | the best run's stages (s) |",
            "|---|---|---|---|---|"]
    for name, times in runs.items():
        rest = best[name] - sum(stages[name].values())
        parts = ", ".join(f"{k} {v:.1f}" for k, v in stages[name].items() if v >= 0.05)
        rows.append(f"| `sicube {name}` | {', '.join(f'{t:.2f}' for t in times)} | "
                    f"{best[name]:.2f} | {best[name] / best[build_name]:.2f}x | "
                    f"{parts}; the rest {rest:.1f} |")
    update_name = list(kinds)[1]
    ratio = best[update_name] / best[build_name]
    verdict = "met" if ratio <= 0.5 else "**missed**"
    long_name = list(kinds)[-1] if args.long else None
    long_verdict = "" if long_name is None else (
        f" The update of the {args.long}-day cube: **{best[long_name]:.2f} s** (target: at most "
        f"3 s; {'met' if best[long_name] <= 3 else '**missed**'}).")
    text = "\n".join([
        "## Update",
        "",
        f"`python benchmarks/bench_update.py --repeats {args.repeats} --long {args.long}` "
        f"({machine()}; load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end). Whole `python -m sicube ...` processes, as a "
        "cron job runs them, on full-resolution cubes (3584 x 2432, chunks 8 x 512 x 512) of "
        "the sample archive; each update on a fresh copy of a cube built once; kinds "
        "interleaved, best of the rounds:",
        "",
        *rows,
        "",
        f"One-day update / {BUILD_DAYS}-day build: **{ratio:.2f}x** (issue 22's target: at most "
        f"0.5x; {verdict}).{long_verdict} \"The rest\" is what no stage timer covers: the "
        "interpreter, imports (~0.5 s), numba loading its cached kernels (~0.45 s on the "
        "first call, of which scipy.linalg, which numba imports to look for BLAS, ~0.2 s), "
        "opening the store, checking the source files and saving the state: a fixed cost "
        "both processes pay. The update imports no dask, xarray or pandas (its fill maps the "
        "haloed blocks on its own threads, `sicube/pipeline/haloed.py`) and no downloader for a "
        "folder source (`tests/test_imports.py`). It rewrites the new day's time chunk (the "
        "chunk's days observed before are read from the cube on a second thread while the new "
        "file decodes) and fills the new day and the `time_window` (3) days before it, not their "
        "whole chunks (`BuildState.refill`): 4 days of fill against the build's 8, but a "
        "chunk it refills in part is read back and written whole (the chunks are 8 days "
        "deep), and adding day 120 (mid-chunk, as 7 days in 8 are) reads and rewrites the 7 "
        "days before it in `sea_ice_conc_raw` as well, a band of chunk rows at a time: on "
        "this machine a process pays ~1.7 ms for each MB of memory it touches first, so "
        "putting the chunk together whole (280 MB) cost ~0.4 s more. The `sicube` process "
        "pauses Python's garbage collector while the command's modules load and then freezes "
        "them out of later collections (`sicube.__main__.run`): each full collection, and the one "
        "at exit, walked numba's objects again (~0.3 s of every process that fills). The "
        "update process also keeps the memory it frees for reuse "
        "(`sicube.settings.keep_freed_memory`, glibc's mallopt): it reads, fills and writes "
        "block by block, and faulting fresh pages in cost it ~0.3 s (6 interleaved rounds: "
        "best 2.06 s against 2.35 s, median 2.23 s against 2.64 s; +60-80 MB of peak). Where "
        "the refill reaches back into the chunk before the new day (for 3 new days in 8, as "
        "for day 17), that chunk's blocks the refill leaves as stored are not encoded and "
        "written again (32 of the 35 here). Its cost follows the chunking, not the span. What "
        "separates it from 0.5x: the fixed start (interpreter and imports ~0.45 s, numba's "
        "registry ~0.4 s), which halves in the ratio but does not go, and the chunks refilled "
        "in part: their stored `sea_ice_conc` and `fill_flag` are read back (to keep the kept "
        "days and to compare), and the new day's chunk is encoded whole, so the update's 4 "
        "days of fill still take longer than the build's 8 (the fill column). This VM's speed "
        "also drifts by a third between hours (the code of `df64a7f`: its 8-day build best "
        "4.46 s in an earlier run that day, 5.40 s at 19:00 on 2026-12-02), so compare runs "
        "of one round, not rounds of different hours.",
    ])
    print("\n" + text)
    if not args.no_record:
        print(f"recorded in {record(text, '## Update')}")


if __name__ == "__main__":
    main()
