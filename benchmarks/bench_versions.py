"""Benchmark: what a versioned (icechunk) store costs against plain Zarr, build and update.

Run:  python benchmarks/bench_versions.py [--days 30] [--step 1] [--repeats 2] [--no-record]

Writes a sample archive of `days` + 1 days (full resolution at step 1: 3584 x 2432 cells) to
``benchmarks/_work/versions-archive``, then, `repeats` times, builds the first `days` days
into a plain Zarr store and into ``icechunk://`` (the order alternating between repeats, so
both see the same machine), and appends the last day with ``sicube update``, each command in
a fresh process as a user runs it. Reported: the best wall time of each and the ratios
icechunk / plain. Results go to ``benchmarks/RESULTS.md`` under ``## Versioned stores``.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from common import machine, record, sample_archive  # noqa: E402

WORK = REPO / "benchmarks" / "_work"
FIRST = dt.date(2024, 1, 1)
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TARGET = 1.15  # icechunk / plain, build and update


def sicube(*args: str) -> float:
    """Run `python -m sicube ARGS -q` in a fresh process; its wall time."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sicube", *args, "-q"], env=ENV,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sicube {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - began


def archive(days: int, step: int) -> Path:
    """The sample archive of the build's `days` and the day the update adds, written once."""
    return sample_archive(WORK / f"versions-archive-{days + 1}-{step}", FIRST,
                          FIRST + dt.timedelta(days=days), step=step, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30, help="days of the build")
    parser.add_argument("--step", type=int, default=1, help="coarsen the grid (1: full)")
    parser.add_argument("--repeats", type=int, default=2, help="builds of each kind")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    source = archive(args.days, args.step)
    end = FIRST + dt.timedelta(days=args.days - 1)
    stores = {"plain": WORK / "versions-plain.zarr", "icechunk": WORK / "versions-icechunk"}
    names = {"plain": str(stores["plain"]), "icechunk": f"icechunk://{stores['icechunk']}"}
    times: dict[str, dict[str, list[float]]] = {k: {"build": [], "update": []} for k in stores}
    for repeat in range(args.repeats):
        order = list(stores) if repeat % 2 == 0 else list(reversed(stores))
        for kind in order:
            shutil.rmtree(stores[kind], ignore_errors=True)
            built = sicube("build", "--start", f"{FIRST:%Y%m%d}", "--end", f"{end:%Y%m%d}",
                           "--store", names[kind], "--source", str(source))
            updated = sicube("update", "--store", names[kind], "--source", str(source),
                             "--end", f"{end + dt.timedelta(days=1):%Y%m%d}")
            times[kind]["build"].append(built)
            times[kind]["update"].append(updated)
            print(f"  {kind:8s} build {built:7.1f} s, update {updated:6.1f} s", flush=True)
    best = {k: {what: min(v) for what, v in t.items()} for k, t in times.items()}
    ratio = {what: best["icechunk"][what] / best["plain"][what] for what in ("build", "update")}
    median = {what: statistics.median(times["icechunk"][what])
              / statistics.median(times["plain"][what]) for what in ("build", "update")}
    load = os.getloadavg()
    lines = [
        "## Versioned stores",
        "",
        f"`python benchmarks/bench_versions.py --days {args.days} --step {args.step} "
        f"--repeats {args.repeats}`: a {args.days}-day build (step {args.step}) and a one-day "
        "`update`, each a fresh `python -m sicube` process, into plain Zarr and into "
        "`icechunk://` (one commit per run), interleaved; best of "
        f"{args.repeats}.",
        "",
        "| store | build | one-day update |",
        "|---|---|---|",
        *(f"| {k} | {best[k]['build']:.1f} s | {best[k]['update']:.1f} s |" for k in stores),
        f"| icechunk / plain | {ratio['build']:.2f}x | {ratio['update']:.2f}x |",
        "",
        "Every run: " + "; ".join(
            f"{k} build {', '.join(f'{t:.1f}' for t in times[k]['build'])} s, update "
            f"{', '.join(f'{t:.1f}' for t in times[k]['update'])} s" for k in stores)
        + f". The medians give {median['build']:.2f}x (build) and {median['update']:.2f}x "
        f"(update). Target (issue \"versions\"): icechunk <= {TARGET}x plain: "
        + ("met" if max(ratio.values()) <= TARGET else "**missed**") + " (best of each).",
        "",
        f"Machine: {machine()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}.",
    ]
    print("\n".join(lines))
    if not args.no_record:
        print(f"recorded in {record(chr(10).join(lines), '## Versioned stores')}")


if __name__ == "__main__":
    main()
