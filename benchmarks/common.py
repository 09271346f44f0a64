"""What every benchmark shares: the machine's description and writing its RESULTS.md section.

Every section `record` writes ends with the line `provenance` makes: the command that made it,
the date, the machine and the load average when the benchmark started. A benchmark imports
this module first thing, so the load read here is the machine's before the benchmark's own
work; above `QUIET_LOAD` the line says the record was not made on a quiet machine.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# A 1-minute load average above this means something else keeps a core busy: on the 2-core
# VM of the records that skews every side-by-side ratio. run_all.py waits for it.
QUIET_LOAD = 1.0
LOAD_AT_START = os.getloadavg()


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    found = re.search(r"Model name:\s*(.+)", out)
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


def machine() -> str:
    """CPU model, cores, memory and Python version, for the line under each result."""
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return (f"{cpu_model()}, {os.cpu_count()} cores, {pages * size / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}")


def is_quiet(load: float) -> bool:
    """Whether a 1-minute load average counts as a quiet machine."""
    return load <= QUIET_LOAD


def load_text(load: tuple[float, float, float] | None = None, when: str = "at the start") -> str:
    """'load average 0.12, 0.30, 0.41 (1, 5, 15 min) at the start', marked when above the quiet
    limit; `load` defaults to the load when the benchmark started."""
    load = LOAD_AT_START if load is None else load
    text = f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min) {when}"
    if not is_quiet(load[0]):
        text += (f" (**above the quiet limit of {QUIET_LOAD:.1f}: not a quiet-machine record, "
                 "ratios may be skewed**)")
    return text


def command_line() -> str:
    """This process's command as a user types it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def provenance() -> str:
    """The line closing every recorded section: command, date, machine, load at the start."""
    return (f"Recorded by `{command_line()}` on {dt.date.today()}; machine: {machine()}; "
            f"{load_text()}.")


def sample_archive(root: Path, first: dt.date, last: dt.date, *, step: int, seed: int,
                   missing_days: list[dt.date] | None = None) -> Path:
    """sicube's synthetic sample archive of `first`..`last` in `root`, written once: its
    COMPLETE stamp names what it holds, so one asked for with other arguments, or whose
    writing was cut short, is written again. `missing_days` None: `write_archive`'s random
    missing days."""
    from sicube.archive.synthetic import write_archive

    stamp = root / "COMPLETE"
    missing = "random" if missing_days is None else " ".join(map(str, missing_days))
    wanted = f"{first}..{last}, step {step}, seed {seed}, missing {missing}\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"writing the sample archive {first}..{last} (step {step}) to {root} ...",
              flush=True)
        shutil.rmtree(root, ignore_errors=True)
        write_archive(root, first, last, step=step, missing_days=missing_days, seed=seed)
        stamp.write_text(wanted)
    return root


def record(section: str, heading: str) -> Path:
    """Replace (or append) the section `heading` (e.g. "## Build") of benchmarks/RESULTS.md,
    closed by the `provenance` line."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = section.rstrip("\n") + "\n\n" + provenance() + "\n\n"  # blank line before next
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")
    return RESULTS
