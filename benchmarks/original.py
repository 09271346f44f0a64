"""The original toolbox's ways, rebuilt for side-by-side benchmarks (not part of sicube).

A reconstruction of the seed toolbox's ``download.py`` and ``consolidate_data.py`` (README in
``/work/shared/seed/000_a417e0f9be3aecde.txt``, defects listed in SPEC section 1), written from
their documented behaviour, since their source is not in this repository:

- `sequential_download`: one blocking GET per day, written straight to its final name in one
  flat folder; a present file is skipped, a 404 is reported and skipped.
- `consolidate`: reads the days that have files (missing days are *dropped*, so the fill's
  time distance counts files, not days: one of the original's defects, kept here for timing
  fidelity), fills each batch of ``batch_size`` files with the direct rule (`direct_fill`),
  sets NaN to 0, divides by 100 and writes everything into one zlib-compressed NetCDF file.
- `direct_fill`: the fill rule applied the obvious way, for each missing cell a weighted sum
  over its (2*time_window+1) x (2*space_window+1)^2 window, compiled with numba and run in
  parallel like the original's numba loop, evaluating each weight as the formula is written
  (``tabulated=True``: from a table computed once, a faster rule than the original had).

Run as a script it is the original pipeline end to end (download, consolidate) and prints its
stage times as one JSON line, so a benchmark can measure it in its own process:

    python benchmarks/original.py --start 20240101 --end 20240130 --base-url URL \\
        --out-dir DIR --output-file cube.nc [--fill-days N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from numba import njit, prange

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sicube.archive import products  # noqa: E402
from sicube.dates import day_range, parse_span  # noqa: E402


@njit(parallel=True, nogil=True, cache=True)
def direct_fill(v, tw, sw, alpha, sigma, fill_from=0, fill_to=-1, tabulated=False):
    """The rule as the original applies it: for each missing cell, a weighted sum over its window.

    ``v`` is (time, y, x) in percent with NaN for missing; returns a filled copy (cells whose
    weight sum is <= 1e-6 stay NaN). Frames run in parallel (numba ``prange``). Only frames
    ``fill_from <= t < fill_to`` (``fill_to < 0``: to the end) are filled, all frames still
    serve as neighbours: for timing a part of a batch.

    By default each weight is evaluated as the formula is written, per neighbour: that
    reproduces the original loop's documented cost (about 7 s per full-resolution day on 2
    cores; 8.6 s here). ``tabulated=True`` looks the weights up in a table computed once:
    a faster direct rule than the original had, for a stricter comparison.
    """
    nt, ny, nx = v.shape
    w = np.empty((2 * tw + 1, 2 * sw + 1, 2 * sw + 1))
    for i in range(2 * tw + 1):
        for j in range(2 * sw + 1):
            for k in range(2 * sw + 1):
                d2 = (j - sw) ** 2 + (k - sw) ** 2 + alpha * (i - tw) ** 2
                w[i, j, k] = np.exp(-d2 / (2.0 * sigma**2))
    out = v.copy()
    stop = nt if fill_to < 0 else min(fill_to, nt)
    for t in prange(fill_from, stop):
        for y in range(ny):
            for x in range(nx):
                if v[t, y, x] == v[t, y, x]:
                    continue
                num = 0.0
                den = 0.0
                for tt in range(max(0, t - tw), min(nt, t + tw + 1)):
                    for yy in range(max(0, y - sw), min(ny, y + sw + 1)):
                        for xx in range(max(0, x - sw), min(nx, x + sw + 1)):
                            val = v[tt, yy, xx]
                            if val == val:
                                if tabulated:
                                    ww = w[tt - t + tw, yy - y + sw, xx - x + sw]
                                else:
                                    d2 = (yy - y) ** 2 + (xx - x) ** 2 + alpha * (tt - t) ** 2
                                    ww = np.exp(-d2 / (2.0 * sigma**2))
                                num += ww * val
                                den += ww
                if den > 1e-6:
                    out[t, y, x] = num / den
    return out


def warm_direct_fill() -> None:
    """Compile (or load from numba's cache) `direct_fill` for the one signature it is timed with.

    Every caller passes all eight arguments as (float32 C-contiguous 3-D array, int, int,
    float, float, int, int, bool): omitting the optional ones would be another specialisation,
    compiled inside the first timed call.
    """
    small = np.full((4, 32, 32), np.nan, np.float32)
    small[:, ::3, ::3] = 50.0
    direct_fill(small, 3, 7, 15.0, 7.0, 0, -1, False)


def sequential_download(start, end, out: Path, base_url: str) -> list[dt.date]:
    """The original download.py: one blocking GET per day, written in place; returns 404 days."""
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for day in day_range(*parse_span(start, end)):
        target = out / products.file_name(day)
        if target.exists():
            continue
        try:
            with urllib.request.urlopen(products.file_url(base_url, day), timeout=60) as r:
                target.write_bytes(r.read())
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise
            missing.append(day)
    return missing


def consolidate(source_dir: Path, start, end, output_file: Path, *, batch_size: int = 30,
                time_window: int = 3, space_window: int = 7, alpha: float = 15.0,
                sigma: float = 7.0, fill_days: int | None = None,
                tabulated: bool = False) -> dict[str, float]:
    """The original consolidate_data.py; returns seconds per stage (load, fill, write).

    ``fill_days`` fills only that many days in the middle of each batch (the rest stay
    unfilled; give a multiple of the thread count, frames run in parallel) and scales the fill
    time linearly to the batch: for when the direct rule is too slow to time in full. The
    scaled time is reported as ``fill`` and the measured one as ``fill_measured``.
    """
    import xarray as xr

    seconds = {"load": 0.0, "fill": 0.0, "fill_measured": 0.0, "write": 0.0}
    began = time.perf_counter()
    days = day_range(*parse_span(start, end))
    files = [(day, source_dir / products.file_name(day)) for day in days]
    files = [(day, path) for day, path in files if path.exists()]  # the missing days vanish
    coords = None
    batches = []
    seconds["load"] += time.perf_counter() - began
    for b in range(0, len(files), batch_size):
        began = time.perf_counter()
        frames = []
        for _, path in files[b:b + batch_size]:
            with xr.open_dataset(path) as ds:
                frames.append(ds["z"].values.astype(np.float32))
                if coords is None:
                    coords = {"y": ds["y"].values, "x": ds["x"].values}
        block = np.stack(frames)
        del frames
        seconds["load"] += time.perf_counter() - began

        began = time.perf_counter()
        nb = block.shape[0]
        n = nb if fill_days is None else min(fill_days, nb)
        # A subset is taken from the middle (edge frames have fewer neighbours, so cost less).
        block = direct_fill(block, time_window, space_window, alpha, sigma, (nb - n) // 2,
                            (nb - n) // 2 + n, tabulated)
        measured = time.perf_counter() - began
        seconds["fill_measured"] += measured
        seconds["fill"] += measured * block.shape[0] / n
        began = time.perf_counter()
        block = np.nan_to_num(block, nan=0.0) / np.float32(100)
        batches.append(block)
        seconds["write"] += time.perf_counter() - began  # the post-fill steps go with the write

    began = time.perf_counter()
    times = np.array([np.datetime64(day, "ns") for day, _ in files])
    ds = xr.Dataset({"z": (("time", "y", "x"), np.concatenate(batches))},
                    coords={"time": times, **coords})
    del batches
    ds.to_netcdf(output_file, encoding={"z": {"zlib": True}})
    seconds["write"] += time.perf_counter() - began
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the original pipeline: download, consolidate")
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--out-dir", type=Path, required=True, help="download folder")
    parser.add_argument("--output-file", type=Path, required=True, help="the NetCDF cube")
    parser.add_argument("--fill-days", type=int, help="fill only this many days, scale the time")
    parser.add_argument("--tabulated", action="store_true",
                        help="direct rule with tabulated weights (faster than the original)")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    missing = sequential_download(args.start, args.end, args.out_dir, args.base_url)
    seconds = {"download": time.perf_counter() - began}
    seconds.update(consolidate(args.out_dir, args.start, args.end, args.output_file,
                               fill_days=args.fill_days, tabulated=args.tabulated))
    print(json.dumps({"seconds": seconds, "missing": [f"{d:%Y%m%d}" for d in missing],
                      "bytes": args.output_file.stat().st_size}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
