"""Benchmark: concurrent `sicube.download` vs the original toolbox's one-file-at-a-time loop.

Run:  python benchmarks/bench_download.py [--days 60] [--latency 0.2] [--concurrency 16]

Serves a generated archive (60 days, grid coarsened 8x: 448 x 304 cells, ~0.1 MB per
file, so the comparison measures request latency, not bandwidth) from the loopback mirror
in a separate process with `latency` seconds added to every request, then downloads it
twice into fresh folders:

- sequential: the original `download.py`'s way, one blocking GET at a time written
  straight to the final file (`urllib.request`, standing in for `requests`);
- sicube: `sicube.download(concurrency=N)`, which also validates every file and hashes it.

Both outputs are checked byte-identical to the server's files. The ratio is printed and
written to `benchmarks/RESULTS.md` under ``## Download`` with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import machine, record  # noqa: E402

from sicube.archive import products  # noqa: E402
from sicube.archive.download import download  # noqa: E402
from sicube.archive.synthetic import write_archive  # noqa: E402
from sicube.dates import day_range, parse_span  # noqa: E402

START = "20240101"
STEP = 8


def sequential_download(start: str, end: str, out: Path, base_url: str) -> None:
    """The original toolbox's loop: one blocking GET per day, written in place."""
    for day in day_range(*parse_span(start, end)):
        target = out / products.relative_path(day)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(products.file_url(base_url, day), timeout=60) as r:
                target.write_bytes(r.read())
        except urllib.error.HTTPError as err:
            print(f"  {day}: HTTP {err.code}, skipped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sicube-bench-") as tmp:
        tmp = Path(tmp)
        first = parse_span(START, START)[0]
        end = f"{first + dt.timedelta(days=args.days - 1):%Y%m%d}"
        archive = write_archive(tmp / "server", START, end, step=STEP, missing_days=[],
                                progress=False)
        sizes = [p.stat().st_size for p in archive.files.values()]
        print(f"archive: {len(sizes)} files, {archive.shape[0]} x {archive.shape[1]} cells, "
              f"{sum(sizes) / len(sizes) / 1e6:.2f} MB per file")

        # the mirror runs in its own process so that it does not share the client's GIL
        server = subprocess.Popen(
            [sys.executable, "-m", "sicube", "mirror", "--root", str(archive.root), "--port",
             "0", "--latency", str(args.latency)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            base_url = server.stdout.readline().strip()
            began = time.perf_counter()
            sequential_download(START, end, tmp / "sequential", base_url)
            sequential = time.perf_counter() - began

            began = time.perf_counter()
            report = download(START, end, tmp / "sicube", base_url=base_url,
                              concurrency=args.concurrency, progress=False)
            concurrent = time.perf_counter() - began
        finally:
            server.terminate()
            server.wait(timeout=10)

        assert len(report.ok) == args.days and not report.failed, report.summary()
        for day, source in archive.files.items():
            for folder in ("sequential", "sicube"):
                copy = tmp / folder / products.relative_path(day)
                assert copy.read_bytes() == source.read_bytes(), copy

    ratio = sequential / concurrent
    print(f"sequential (original way): {sequential:.2f} s")
    print(f"sicube, concurrency {args.concurrency}: {concurrent:.2f} s (validated, hashed)")
    print(f"speed-up: {ratio:.1f}x")
    if args.no_record:
        return
    section = (
        "## Download\n\n"
        f"`python benchmarks/bench_download.py` ({time.strftime('%Y-%m-%d')}): "
        f"{args.days} daily files of the sample archive (grid coarsened {STEP}x, "
        f"{archive.shape[0]} x {archive.shape[1]} cells, ~{sum(sizes) / len(sizes) / 1e6:.2f} MB "
        f"each) from the loopback mirror (own process) with {args.latency * 1000:.0f} ms "
        "added to every request.\n\n"
        "| client | time (s) | speed-up |\n|---|---:|---:|\n"
        f"| sequential, one blocking GET at a time (the original download.py) | "
        f"{sequential:.2f} | 1.0x |\n"
        f"| `sicube.download`, concurrency {args.concurrency} (validates + hashes each file) | "
        f"{concurrent:.2f} | {ratio:.1f}x |\n\n"
        f"With {args.concurrency} requests in flight, {args.days} requests need "
        f"{-(-args.days // args.concurrency)} rounds of {args.latency:g} s: the latency bound "
        f"is {-(-args.days // args.concurrency) * args.latency:.2f} s. The rest is the full "
        "validation of every file (netCDF reads are serialised: HDF5 is not thread-safe), "
        "hashing, fsync and first-use imports.\n\n"
        f"Machine: {machine()}.\n"
    )
    print(f"recorded in {record(section, '## Download')}")


if __name__ == "__main__":
    main()
