"""Benchmark: `sicube.download` vs the original toolbox's one-file-at-a-time loop, both layouts.

Run:  python benchmarks/bench_download.py [--days 60] [--latency 0.2] [--repeats 3]

Writes 60 days of the sample archive (grid coarsened 8x: 448 x 304 cells, ~0.13 MB per file,
so the comparison measures request latency, not bandwidth) twice with netCDF4: in the real
archive's layout (the grid mapping with GDAL's WKT) and with the grid mapping as CF
attributes alone (no WKT: the reader identifies the CRS from the parameters). A plain
static HTTP server (`http.server`, in its own process) serves both, `latency` seconds added
to every GET; HEAD answers 405. Then, in this process with the imports warm, for each
layout and `repeats` times, interleaved:

- urllib: the original `download.py`'s way, one blocking GET at a time written straight to
  the final file (`urllib.request`, standing in for `requests`);
- sicube: `sicube.download` with its default settings, which also validates every file
  (a full decode), hashes it, fsyncs it and renames it into place. The CRS parse cache is
  emptied before each run, so each run pays its one parse per layout.

Best of `repeats` for both. Every output is checked byte-identical to the server's files.
The ratios and the latency bound are printed and written to `benchmarks/RESULTS.md` under
``## Download`` with the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import machine, record  # noqa: E402

from sicube.archive import products  # noqa: E402
from sicube.archive.download import download  # noqa: E402
from sicube.archive.synthetic import write_archive  # noqa: E402
from sicube.dates import day_range, parse_span  # noqa: E402
from sicube.params import DownloadOptions  # noqa: E402

START = "20240101"
STEP = 8
LAYOUTS = {"gdal": "GDAL WKT (the real archive's)", "cf": "CF attributes alone"}


class _SlowStaticHandler(http.server.SimpleHTTPRequestHandler):
    """A plain static server's answers, `latency` seconds late; no HEAD (405)."""

    latency = 0.0

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        time.sleep(self.latency)
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        time.sleep(self.latency)
        self.send_error(405, "Method Not Allowed")

    def log_message(self, *args) -> None:
        pass


