"""What every benchmark shares: the machine's description and writing its RESULTS.md section."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


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


def record(section: str, heading: str) -> Path:
    """Replace (or append) the section `heading` (e.g. "## Build") of benchmarks/RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = section.rstrip("\n") + "\n\n"  # a blank line before the next heading
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")
    return RESULTS
