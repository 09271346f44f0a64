"""Benchmark: `sicube build` against its floor and the original toolbox's way; memory per span.

Run:  python benchmarks/bench_build.py [--days 30] [--spans 30,120,365] [--repeats 3]
                                        [--workers 2] [--baseline-fill-days N]
                                        [--skip-original] [--no-record]

Serves the full-resolution sample archive (3584 x 2432 cells from 2024-01-01, the real
files' layout, `MISSING` days absent; written to ``benchmarks/_work/archive`` on first use,
~2 s per day, and extended when a longer span asks) from the loopback mirror in its own
process. Then ``--repeats`` rounds; in each, every method runs once, each run a fresh process
with a fresh store and download folder, and the order of the methods is reversed from one
round to the next:

1. ``python -m sicube build`` of the first N days, for each N of ``--spans`` (download,
   validation, ingest into Zarr, day statistics, land mask, Gaussian fill: a real build);
2. the floor of those N days (``benchmarks/floor.py``): the files decoded with sicube's reader
   and written into Zarr in the cube's chunks and codec, no fill, from the archive's folder;
3. the original toolbox's way for the first ``--days`` days (``benchmarks/original.py``):
   sequential downloads, load with xarray, direct-rule fill per 30-day batch (numba,
   parallel), NaN -> 0, /100, one zlib NetCDF file; once as written and once with the direct
   rule's weights tabulated (a faster rule than the original had).

Every figure is the median run of its method (all methods alike). Shortcut, off by default:
``--baseline-fill-days N`` fills only N days of each original batch and scales that fill time
to the batch; the output says so beside every figure it touches. After the rounds each span is
built once more with glibc returning every large buffer at once (``MALLOC_MMAP_THRESHOLD_``,
one run per span), so that the peak follows the live data.

Wall time is the whole process, imports included; peak RSS is the sum over the process and its
children, sampled every 0.1 s with psutil. Both fills' numba caches are warmed first so neither
side pays compilation. The section is printed and written to ``benchmarks/RESULTS.md`` under
``## Build`` (unless ``--no-record``) with the command, the machine and its load at the start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import command_line, load_text, machine, record  # noqa: E402

WORK = REPO / "benchmarks" / "_work"
ARCHIVE = WORK / "archive"
FIRST = dt.date(2024, 1, 1)
LAST = dt.date(2024, 4, 29)  # the 120 days every other benchmark reads
YEAR = 365
MISSING = ["20240112", "20240123", "20240214", "20240318", "20240402",  # within LAST
           "20240517", "20240704", "20240811", "20240923", "20241030", "20241119", "20241207"]
# glibc keeps freed buffers in per-thread arenas until trimmed; with a fixed 1 MB mmap threshold
# every larger buffer is returned the moment it is freed, so RSS follows the live data.
PROMPT_FREE = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# Targets (issue 22): s/day at --days, and for a year of days s/day and the ratio to the floor.
TARGET_S_PER_DAY = 0.5
TARGET_YEAR_S_PER_DAY = 0.4
TARGET_FLOOR_RATIO = 1.5
TARGET_SPEEDUP = 15.0
TARGET_PEAK_GB = 3.0


def _stamp(last: dt.date) -> str:
    """What the archive's COMPLETE file says of an archive written through `last`."""
    missing = " ".join(_missing_through(last))
    return f"{FIRST}..{last}, step 1, seed 0, missing {missing}, real (GDAL) layout\n"


def _missing_through(last: dt.date) -> list[str]:
    return [d for d in MISSING if d <= f"{last:%Y%m%d}"]


def _written_through(stamp: Path) -> dt.date | None:
    """The last day of the archive as its stamp says, None when there is none or it differs."""
    text = stamp.read_text() if stamp.exists() else ""
    found = re.match(rf"{FIRST}\.\.(\d{{4}}-\d\d-\d\d),", text)
    last = dt.date.fromisoformat(found.group(1)) if found else None
    return last if last and text == _stamp(last) else None


def ensure_archive(days: int = (LAST - FIRST).days + 1) -> Path:
    """The full-resolution sample archive through its `days`-th day, written on first use and
    extended when more days are asked (~2 s per day). Each day's field depends only on the day
    (its drift anchored at FIRST), so an extended archive equals one written at once."""
    from sicube.archive import products
    from sicube.archive.synthetic import sample_day, write_day_file
    from sicube.dates import day_range

    last = _last(days)
    stamp = ARCHIVE / "COMPLETE"
    written = _written_through(stamp)
    if written is not None and written >= last:
        return ARCHIVE
    if written is None:
        shutil.rmtree(ARCHIVE, ignore_errors=True)
    begin = FIRST if written is None else written + dt.timedelta(days=1)
    print(f"writing the full-resolution sample archive {begin}..{last} to {ARCHIVE} ...",
          flush=True)
    for day in day_range(begin, last):
        if f"{day:%Y%m%d}" not in MISSING:
            write_day_file(ARCHIVE / products.relative_path(day),
                           sample_day(day, step=1, seed=0, start=FIRST), day, step=1)
    stamp.write_text(_stamp(last))
    return ARCHIVE


