"""Run every benchmark, one after another, each in its own process; keep each one's output.

Run:  python benchmarks/run_all.py [--only fill,dataset] [--quick] [--max-load 1.0]
                                   [--settle 300]

Without ``--quick`` every benchmark runs with the arguments of its recorded run (`BENCHMARKS`)
and rewrites its section of RESULTS.md; together they regenerate every section but the
hand-written asv one. Each section ends with the command that made it, the machine and the
load average at the benchmark's start (`common.provenance`).

Benchmarks time things side by side, so they need a quiet machine. Before each, this waits up
to ``--settle`` seconds for the 1-minute load average to fall to ``--max-load`` (the previous
benchmark's own load decays within a minute or two) and refuses to start it when it does not:
nothing recorded through this script was started above the limit (one core busy elsewhere skews
every ratio). Output goes to the terminal and to ``benchmarks/_work/logs/<name>.txt``, headed by
the command, the machine and the load. ``--quick`` runs each with small arguments, to check
that they still run: nothing is recorded, and a busy machine is reported, not refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import QUIET_LOAD, load_text, machine  # noqa: E402

LOGS = HERE / "_work" / "logs"

# name: (arguments of a full, recorded run; arguments of a quick check that records nothing)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "fill": (["--write"], ["--days", "8", "--repeat", "1", "--skip-direct",
                           "--memory-days", "0"]),
    # the table of blocks of issue 22 (its own section), by the same script
    "fill_table": (["--table-only", "--write"], ["--table-only", "--days", "8", "--repeat", "1",
                                                 "--skip-direct"]),
    "dataset": (["--write"], ["--days", "16", "--items", "64"]),
    "download": ([], ["--days", "8", "--repeats", "1", "--no-record"]),
    "cube": ([], ["--days", "8", "--windows", "5", "--rounds", "1", "--no-record"]),
    # The original pipeline's fill runs in full (~4-8 s per day here): no scaled shortcut.
    "build": (["--days", "30", "--spans", "30,120,365", "--repeats", "3"],
              ["--days", "8", "--spans", "8", "--repeats", "1", "--baseline-fill-days", "2",
               "--no-record"]),
    "update": (["--repeats", "5", "--long", "120"], ["--repeats", "1", "--long", "0",
                                                     "--no-record"]),
    "update_span": (["--repeats", "5"], ["--years", "1", "--repeats", "1", "--no-record"]),
    "overhead": (["--repeats", "5"], ["--days", "4", "--repeats", "1", "--no-record"]),
    "stream": (["--write"], ["--step", "4", "--days", "16", "--repeat", "1",
                             "--prefetch", "1", "4"]),
    "cluster": (["--days", "30", "--repeat", "3", "--write"],
                ["--days", "8", "--step", "8", "--repeat", "2"]),
    "versions": (["--days", "30", "--step", "1", "--repeats", "4"],
                 ["--days", "4", "--step", "8", "--repeats", "1", "--no-record"]),
    "fill_graph": ([], ["--days", "120", "--no-record"]),
    "climatology": (["--days", "365", "--work", str(HERE / "_work" / "climatology"), "--write"],
                    ["--step", "8", "--days", "40"]),
}
# a benchmark whose script is not bench_<name>.py: name -> its script's name
SCRIPTS = {"fill_table": "bench_fill", "fill_graph": "fill_graph_tasks"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated names (default: all): "
                        + ",".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small arguments, nothing recorded")
    parser.add_argument("--max-load", type=float, default=QUIET_LOAD,
                        help="the 1-minute load average a benchmark may start at")
    parser.add_argument("--settle", type=float, default=300,
                        help="seconds to wait for the load to fall to --max-load")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    LOGS.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        load = settled_load(args.max_load, 0 if args.quick else args.settle)
        if load[0] > args.max_load and not args.quick:
            print(f"load average {load[0]:.2f} > {args.max_load} after waiting "
                  f"{args.settle:.0f} s: the machine is not quiet; stopping before {name} "
                  "(nothing of it recorded)", file=sys.stderr)
            return 1
        full, quick = BENCHMARKS[name]
        script = f"{SCRIPTS.get(name, f'bench_{name}')}.py"
        command = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        started = time.perf_counter()
        header = (f"# {shlex.join(['python', f'benchmarks/{script}', *command[2:]])}\n"
                  f"# {dt.datetime.now():%Y-%m-%d %H:%M}; {machine()}; {load_text(load)}\n")
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


def settled_load(limit: float, wait: float) -> tuple[float, float, float]:
    """The load averages once the 1-minute one is at most `limit`, or after `wait` seconds."""
    deadline = time.monotonic() + wait
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
    return os.getloadavg()


if __name__ == "__main__":
    raise SystemExit(main())
