"""Benchmark: what the code since a base commit costs a full-resolution build, side by side.

Run:  python benchmarks/bench_overhead.py [--base REF] [--days 30] [--repeats 3] [--no-record]

Checks out ``--base`` (default: the last commit before the per-day statistics, extent and
area) into ``benchmarks/_work/base-<sha>`` and builds the first ``--days`` days of the
full-resolution sample archive (``benchmarks/_work/archive``, written by bench_build when
absent) from the folder with each version in turn: a fresh process and a fresh store per run,
versions interleaved (which goes first alternates), ``--repeats`` runs each, median kept, and
the median of each round's ratio beside it (the two runs of a round see the same machine
state); the page cache is flushed (``sync``) before each run, so that one run's writes do not
slow the next. Both versions'
numba caches are warmed by a 2-day build first. Wall time is the whole process. The
difference is everything that changed between the two commits in a build: for the default
base, the per-day statistics, the day-quality judgement, ``cell_area``, ``sea_ice_extent``
and ``sea_ice_area``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_build import FIRST, WORK, ensure_archive  # noqa: E402
from common import command_line, machine, record  # noqa: E402

HEADING = "## Build overhead of the quality statistics, extent and area"
DEFAULT_BASE = "fccff76"  # main before the suspicious-day statistics and extent/area landed


def checkout(ref: str) -> Path:
    """A worktree of ``ref`` under benchmarks/_work (made once, reused)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True,
                         capture_output=True, text=True).stdout.strip()
    path = WORK / f"base-{sha}"
    if not path.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), sha],
                       check=True, capture_output=True)
    return path


def timed_build(code: Path, archive: Path, days: int, store: Path) -> tuple[float, str]:
    """Seconds for one `python -m sicube build` of `days` days with the package at `code`,
    and the stage times its summary prints."""
    end = FIRST + dt.timedelta(days=days - 1)
    command = [sys.executable, "-m", "sicube", "build", "--source", str(archive),
               "--start", FIRST.isoformat(), "--end", end.isoformat(), "--store", str(store),
               "-q"]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, cwd=code, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(code)})
    seconds = time.perf_counter() - start
    stages = next((line.split(None, 1)[1] for line in done.stdout.splitlines()
                   if line.startswith("time ")), "")
    return seconds, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="commit to compare against")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    archive = ensure_archive()
    versions = {"base": checkout(args.base), "now": REPO}
    runs: dict[str, list[float]] = {name: [] for name in versions}
    with tempfile.TemporaryDirectory(prefix="sicube-bench-overhead-") as tmp:
        for name, code in versions.items():  # warm numba's caches of both versions
            timed_build(code, archive, 2, Path(tmp) / f"warm-{name}.zarr")
        for i in range(args.repeats):
            # the order alternates, so that whatever the first run leaves (dirty pages, a
            # warm cache) falls on each version alike
            for name, code in (list(versions.items()) if i % 2 == 0
                               else list(versions.items())[::-1]):
                store = Path(tmp) / f"{name}{i}.zarr"
                os.sync()  # the last run's ~240 MB of dirty pages are not written during this one
                seconds, stages = timed_build(code, archive, args.days, store)
                shutil.rmtree(store)
                runs[name].append(seconds)
                print(f"{name:5s} run {i + 1}: {seconds:6.1f} s   {stages}", flush=True)
    base, now = (statistics.median(runs[name]) for name in ("base", "now"))
    paired = statistics.median(n / b - 1 for b, n in zip(runs["base"], runs["now"], strict=True))
    print(f"median: base {base:.1f} s, now {now:.1f} s: {now / base - 1:+.1%}; "
          f"median of the rounds' ratios {paired:+.1%}")
    if args.no_record:
        return
    section = (
        f"{HEADING}\n\n"
        f"`{command_line()}` ({time.strftime('%Y-%m-%d')}): {args.days} full-resolution days "
        "built from the sample archive's folder (`--source`), each run a fresh process and "
        "store (the page cache flushed before it), versions interleaved (which goes first "
        f"alternates), {args.repeats} runs each, median kept.\n\n"
        "| version | runs (s) | median (s) |\n|---|---|---:|\n"
        f"| base `{args.base}` (before the per-day statistics, day quality, cell_area, "
        f"extent and area) | {', '.join(f'{s:.1f}' for s in runs['base'])} | {base:.1f} |\n"
        f"| now | {', '.join(f'{s:.1f}' for s in runs['now'])} | {now:.1f} |\n\n"
        f"The statistics, judgement, cell area, extent and area add **{now / base - 1:+.1%}** "
        f"to the build (target: under 5 %: {'met' if now / base - 1 < 0.05 else '**missed**'}); "
        f"the median of the {args.repeats} rounds' own ratios is {paired:+.1%}.\n\n"
        f"Machine: {machine()}.\n"
    )
    print(f"recorded in {record(section, HEADING)}")


if __name__ == "__main__":
    main()
