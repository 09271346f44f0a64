"""Benchmark: appending one day to a cube costs the same whatever the cube's length.

Run:  python benchmarks/bench_update.py [--spans 32,120] [--appends 3] [--no-record]

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
import json
import os
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


# One append in a fresh process, as `sicube update` runs it, timed in three parts: start-up
# (interpreter, imports, numba loading its cached kernels: paid by any command), the update
# call itself, and the process as a whole.
APPEND = """
import json, sys, time
began = time.perf_counter()
from sicube.cli import main  # what `python -m sicube` imports
import sicube.pipeline.build  # what its update command imports before any work (dask.array, xarray)
from sicube.kernels.fill import fill_fraction_block
from sicube.settings import apply
from sicube.archive.sources import read_day
import numpy as np
apply()  # the CLI's process-wide settings
read_day(sys.argv[3])  # numba's first call loads its kernels from the cache
fill_fraction_block(np.zeros((3, 8, 8), np.float32), None, (0, 3, 0, 8, 0, 8), 1, 1, 1.0, 1.0)
ready = time.perf_counter()
import sicube
summary = sicube.update(sys.argv[1], sys.argv[2], source=sys.argv[4], progress=False)
assert summary.exit_code == 0
print(json.dumps({"startup": ready - began, "update": time.perf_counter() - ready,
                  "stages": summary.seconds}))
"""


def append(store: Path, day: dt.date, archive: Path) -> dict:
    """Append `day` to `store` in a fresh process; its wall time, start-up and update times."""
    warm_file = next(archive.rglob("*.nc"))
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", APPEND, str(store), f"{day:%Y-%m-%d}",
                           str(warm_file), str(archive)], env=ENV, capture_output=True,
                          text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"update of {store} to {day} failed:\n{done.stderr}")
    return {"wall": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 32 and 120: the appended days sit at the same places in their 8-day time chunks, which
    # is what an append's cost depends on (the chunk is rewritten up to its last day).
    parser.add_argument("--spans", default="32,120", help="cube lengths in days")
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
    runs: dict[int, list[dict]] = {span: [] for span in spans}
    for n in range(1, args.appends + 1):
        for span in spans:  # interleaved: both spans see the same machine state
            store, end = stores[span]
            day = end + dt.timedelta(days=n)
            run = append(store, day, archive)
            runs[span].append(run)
            print(f"  {span:4d}-day cube, append {day}: process {run['wall']:5.2f} s, start-up "
                  f"{run['startup']:.2f} s, update {run['update']:.2f} s {run['stages']}",
                  flush=True)

    def median(span: int, key: str) -> float:
        return statistics.median(r[key] if key in r else r["stages"].get(key, 0.0)
                                 for r in runs[span])

    rows = ["| cube length | appends | update call (s) | median | ingest | fill | "
            "process wall (median) | of which start-up |", "|---|---|---|---|---|---|---|---|"]
    for span in spans:
        calls = ", ".join(f"{r['update']:.2f}" for r in runs[span])
        rows.append(f"| {span} days | {len(runs[span])} | {calls} | "
                    f"{median(span, 'update'):.2f} | {median(span, 'ingest'):.2f} | "
                    f"{median(span, 'fill'):.2f} | {median(span, 'wall'):.2f} | "
                    f"{median(span, 'startup'):.2f} |")
    ratio = median(max(spans), "update") / median(min(spans), "update")
    load = os.getloadavg()[0]
    text = "\n".join([
        "## Update",
        "",
        f"`python benchmarks/bench_update.py` ({machine()}; load average {load:.1f} before the "
        "last run). Full-resolution cubes (3584 x 2432, chunks 8 x 512 x 512) built from the "
        "sample archive, then one-day `sicube.update` runs, each in a fresh process, spans "
        "interleaved. *Update call*: the call itself; *start-up*: the interpreter, the imports "
        "(dask.array alone takes 1.5-1.8 s here) and numba loading its cached kernels, which "
        "every sicube command pays before any work:",
        "",
        *rows,
        "",
        f"Median update call on the {max(spans)}-day cube / on the {min(spans)}-day cube: "
        f"**{ratio:.2f}x**. An append rewrites the last time chunk (its observed days copied "
        "from the cube, not re-read from the source) and refills the time chunks within "
        "`time_window` days of the new day, so its cost follows the chunking, not the span: it "
        "grows with the new day's place in its 8-day chunk (the chunk is rewritten and "
        "refilled up to its last day), which is why the spans are chosen so that the appended "
        "days sit at the same places (days 6-8 of a chunk, the dearest).",
    ])
    print("\n" + text)
    if not args.no_record:
        print(f"recorded in {record(text, '## Update')}")
    for store, _ in stores.values():
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
