"""Benchmark: appending one day to a cube costs the same whatever the cube's length.

Run:  python benchmarks/bench_update.py [--spans 30,120] [--appends 3] [--no-record]

Uses the full-resolution sample archive of `bench_build.py` (3584 x 2432 cells, 2024-01-01 ..
2024-04-29, written once to ``benchmarks/_work/archive``). For each span N it builds a cube of
the first N - appends days from the archive folder, then appends the next days one at a time
with ``python -m sicube update --store ... --end DAY`` (what a daily cron job runs), each in a
fresh process; the spans' appends are interleaved so that both see the same machine. Reported
per append: the process's wall time (imports included) and the update's own stage times from
its summary. An update rewrites the last time chunk (its earlier days copied from the cube) and
refills the fill batches within `time_window` days of the new day: its cost depends on the
chunking, not on the span. Results go to ``benchmarks/RESULTS.md`` under ``## Update``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
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


def sicube(*args: str) -> tuple[float, str]:
    """Run `python -m sicube ARGS` in a fresh process; its wall time and output."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sicube", *args, "-q"], env=ENV,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"sicube {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def stage_times(summary: str) -> dict[str, float]:
    """The `time` line of a summary: {"ingest": s, "fill": s, ...}."""
    line = re.search(r"^time\s+(.*)$", summary, re.M)
    return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", line.group(1))} if line \
        else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", default="30,120", help="cube lengths in days")
    parser.add_argument("--appends", type=int, default=3, help="one-day updates per span")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    spans = [int(s) for s in args.spans.split(",")]
    if max(spans) > (LAST - FIRST).days + 1:
        raise SystemExit(f"the archive holds {(LAST - FIRST).days + 1} days")
    archive = ensure_archive()
    stores = {}
    for span in spans:
        store = WORK / f"update-{span}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        end = FIRST + dt.timedelta(days=span - args.appends - 1)
        print(f"building {span - args.appends} days into {store} ...", flush=True)
        sicube("build", "--start", f"{FIRST:%Y%m%d}", "--end", f"{end:%Y%m%d}", "--store",
               str(store), "--source", str(archive))
        stores[span] = (store, end)
    runs: dict[int, list[tuple[float, dict]]] = {span: [] for span in spans}
    for n in range(1, args.appends + 1):
        for span in spans:  # interleaved: both spans see the same machine state
            store, end = stores[span]
            day = end + dt.timedelta(days=n)
            seconds, out = sicube("update", "--store", str(store), "--end", f"{day:%Y%m%d}",
                                  "--source", str(archive))
            runs[span].append((seconds, stage_times(out)))
            print(f"  {span:4d}-day cube, append {day}: {seconds:5.2f} s  "
                  f"{stage_times(out)}", flush=True)
    rows = ["| cube length | appends | process wall per append (s) | median | "
            "ingest (s, median) | fill (s, median) |", "|---|---|---|---|---|---|"]
    for span in spans:
        walls = [w for w, _ in runs[span]]
        ingest = statistics.median(t.get("ingest", 0.0) for _, t in runs[span])
        fill = statistics.median(t.get("fill", 0.0) for _, t in runs[span])
        rows.append(f"| {span} days | {len(walls)} | {', '.join(f'{w:.2f}' for w in walls)} | "
                    f"{statistics.median(walls):.2f} | {ingest:.2f} | {fill:.2f} |")
    ratio = statistics.median(w for w, _ in runs[max(spans)]) / \
        statistics.median(w for w, _ in runs[min(spans)])
    load = os.getloadavg()[0]
    text = "\n".join([
        "## Update",
        "",
        f"`python benchmarks/bench_update.py` ({machine()}; load average {load:.1f} before the "
        "last run). Full-resolution cubes (3584 x 2432, chunks 8 x 512 x 512) built from the "
        "sample archive, then one-day `sicube update` runs (fresh processes, spans "
        "interleaved):",
        "",
        *rows,
        "",
        f"Median append on the {max(spans)}-day cube / on the {min(spans)}-day cube: "
        f"**{ratio:.2f}x**. An append rewrites the last time chunk (its observed days copied "
        "from the cube, not re-read from the source) and refills the one or two fill batches "
        "within `time_window` days of the new day, so its cost follows the chunking, not the "
        "span.",
    ])
    print("\n" + text)
    if not args.no_record:
        print(f"recorded in {record(text, '## Update')}")
    for store, _ in stores.values():
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