def warm_numba() -> None:
    """Compile (or load from cache) both fills' kernels so no timed run pays compilation."""
    from original import warm_direct_fill

    from sicube.kernels.fill import gaussian_fill

    small = np.full((4, 32, 32), np.nan, np.float32)
    small[:, ::3, ::3] = 50.0
    gaussian_fill(small)
    warm_direct_fill()  # the 8-argument signature original.py's consolidate calls


def run_measured(command: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run `command`; its wall time, the peak summed RSS of its process tree, and its stdout."""
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, **(env or {})}, cwd=REPO)
    watched = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            total = 0
            try:
                for p in [watched, *watched.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:  # a child that just ended
                        pass
            except psutil.Error:  # the process itself ended
                pass
            peak = max(peak, total)
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - began
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, peak, out


def _last(days: int) -> dt.date:
    return FIRST + dt.timedelta(days=days - 1)


def _end(days: int) -> str:
    return f"{_last(days):%Y%m%d}"


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sicube_run(days: int, base_url: str, tmp: Path, workers: int,
               env: dict | None = None) -> dict:
    """`python -m sicube build` of the first `days` days into a fresh store; times and RSS."""
    store, raw = tmp / f"sicube-{days}.zarr", tmp / f"raw-{days}"
    seconds, peak, out = run_measured([
        sys.executable, "-m", "sicube", "build", "--start", f"{FIRST:%Y%m%d}",
        "--end", _end(days), "--store", str(store), "--base-url", base_url,
        "--raw-dir", str(raw), "--workers", str(workers), "-q"], env)
    stages = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", _line(out, "time"))}
    size = _tree_bytes(store)
    shutil.rmtree(store)
    shutil.rmtree(raw)
    return {"days": days, "seconds": seconds, "peak": peak, "stages": stages, "bytes": size,
            "observed": _line(out, "days")}


def floor_run(days: int, tmp: Path, workers: int) -> dict:
    """benchmarks/floor.py for the first `days` days in its own process; times and RSS."""
    store = tmp / f"floor-{days}.zarr"
    seconds, peak, out = run_measured([
        sys.executable, str(REPO / "benchmarks" / "floor.py"), "--source", str(ARCHIVE),
        "--start", f"{FIRST:%Y%m%d}", "--end", _end(days), "--store", str(store),
        "--workers", str(workers)])
    report = json.loads(out.strip().splitlines()[-1])
    size = _tree_bytes(store)
    shutil.rmtree(store)
    return {"days": days, "seconds": seconds, "peak": peak, "bytes": size, **report}


def original_run(days: int, base_url: str, tmp: Path, fill_days: int | None,
                 tabulated: bool = False) -> dict:
    """benchmarks/original.py for the first `days` days in its own process; times and RSS."""
    raw, output = tmp / "original-raw", tmp / "original.nc"
    command = [sys.executable, str(REPO / "benchmarks" / "original.py"),
               "--start", f"{FIRST:%Y%m%d}", "--end", _end(days), "--base-url", base_url,
               "--out-dir", str(raw), "--output-file", str(output)]
    if fill_days:
        command += ["--fill-days", str(fill_days)]
    if tabulated:
        command.append("--tabulated")
    seconds, peak, out = run_measured(command)
    report = json.loads(out.strip().splitlines()[-1])
    # Scaled runs: the whole-process time counts the fill as measured; use the scaled fill.
    extra = report["seconds"]["fill"] - report["seconds"]["fill_measured"]
    output.unlink()
    shutil.rmtree(raw)
    return {"days": days, "seconds": seconds + extra, "measured_seconds": seconds, "peak": peak,
            "stages": report["seconds"], "bytes": report["bytes"], "missing": report["missing"]}


def _line(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.startswith(key):
            return line[len(key):].strip()
    raise RuntimeError(f"no {key!r} line in the build summary:\n{text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30,
                        help="the span timed against the original (added to --spans)")
    parser.add_argument("--spans", default="30,120,365",
                        help="spans built, with their floor and peak memory")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every method")
    parser.add_argument("--workers", type=int, default=2, help="sicube dask workers")
    parser.add_argument("--baseline-fill-days", type=int, default=None,
                        help="shortcut: fill only N days of each original batch, scale the time")
    parser.add_argument("--skip-original", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    try:
        args.spans = sorted({int(n) for n in args.spans.split(",")} | {args.days})
    except ValueError:
        parser.error(f"--spans: comma-separated day counts, got {args.spans!r}")
    if not 1 <= args.spans[0] <= args.spans[-1] <= YEAR or args.repeats < 1:
        parser.error(f"need spans in 1..{YEAR} days and --repeats >= 1")
    if args.baseline_fill_days is not None and args.baseline_fill_days < 1:
        parser.error("need --baseline-fill-days >= 1")

    ensure_archive(args.spans[-1])
    warm_numba()
    # Each span's build beside its floor, so that both see the same state of the machine.
    methods = [(kind, n) for n in args.spans for kind in ("sicube", "floor")]
    if not args.skip_original:
        methods += [("original", args.days), ("tabulated", args.days)]
    runs: dict[tuple[str, int], list[dict]] = {method: [] for method in methods}
    prompt: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sicube-bench-build-", dir=WORK) as tmp:
        tmp = Path(tmp)
        server = subprocess.Popen(
            [sys.executable, "-m", "sicube", "mirror", "--root", str(ARCHIVE), "--port", "0"],
            stdout=subprocess.PIPE, text=True, env=ENV)
        try:
            base_url = server.stdout.readline().strip()
            print(f"mirror: {base_url}", flush=True)
            for repeat in range(args.repeats):
                # Every method once per round, the order reversed each round: a drift of the
                # machine hits all methods alike.
                for kind, n in methods if repeat % 2 == 0 else methods[::-1]:
                    if kind == "sicube":
                        run = sicube_run(n, base_url, tmp, args.workers)
                    elif kind == "floor":
                        run = floor_run(n, tmp, args.workers)
                    else:
                        run = original_run(n, base_url, tmp, args.baseline_fill_days,
                                           tabulated=kind == "tabulated")
                    runs[kind, n].append(run)
                    print(f"{kind} {n} days (round {repeat + 1}): {run['seconds']:.1f} s, "
                          f"peak {run['peak'] / 1e9:.2f} GB", flush=True)
            for n in args.spans:
                prompt[n] = sicube_run(n, base_url, tmp, args.workers, env=PROMPT_FREE)
                print(f"sicube {n} days, large buffers returned at once: "
                      f"{prompt[n]['seconds']:.1f} s, peak {prompt[n]['peak'] / 1e9:.2f} GB",
                      flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)
    section = report(args, runs, prompt)
    print("\n" + section)
    if not args.no_record:
        print(f"recorded in {record(section, '## Build')}")


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the slower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _walls(runs: list[dict]) -> str:
    return ", ".join(f"{r['seconds']:.1f}" for r in runs)


def _peaks(runs: list[dict]) -> str:
    return ", ".join(f"{r['peak'] / 1e9:.2f}" for r in runs)


def report(args, runs: dict[tuple[str, int], list[dict]], prompt: dict[int, dict]) -> str:
    """The ``## Build`` section: spans against the floor, targets, stages, the original."""
    n, longest = args.days, args.spans[-1]
    builds = {d: median_run(runs["sicube", d]) for d in args.spans}
    floors = {d: median_run(runs["floor", d]) for d in args.spans}
    lines = [
        "## Build\n",
        f"`{command_line()}` ({dt.date.today()}): the full-resolution sample archive (3584 x "
        f"2432 cells, ~{_archive_mb():.1f} MB per file, the real files' layout, days from "
        f"{FIRST}; missing: {', '.join(_missing_through(_last(longest))) or 'none'}) served by "
        f"the loopback mirror in its own process. {args.repeats} round(s); in each every "
        "method ran once, each run a fresh process with a fresh store and download folder, "
        "the order of the methods reversed from round to round. **Every figure is the median "
        "run of its method** (the runs are listed). Wall time is the whole process, imports "
        "included; peak RSS the sum over its process tree (psutil, every 0.1 s). The floor "
        "(`benchmarks/floor.py`): the same days' files decoded with sicube's reader and "
        "written as one variable in the cube's chunks and codec, no fill, read from the "
        "archive's folder (no download): what any build must do at the least.\n",
        "| span (days) | sicube build walls (s) | s/day | floor walls (s) | floor s/day | "
        "build / floor | build peak RSS, each run (GB) | floor peak (GB) | store (MB) |",
        "|---:|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for d in args.spans:
        b, f = builds[d], floors[d]
        lines.append(
            f"| {d} ({b['observed'].split(',')[0]}) | {_walls(runs['sicube', d])} | "
            f"{b['seconds'] / d:.2f} | {_walls(runs['floor', d])} | {f['seconds'] / d:.2f} | "
            f"{b['seconds'] / f['seconds']:.2f}x | {_peaks(runs['sicube', d])} | "
            f"{f['peak'] / 1e9:.2f} | {b['bytes'] / 1e6:.0f} |")
    lines += ["", "Targets:", ""]
    s_day = builds[n]["seconds"] / n
    lines.append(f"- {n} days: {s_day:.2f} s/day (target <= {TARGET_S_PER_DAY}): "
                 f"{verdict(s_day <= TARGET_S_PER_DAY)}.")
    if YEAR in builds:
        s_day = builds[YEAR]["seconds"] / YEAR
        ratio = builds[YEAR]["seconds"] / floors[YEAR]["seconds"]
        lines.append(f"- {YEAR} days: {s_day:.2f} s/day (target <= {TARGET_YEAR_S_PER_DAY}): "
                     f"{verdict(s_day <= TARGET_YEAR_S_PER_DAY)}; {ratio:.2f}x the floor "
                     f"(target <= {TARGET_FLOOR_RATIO}x): "
                     f"{verdict(ratio <= TARGET_FLOOR_RATIO)}.")
    else:
        lines.append(f"- {YEAR} days (<= {TARGET_YEAR_S_PER_DAY} s/day, within "
                     f"{TARGET_FLOOR_RATIO}x of the floor): not measured in this run (its "
                     f"spans: {', '.join(map(str, args.spans))}).")
    lines.append(f"- peak RSS: {_memory_verdict(runs, args.spans)}.")
    lines += ["", *_stage_table(builds[longest], floors[longest], longest)]
    if not args.skip_original:
        lines += ["", *_against_original(args, runs, builds[n])]
    lines += [
        "",
        "The same builds once more (one run each) with glibc returning every buffer of 1 MB or "
        "more the moment it is freed (`MALLOC_MMAP_THRESHOLD_=1048576`; by default freed "
        "buffers stay in per-thread arenas until the build trims them after each chunk and "
        "batch), so that the peak follows the live data: "
        + ", ".join(f"{d} days {r['peak'] / 1e9:.2f} GB ({r['seconds']:.1f} s)"
                    for d, r in prompt.items()) + ".",
        "",
        f"Machine: {machine()}; {load_text()}; {load_text(os.getloadavg(), 'at the end')}.",
    ]
    return "\n".join(lines) + "\n"


def _memory_verdict(runs: dict, spans: list[int]) -> str:
    """Peak RSS against the target and flat with the span: the highest run of each span."""
    top = {d: max(r["peak"] for r in runs["sicube", d]) for d in spans}
    low = {d: min(r["peak"] for r in runs["sicube", d]) for d in spans}
    spread = max(top[d] - low[d] for d in spans)
    rise = top[spans[-1]] - top[spans[0]]
    text = (", ".join(f"{d} days {low[d] / 1e9:.2f}-{top[d] / 1e9:.2f} GB" for d in spans)
            + f" (lowest-highest run); target < {TARGET_PEAK_GB:.0f} GB: "
            + verdict(max(top.values()) < TARGET_PEAK_GB * 1e9))
    if len(spans) > 1:
        # Flat: the longest span's highest run rises above the shortest's by no more than runs
        # of one span differ among themselves (or 0.05 GB, when only one run was made).
        flat = rise <= max(spread, 0.05e9)
        text += (f"; the highest {spans[-1]}-day run is {rise / 1e9:+.2f} GB from the highest "
                 f"{spans[0]}-day run, against a spread of up to {spread / 1e9:.2f} GB between "
                 f"runs of one span; flat with the span (that rise within the spread or "
                 f"0.05 GB): {verdict(flat)}")
    return text


def _stage_table(build: dict, floor: dict, days: int) -> list[str]:
    """Where the median build's time goes, stage by stage, beside the floor's."""
    stages = build["stages"]
    rest = build["seconds"] - sum(stages.values())
    rows = [f"Where the time goes, {days} days (median runs): the build's stages as its "
            "summary prints them (ingest: downloads from the mirror, validation, hashing, "
            "decoding, day statistics, writing the raw field), the floor's seconds summed over "
            "its threads.", "",
            "| build stage | s | floor | s |", "|---|---:|---|---:|"]
    floor_rows = [("decode (thread-s)", floor["decode"]),
                  ("write (thread-s)", floor["write"]),
                  ("process wall", floor["seconds"])]
    build_rows = [*stages.items(), ("process start, imports, creation, summary", rest),
                  ("**process wall**", build["seconds"])]
    for i in range(max(len(build_rows), len(floor_rows))):
        bl, bv = build_rows[i] if i < len(build_rows) else ("", None)
        fl, fv = floor_rows[i] if i < len(floor_rows) else ("", None)
        rows.append(f"| {bl} | {'' if bv is None else f'{bv:.1f}'} | {fl} | "
                    f"{'' if fv is None else f'{fv:.1f}'} |")
    return rows


def _against_original(args, runs: dict, build: dict) -> list[str]:
    """The stage table against the original way, the speed-up and every shortcut beside it."""
    n = args.days
    orig, table = median_run(runs["original", n]), median_run(runs["tabulated", n])
    scaled = orig["stages"]["fill"] != orig["stages"]["fill_measured"]
    observed = n - len(orig["missing"])
    shortcut = (f" (shortcut: the original's fill timed on {args.baseline_fill_days} of each "
                f"batch's days and scaled to the batch; its process walls as measured: "
                f"{_walls([{'seconds': r['measured_seconds']} for r in runs['original', n]])} s)"
                if scaled else "")
    s, o = build["stages"], orig["stages"]
    lines = [f"Against the original way, {n} days ({observed} observed), median runs:", "",
             f"| stage ({n} days) | sicube build, {args.workers} workers (s) | original way (s) |",
             "|---|---:|---:|"]
    rows = [
        ("download (sicube: + validate, hash, ingest into Zarr)", "ingest", "download"),
        ("load (xarray, stack)", None, "load"),
        ("land mask", "mask", None),
        ("fill (sicube: + NaN->0, /100, write to Zarr)" + (" (original: scaled)" if scaled
                                                           else ""), "fill", "fill"),
        ("NaN->0, /100, write one zlib NetCDF", None, "write"),
    ]
    for label, skey, okey in rows:
        sv = f"{s[skey]:.1f}" if skey and skey in s else "-"
        ov = f"{o[okey]:.1f}" if okey else "-"
        lines.append(f"| {label} | {sv} | {ov} |")
    other_s = build["seconds"] - sum(s.values())
    other_o = orig["seconds"] - sum(o[k] for k in ("download", "load", "fill", "write"))
    ratio = orig["seconds"] / build["seconds"]
    lines += [
        f"| other stages, process start, imports, summary | {other_s:.1f} | {other_o:.1f} |",
        f"| **total** | **{build['seconds']:.1f}** | **{orig['seconds']:.1f}** |",
        f"| peak RSS (GB) | {build['peak'] / 1e9:.2f} | {orig['peak'] / 1e9:.2f} |",
        f"| output size (MB) | {build['bytes'] / 1e6:.0f} (all variables) | "
        f"{orig['bytes'] / 1e6:.0f} (filled only) |",
        "",
        f"**Speed-up: {ratio:.1f}x** (target >= {TARGET_SPEEDUP:.0f}x: "
        f"{verdict(ratio >= TARGET_SPEEDUP)}), median of {len(runs['original', n])} original "
        f"runs (walls {_walls(runs['original', n])} s) against the median of "
        f"{len(runs['sicube', n])} sicube runs{shortcut}. Stricter: with the direct rule's "
        f"weights tabulated once (a faster rule than the original had) the original way takes "
        f"{table['seconds']:.1f} s (walls {_walls(runs['tabulated', n])} s), "
        f"{table['stages']['fill']:.1f} s of it filling: sicube is "
        f"**{table['seconds'] / build['seconds']:.1f}x** faster"
        + (" (the same shortcut)." if scaled else "."),
        f"The original's fill (the direct rule in numba, frames in parallel, each weight "
        f"evaluated as the formula is written) costs {o['fill'] / observed:.1f} s per observed "
        f"day here; sicube's whole fill stage is {o['fill'] / max(s.get('fill', 0), 1e-9):.0f}x "
        "faster. The downloads are loopback copies with no latency, so the sequential loop "
        "costs nothing here; against a distant server see `## Download`. The original way "
        "drops the missing days before the fill (its defect, kept for timing fidelity) and "
        "stores only the filled field; sicube also stores the raw field, flags, mask, "
        "statistics and provenance.",
    ]
    return lines


def _archive_mb() -> float:
    sizes = [p.stat().st_size for p in ARCHIVE.glob("*/*.nc")]
    return sum(sizes) / max(len(sizes), 1) / 1e6


if __name__ == "__main__":
    main()
