"""Run every benchmark, one after another, each in its own process; keep each one's output.

Run:  python benchmarks/run_all.py [--only fill,dataset] [--quick]

Benchmarks time things side by side, so they need a quiet machine: this prints the load
average before each and stops when it is above ``--max-load`` (one core busy elsewhere skews
every ratio). Output goes to the terminal and to ``benchmarks/_work/logs/<name>.txt``; the
benchmarks that record (``--write``, or by default) update their section of RESULTS.md.
``--quick`` runs each with small arguments, to check that they still run (numbers not kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOGS = HERE / "_work" / "logs"

# name: (arguments of a full, recorded run; arguments of a quick check that records nothing)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "fill": (["--write"], ["--days", "8", "--repeat", "1", "--skip-direct",
                           "--memory-days", "0"]),
    "dataset": (["--write"], ["--days", "16", "--items", "64"]),
    "download": ([], ["--days", "8", "--repeats", "1", "--no-record"]),
    "cube": ([], ["--days", "8", "--windows", "5", "--rounds", "1", "--no-record"]),
    # The original pipeline takes minutes per run here: its fill is timed on 6 days of each
    # 30-day batch and scaled (the output says so).
    "build": (["--spans", "30,120", "--baseline-fill-days", "6"],
              ["--days", "8", "--spans", "8", "--repeats", "1", "--skip-original",
               "--no-record"]),
    "update": ([], ["--spans", "16", "--appends", "1", "--no-record"]),
    "overhead": (["--repeats", "5"], ["--days", "4", "--repeats", "1", "--no-record"]),
    "stream": (["--write"], ["--step", "4", "--days", "16", "--repeat", "1",
                             "--prefetch", "1", "4"]),
    "cluster": (["--days", "30", "--write"], ["--days", "8", "--step", "8"]),
    "climatology": (["--days", "365", "--work", str(HERE / "_work" / "climatology"), "--write"],
                    ["--step", "8", "--days", "40"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated names (default: all): "
                        + ",".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small arguments, nothing recorded")
    parser.add_argument("--max-load", type=float, default=1.0,
                        help="stop when the 1-minute load average is above this")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    LOGS.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        load = os.getloadavg()[0]
        if load > args.max_load and not args.quick:
            print(f"load average {load:.2f} > {args.max_load}: the machine is not quiet; "
                  f"stopping before {name}", file=sys.stderr)
            return 1
        full, quick = BENCHMARKS[name]
        command = [sys.executable, str(HERE / f"bench_{name}.py"), *(quick if args.quick else full)]
        started = time.perf_counter()
        header = (f"# {' '.join(['python', f'benchmarks/bench_{name}.py', *command[2:]])}\n"
                  f"# {dt.datetime.now():%Y-%m-%d %H:%M}, load average {load:.2f} at the start\n")
        print(header, end="", flush=True)
        with open(LOGS / f"{name}.txt", "w") as log:
            log.write(header)
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
            for line in process.stdout:
                print(line, end="", flush=True)
                log.write(line)
            code = process.wait()
        print(f"# bench_{name}: exit {code}, {time.perf_counter() - started:.0f} s\n", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)} (see {LOGS})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