def serve(root: str, latency: float) -> None:
    """Serve `root` on a free port of 127.0.0.1; print the URL, then serve until killed."""
    _SlowStaticHandler.latency = latency
    handler = partial(_SlowStaticHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


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


def _sicube(start: str, end: str, out: Path, base_url: str) -> None:
    products.forget_parsed_crs()  # each run parses its layout's CRS once, as a new process
    report = download(start, end, out, base_url=base_url, progress=False)
    assert not report.failed and not report.missing, report.summary()


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--serve", metavar="ROOT", help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.latency)
        return

    concurrency = DownloadOptions.concurrency
    with tempfile.TemporaryDirectory(prefix="sicube-bench-") as tmp:
        tmp = Path(tmp)
        first = parse_span(START, START)[0]
        end = f"{first + dt.timedelta(days=args.days - 1):%Y%m%d}"
        archives = {layout: write_archive(tmp / "server" / layout / "n3125" / "netcdf", START,
                                          end, step=STEP, missing_days=[], grid_mapping=layout)
                    for layout in LAYOUTS}
        sizes = [p.stat().st_size for a in archives.values() for p in a.files.values()]
        shape = archives["gdal"].shape
        print(f"archives: {args.days} files per layout, {shape[0]} x {shape[1]} cells, "
              f"{sum(sizes) / len(sizes) / 1e6:.2f} MB per file")

        # the server runs in its own process so that it does not share the client's GIL
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(tmp / "server"), "--latency",
             str(args.latency)], stdout=subprocess.PIPE, text=True)
        times: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}  # this process's CPU seconds, all threads
        loads = [_load()]
        try:
            url = server.stdout.readline().strip()
            bases = {layout: f"{url}/{layout}/n3125/netcdf" for layout in LAYOUTS}
            for layout, base in bases.items():  # warm: imports, sessions, numba
                download(START, START, tmp / "warm" / layout, base_url=base, progress=False)
            runs = 0
            for repeat in range(args.repeats):
                for layout, base in bases.items():
                    clients = [("urllib", sequential_download), ("sicube", _sicube)]
                    for name, client in clients[::-1] if repeat % 2 else clients:
                        out = tmp / "out" / f"{runs}"
                        runs += 1
                        began, cpu = time.perf_counter(), time.process_time()
                        client(START, end, out, base)
                        times.setdefault((layout, name), []).append(time.perf_counter() - began)
                        cpus.setdefault((layout, name), []).append(time.process_time() - cpu)
                        for day, source in archives[layout].files.items():
                            copy = out / products.relative_path(day)
                            assert copy.read_bytes() == source.read_bytes(), copy
                        shutil.rmtree(out)
                loads.append(_load())
        finally:
            server.terminate()
            server.wait(timeout=10)

    rounds = math.ceil(args.days / concurrency)
    bound = rounds * args.latency
    rows = []
    for layout, title in LAYOUTS.items():
        loop, ours = min(times[layout, "urllib"]), min(times[layout, "sicube"])
        best = times[layout, "sicube"].index(ours)
        cpu = cpus[layout, "sicube"][best]  # of the best run
        rows.append((title, loop, ours, loop / ours, loop / bound, cpu))
        print(f"{title}: urllib {loop:.2f} s (runs {_runs(times[layout, 'urllib'])}), "
              f"sicube {ours:.2f} s (runs {_runs(times[layout, 'sicube'])}; CPU "
              f"{_runs(cpus[layout, 'sicube'])}): {loop / ours:.1f}x; the latency bound "
              f"{bound:.2f} s would be {loop / bound:.1f}x")
    print("; ".join(loads))
    if args.no_record:
        return
    table = "".join(f"| {title} | {loop:.2f} | {ours:.2f} | **{ratio:.1f}x** | {limit:.1f}x | "
                    f"{cpu:.2f} |\n" for title, loop, ours, ratio, limit, cpu in rows)
    section = (
        "## Download\n\n"
        f"`python benchmarks/bench_download.py --repeats {args.repeats}` "
        f"({time.strftime('%Y-%m-%d')}): {args.days} daily files of the sample archive per "
        f"layout (grid coarsened {STEP}x, {shape[0]} x {shape[1]} cells, "
        f"~{sum(sizes) / len(sizes) / 1e6:.2f} MB each, written by netCDF4) from a plain "
        f"static HTTP server (`http.server`, own process; HEAD answers 405) with "
        f"{args.latency * 1000:.0f} ms added to every request. In one process with the "
        f"imports warm; urllib and sicube interleaved, best of {args.repeats} each; sicube with "
        f"its default settings (concurrency {concurrency}; validates, hashes, fsyncs each "
        "file; the CRS parse cache emptied before each run).\n\n"
        "| grid mapping | urllib loop (s) | `sicube.download` (s) | speed-up | at the latency "
        "bound | sicube's CPU (s) |\n|---|---:|---:|---:|---:|---:|\n" + table + "\n"
        f"The latency bound: {args.days} requests, {concurrency} in flight, "
        f"{args.latency:g} s each: {rounds} rounds, {bound:.2f} s. sicube's CPU is the "
        "seconds this process spent in all its threads during its best run (HTTP, hashing, "
        "the full decode of each file, the CRS parse): what its per-file work costs. On a "
        "machine with a free core whenever the download is ready to run, the wall is about "
        "the latency bound plus the last files' validation; the wall above that is time spent "
        "waiting for a core, in this process and in the server's.\n\n"
        f"Machine: {machine()}; {loads[0]} before, {loads[-1]} after (a shared machine).\n"
    )
    print(f"recorded in {record(section, '## Download')}")


def _runs(seconds: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in seconds)


if __name__ == "__main__":
    main()
