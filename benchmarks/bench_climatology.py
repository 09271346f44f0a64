"""Benchmark of `sicube climatology`: a 1-year run's time and peak memory, and a 10-year estimate.

Run with ``python benchmarks/bench_climatology.py`` (``--help`` for options; a quick check:
``--step 8 --days 40``). It

1. writes (or reuses, under ``--work``) a complete cube of ``--days`` days from 2023-01-01
   on the n3125 grid coarsened ``--step`` times (1: full resolution, 3584 x 2432), in the
   cube's exact layout (`sicube.datacube.cube.template`, default chunks), its ``sea_ice_conc`` the
   sample archive's fields (`synthetic.sample_day`, NaN -> 0, / 100), every day observed;
2. times `sicube.analysis.climatology.climatology` over its years (``--half-window``, threads,
   ``--workers``), sampling the peak resident memory of this process every 20 ms (psutil);
3. estimates a 10-year run: the reduction reads each day once and the output (365 days of
   year x the grid) is the same for any span, so time ~ days read; the estimate scales the
   measured time by 3650 / days (an upper bound: the output's share does not grow). Memory is
   bounded by the tiles in flight, not the span (measured peak stated as the estimate).

``--write`` records the result as the "## Climatology" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, record  # noqa: E402

START = dt.date(2023, 1, 1)


def write_cube(path: Path, days: int, step: int) -> Path:
    """A complete cube of `days` sample days on n3125 / `step` (reused when present)."""
    import zarr

    from sicube.archive import products
    from sicube.archive.synthetic import sample_day
    from sicube.datacube import cube

    stamp = path / ".bench-complete"
    if stamp.exists():
        return path
    grid = products.GRIDS["n3125"]
    dates = [START + dt.timedelta(days=i) for i in range(days)]
    ds = cube.template(dates, grid.x(step), grid.y(step), grid.epsg_hughes,
                       attrs={cube.STATUS: cube.COMPLETE, cube.SOURCE_FILES: {},
                              cube.MISSING_DAYS: [], cube.FAILED_DAYS: {}})
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3)
    group = zarr.open_group(str(path), mode="r+")
    conc = group[cube.CONC]
    chunk = conc.chunks[0]
    for t0 in range(0, days, chunk):
        block = np.stack([sample_day(d, step=step, start=START)
                          for d in dates[t0:t0 + chunk]])
        conc[t0:t0 + block.shape[0]] = np.nan_to_num(block / 100.0).astype(np.float32)
        print(f"\rwriting the cube: {min(t0 + chunk, days)}/{days} days", end="", flush=True)
    print()
    group[cube.OBSERVED][:] = np.ones(days, bool)
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))
    stamp.touch()
    return path


class PeakMemory:
    """Samples this process's resident memory every 20 ms; `peak` in bytes."""

    def __init__(self):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365, help="days in the cube (from 2023-01-01)")
    parser.add_argument("--step", type=int, default=1, help="grid coarsening (1: full resolution)")
    parser.add_argument("--half-window", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="threads (tiles at once)")
    parser.add_argument("--work", help="folder for the cube (kept, reused); default: a temp dir")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import dask

    from sicube.analysis.climatology import climatology

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-clim-"))
    work.mkdir(parents=True, exist_ok=True)
    store = write_cube(work / f"cube-{args.days}d-step{args.step}.zarr", args.days, args.step)
    last = START + dt.timedelta(days=args.days - 1)
    out = work / "clim.zarr"
    with dask.config.set(scheduler="threads", num_workers=args.workers), PeakMemory() as mem:
        began = time.perf_counter()
        summary = climatology(store, f"{START.year}-{last.year}", out,
                              half_window=args.half_window, overwrite=True,
                              workers=args.workers)
        seconds = time.perf_counter() - began
    shape = summary.shape
    scale = 3650 / args.days
    lines = [
        "## Climatology",
        "",
        f"`python benchmarks/bench_climatology.py --days {args.days} --step {args.step} "
        f"--half-window {args.half_window} --workers {args.workers}`",
        "",
        f"- cube: {args.days} days x {shape[1]} x {shape[2]} (n3125 / {args.step}), "
        f"default chunks; output {shape[0]} x {shape[1]} x {shape[2]} mean and std (float32)",
        f"- measured: {seconds:.1f} s, peak resident memory {mem.peak / 2**30:.2f} GiB "
        f"({args.workers} threads, 256 x 256 tiles)",
        f"- 10-year estimate: <= {seconds * scale / 60:.1f} min (time x {scale:.1f}: each "
        f"day is read once; the output's share does not grow), memory ~{mem.peak / 2**30:.2f} "
        "GiB (bounded by the tiles in flight, not the span)",
        f"- machine: {machine()}",
    ]
    print("\n".join(lines))
    if args.write:
        print(f"recorded in {record(chr(10).join(lines), '## Climatology')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
