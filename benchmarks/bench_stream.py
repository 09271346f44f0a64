"""SICStream from a cube served over HTTP with added latency, against the same from local disk.

    python benchmarks/bench_stream.py [--days 24] [--step 1] [--latency 0.05]
                                      [--prefetch 1 2 4 8] [--repeat 3] [--workdir DIR]
                                      [--write]

Builds (once, cached in --workdir, shared with bench_dataset.py at --step 1) a sample
archive and a cube in sicube's layout (`cube.DEFAULT_CHUNKS`), serves the cube's folder
from a separate process on 127.0.0.1 with --latency seconds added to every request
(`sicube.testing.serve_directory`), and streams one epoch of 8-frame (4 inputs + 4
targets) 256 x 256 patches with `SICStream(batch_size=8)` in a DataLoader with 2 worker
processes, each epoch in a fresh process, reporting samples per second:

- local disk, the default read-ahead, and read-ahead 1;
- HTTP with the latency, read-ahead 1 (one group read after the other: today's serial
  reads) and each --prefetch depth;
- S3: the cube uploaded to moto's S3 server (its own process on 127.0.0.1) read through a
  proxy that adds the same latency to every request (`sicube.testing.delay_proxy`),
  read-ahead 1 and the default (``--no-s3`` skips it).

--step N coarsens the grid N times (quick runs; the patches need 256 x 256 cells, so at
most 9). --write puts the table under "## Remote streaming" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing
import socket
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_dataset import (  # noqa: E402
    BATCH,
    INPUT_LENGTH,
    PATCH,
    PRED_LENGTH,
    START,
    WORKERS,
    Timer,
    make_archive,
    make_cube,
)
from common import command_line, machine, record  # noqa: E402

from sicube.datacube import cube  # noqa: E402

HEADING = "## Remote streaming"  # its section of benchmarks/RESULTS.md


def _serve(root: str, latency: float, urls, stop) -> None:
    """Serve `root` until `stop` is set (in its own process: its own CPU and GIL)."""
    from sicube.testing import serve_directory

    with serve_directory(root, latency=latency) as served:
        urls.put(served.url)
        stop.wait()


def _proxy(target: str, latency: float, urls, stop) -> None:
    """Proxy `target` with `latency` added until `stop` is set (in its own process)."""
    from sicube.testing import delay_proxy

    with delay_proxy(target, latency=latency) as served:
        urls.put(served.url)
        stop.wait()


@contextlib.contextmanager
def s3_copy(store: Path, latency: float, context):
    """The cube uploaded to moto's S3 server (a process on 127.0.0.1), reached through a
    latency proxy (another process): its URL and storage options."""
    import s3fs

    from sicube.testing import wait_for_port

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    urls, stop = context.Queue(), context.Event()
    proxy = context.Process(target=_proxy, args=(f"http://127.0.0.1:{port}", latency, urls,
                                                 stop), daemon=True)
    try:
        wait_for_port(port, server, what="moto server")
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        fs.put(str(store), f"bench/{store.name}", recursive=True)
        proxy.start()
        options["endpoint_url"] = urls.get(timeout=120)
        yield f"s3://bench/{store.name}", options
    finally:
        stop.set()
        if proxy.is_alive():
            proxy.join(10)
        server.terminate()
        server.wait(10)


def epoch(store: str, days: int, prefetch: int,
          storage_options: dict | None = None) -> tuple[float, int]:
    """Seconds for one epoch of SICStream(batch_size=8) with 2 workers, and its items."""
    from torch.utils.data import DataLoader

    from sicube.ml.dataset import SICDataset

    end = START + dt.timedelta(days=days - 1)
    dataset = SICDataset(store, START, end, INPUT_LENGTH, PRED_LENGTH, patch_size=PATCH,
                         allow_unobserved=True, quality_cache=False,
                         allow_incomplete=True,  # made raw, never marked complete
                         storage_options=storage_options)
    loader = DataLoader(dataset.stream(seed=0, batch_size=BATCH, prefetch=prefetch),
                        batch_size=None, num_workers=WORKERS, multiprocessing_context="fork")
    with Timer() as timer:
        count = sum(len(inputs) for inputs, _ in loader)
    assert count == len(dataset), (count, len(dataset))
    return timer.wall, count


def main() -> None:
    from sicube.ml.dataset import DEFAULT_PREFETCH

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=24)
    parser.add_argument("--step", type=int, default=1, help="grid coarsening (quick runs)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--prefetch", type=int, nargs="+", default=[2, 4, 8],
                        help="read-ahead depths to measure over HTTP (1 is always measured)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sicube-bench-dataset"))
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) store")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    # A coarser grid gets its own folder: the cubes are named by days and chunks only.
    workdir = args.workdir if args.step == 1 else args.workdir / f"step{args.step}"
    workdir.mkdir(parents=True, exist_ok=True)
    archive = make_archive(workdir, args.days, args.step)
    store = make_cube(workdir, archive, args.days, dict(cube.DEFAULT_CHUNKS))
    for path in store.rglob("*"):  # warm the page cache: local and served alike
        if path.is_file():
            path.read_bytes()

    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    server = context.Process(target=_serve, args=(str(store.parent), args.latency, urls, stop),
                             daemon=True)
    server.start()
    url = f"{urls.get(timeout=120)}/{store.name}"
    print("serving", url, flush=True)
    depths = sorted({1, *args.prefetch})
    methods = {("local", DEFAULT_PREFETCH): (str(store), None), ("local", 1): (str(store), None)}
    methods.update({("http", d): (url, None) for d in depths})
    runs: dict[tuple[str, int], list[float]] = {key: [] for key in methods}
    items = 0
    with contextlib.ExitStack() as stack:
        stack.callback(server.join, 10)
        stack.callback(stop.set)
        if not args.no_s3:
            s3_url, options = stack.enter_context(s3_copy(store, args.latency, context))
            print("S3 copy", s3_url, "through", options["endpoint_url"], flush=True)
            for depth in (1, DEFAULT_PREFETCH):
                methods[("s3", depth)] = (s3_url, options)
                runs[("s3", depth)] = []
        for _ in range(args.repeat):  # alternate methods; the best run counts
            for key, (where, options) in methods.items():
                # Each epoch in a fresh process, as a training job reads: no file system,
                # connection pool or page of one method left over for the next.
                with ProcessPoolExecutor(1, mp_context=context) as fresh:
                    seconds, items = fresh.submit(epoch, where, args.days, key[1],
                                                  options).result()
                runs[key].append(items / seconds)
            print({f"{k[0]} prefetch {k[1]}": f"{v[-1]:.0f}/s" for k, v in runs.items()},
                  flush=True)
    best = {key: max(v) for key, v in runs.items()}
    report = results(args, best, items, DEFAULT_PREFETCH, store)
    print(report)
    if args.write:
        print(f"recorded in {record(report, HEADING)}")


def results(args, best: dict, items: int, default: int, store: Path) -> str:
    import torch
    import zarr

    # The best local setting: a remote store is compared with the fastest local read-ahead.
    local_key = max((key for key in best if key[0] == "local"), key=best.get)
    local = best[local_key]
    rows = []
    for (where, depth), rate in best.items():
        what = {"local": "local disk",
                "http": f"HTTP, {1000 * args.latency:.0f} ms per request",
                "s3": f"S3 (moto), {1000 * args.latency:.0f} ms per request"}[where]
        note = (" (today's serial reads)" if where != "local" and depth == 1 else
                " (default)" if depth == default else "")
        rows.append(f"| {what} | {depth}{note} | {rate:.0f} | {rate / local:.2f}x |")
    table = "\n".join(rows)
    verdicts = []  # judged at the default read-ahead: what a user gets
    for where in ("http", "s3"):
        if (where, default) in best:
            ratio = best[where, default] / local
            verdicts.append(f"{where.upper()} {ratio:.2f}x, "
                            + ("met" if ratio >= 0.5 else "**missed**"))
    grid = zarr.open_array(str(store / cube.CONC), mode="r")
    command = command_line()
    return f"""{HEADING}

`{command}`

({dt.date.today()}) `SICStream(batch_size={BATCH})` in a DataLoader with {WORKERS} worker
processes (fork), one epoch of {items} items (8-frame windows of {PATCH} x {PATCH} patches)
over a cube of shape {grid.shape} with chunks {grid.chunks}, read from local disk (page
cache warm), over HTTP from a server on 127.0.0.1 in its own process that adds
{1000 * args.latency:.0f} ms to every request (`sicube.testing.serve_directory`), and from
S3: the cube uploaded to moto's S3 server (its own process) behind a proxy (another process)
that adds the same delay (`sicube.testing.delay_proxy`).
"read-ahead" is `SICStream(prefetch=...)`: group reads in flight per worker. Best of
{args.repeat}, runs alternating. "vs local": against the best local setting (read-ahead
{local_key[1]}, {local:.0f} samples/s).

| store | read-ahead | samples/s | vs local |
|---|---:|---:|---:|
{table}

Target: HTTP (and S3) with 50 ms per request >= 0.5x local disk, at the default read-ahead:
{'; '.join(verdicts) or 'not measured'}.

Machine: {machine()}, zarr {zarr.__version__}, torch {torch.__version__}.
"""


if __name__ == "__main__":
    main()
