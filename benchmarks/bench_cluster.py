"""Benchmark: the build on a Dask `LocalCluster` (worker processes) vs the threaded build.

Run:  python benchmarks/bench_cluster.py [--days 30] [--workers 2] [--threads 1] [--step 1]
                                         [--repeat 3] [--write]
Quick check (reduced grid, seconds):  python benchmarks/bench_cluster.py --days 8 --step 8

Serves the sample archive (``--step 1``: the full-resolution archive of `bench_build`, written
once to ``benchmarks/_work/archive`` and reused; a larger step: a coarser archive of the same
days in ``benchmarks/_work/archive-step{N}``) from the loopback mirror in its own process, then
builds the first N days into fresh stores and download folders, threaded (this process, the
default scheduler) and on a fresh `LocalCluster` of ``--workers`` processes x ``--threads``
threads (each time chunk one ingest task that downloads its own days), ``--repeat`` times
each, interleaved, which goes first alternating. It reports every run, the best run of each
with its stages, the per-task costs of the best cluster run (from distributed's task stream:
ingest task, fill task, the fill's loads), the fill tasks in flight per window, and a
written estimate, from those costs, of a decade's build on 64 workers and where it stops
scaling (scheduler tasks/s, store requests/s, network). ``--write`` records the section under
``## Cluster`` in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_build import ENV, FIRST, MISSING, WORK, ensure_archive  # noqa: E402
from common import command_line, machine, record, sample_archive  # noqa: E402

DECADE_DAYS = 3653
# Assumptions of the estimate (stated in the output; override on the command line):
SCHEDULER_TASKS_PER_S = 3000  # distributed's scheduler: ~0.3 ms of its time per task
STORE_PUTS_PER_S = 3500  # S3: PUTs per second per prefix (GETs: 5500)
SOURCE_MB_PER_S = 100  # what the source server (Bremen) delivers to all workers together


def archive(step: int, days: int) -> Path:
    """The sample archive at `step` (1: bench_build's full-resolution one)."""
    if step == 1:
        return ensure_archive()
    return sample_archive(WORK / f"archive-step{step}", FIRST, FIRST + dt.timedelta(days - 1),
                          step=step, seed=0, missing_days=MISSING)


def warm() -> None:
    """Compile (or load from numba's cache) the fill's kernel."""
    from sicube.kernels.fill import gaussian_fill

    small = np.full((4, 32, 32), np.nan, np.float32)
    small[:, ::3, ::3] = 50.0
    gaussian_fill(small)


def timed_build(days: int, base_url: str, tmp: Path, name: str, **kwargs):
    from sicube.pipeline.build import build

    store = tmp / f"{name}.zarr"
    began = time.perf_counter()
    summary = build(FIRST, FIRST + dt.timedelta(days - 1), store, base_url=base_url,
                    raw_dir=tmp / f"raw-{name}", progress=False, **kwargs)
    return time.perf_counter() - began, summary, store


def cluster_build(args, base_url: str, tmp: Path, name: str):
    """The build on a fresh LocalCluster: seconds, summary, store and distributed's task stream
    (the cluster's start and the workers' warm-up are not timed)."""
    import distributed

    with distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=args.threads, processes=True,
            local_directory=str(tmp / "workers"), dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        client.run(warm)  # each worker imports sicube and loads the kernel first
        with distributed.get_task_stream(client) as ts:
            seconds, summary, store = timed_build(args.days, base_url, tmp, name,
                                                  scheduler=client)
        return seconds, summary, store, ts.data


def zarr_raw(store: Path) -> SimpleNamespace:
    """The shape and chunks of a built cube's raw field."""
    import zarr

    raw = zarr.open_group(str(store), mode="r")["sea_ice_conc_raw"]
    return SimpleNamespace(shape=raw.shape, chunks=raw.chunks)


def task_costs(stream: list[dict]) -> dict[str, list[float]]:
    """Compute seconds per task, by task name (`distributed.utils.key_split`)."""
    from distributed.utils import key_split

    costs: dict[str, list[float]] = {}
    for task in stream:
        seconds = sum(s["stop"] - s["start"] for s in task["startstops"]
                      if s["action"] == "compute")
        costs.setdefault(key_split(task["key"]), []).append(seconds)
    return costs


def estimate(ingest_s: float, fill_s: float, spatial: int, chunk_t: int, tasks_per_batch: int,
             file_mb: float, workers: int = 64) -> list[str]:
    """A decade on `workers` single-thread workers, from the measured per-task costs."""
    from sicube.pipeline.plan import FILL_BATCH_CHUNKS

    ingest_tasks = math.ceil(DECADE_DAYS / chunk_t)
    batches = math.ceil(ingest_tasks / FILL_BATCH_CHUNKS)
    fill_tasks = batches * spatial
    all_fill = batches * tasks_per_batch  # loads and halo pieces too
    ingest_s, fill_s = max(ingest_s, 1e-3), max(fill_s, 1e-3)
    ingest_wall = math.ceil(ingest_tasks / workers) * ingest_s
    fill_wall = math.ceil(fill_tasks / workers) * fill_s
    download_wall = DECADE_DAYS * file_mb / SOURCE_MB_PER_S
    # Requests: an ingest task PUTs its time chunk's spatial chunks; a fill task PUTs its two
    # outputs' chunks for the batch's time chunks (its raw GETs are ~as many again).
    ingest_puts_per_s = workers * spatial / ingest_s
    fill_puts_per_s = workers * 2 * FILL_BATCH_CHUNKS / fill_s
    lines = [
        f"A decade ({DECADE_DAYS} days) at this grid: {ingest_tasks} ingest tasks, {batches} fill "
        f"batches of {spatial} fill tasks ({fill_tasks} fill tasks, {all_fill} tasks with the "
        "loads and halo pieces).",
        f"On {workers} workers x 1 thread: ingest ~{ingest_wall / 60:.1f} min "
        f"({math.ceil(ingest_tasks / workers)} rounds of {ingest_s:.1f} s), fill "
        f"~{fill_wall / 60:.1f} min ({math.ceil(fill_tasks / workers)} rounds of {fill_s:.2f} s), "
        f"if nothing else limits.",
        f"- Network: the downloads are {DECADE_DAYS * file_mb / 1e3:.0f} GB; at "
        f"{SOURCE_MB_PER_S} MB/s from the source server they take {download_wall / 60:.1f} min: "
        + ("the source, not the workers, sets the ingest's pace at 64 workers."
           if download_wall > ingest_wall else "below the workers' ingest time."),
        f"- Scheduler: {workers} workers finish ~{workers / fill_s:.0f} fill tasks/s "
        f"(~{workers / fill_s * all_fill / max(1, fill_tasks):.0f} tasks/s with loads and "
        f"halos) against ~{SCHEDULER_TASKS_PER_S} tasks/s the scheduler handles; it stops "
        f"scaling near {SCHEDULER_TASKS_PER_S * fill_s * fill_tasks / max(1, all_fill):.0f} "
        "workers on the fill.",
        f"- Store: ingest PUTs ~{ingest_puts_per_s:.0f}/s, fill ~{fill_puts_per_s:.0f}/s against "
        f"~{STORE_PUTS_PER_S}/s per S3 prefix: the store limits near "
        f"{STORE_PUTS_PER_S * min(ingest_s / spatial, fill_s / (2 * FILL_BATCH_CHUNKS)):.0f} "
        "workers (a local disk or a parallel file system: far higher).",
        f"- The fill cannot use more workers than tasks: at most {fill_tasks} at once, but a "
        f"window holds {math.ceil(2 * workers / spatial)} batches (2 tasks per thread).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--step", type=int, default=1,
                        help="grid step of the sample archive (1: full resolution)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each build, interleaved; the best run of each counts")
    parser.add_argument("--write", action="store_true", help="record into RESULTS.md")
    args = parser.parse_args()
    if (not 1 <= args.days <= 120 or args.workers < 1 or args.threads < 1 or args.step < 1
            or args.repeat < 1):
        parser.error("need 1 <= --days <= 120, and positive --workers, --threads, --step, "
                     "--repeat")

    root = archive(args.step, args.days)
    files = sorted(root.rglob("*.nc"))[:args.days]
    file_mb = statistics.mean(f.stat().st_size for f in files) / 1e6
    warm()
    import sicube.pipeline.build  # noqa: F401  (imported before any timed build, not in one)

    load_before = os.getloadavg()
    WORK.mkdir(parents=True, exist_ok=True)
    local_runs: list[tuple[float, object]] = []
    cluster_runs: list[tuple[float, object, list]] = []
    with tempfile.TemporaryDirectory(prefix="sicube-bench-cluster-", dir=WORK) as tmp:
        tmp = Path(tmp)
        server = subprocess.Popen(
            [sys.executable, "-m", "sicube", "mirror", "--root", str(root), "--port", "0"],
            stdout=subprocess.PIPE, text=True, env=ENV)
        try:
            base_url = server.stdout.readline().strip()
            print(f"mirror: {base_url}", flush=True)
            for repeat in range(args.repeat):
                # Both builds once per round, which goes first alternating: a drift of the
                # machine hits both alike. Each cluster run gets a fresh cluster (its start is
                # not timed), so no idle worker process sits beside a threaded run.
                for kind in ("threads", "cluster") if repeat % 2 == 0 else ("cluster", "threads"):
                    name = f"{kind}-{repeat}"
                    if kind == "threads":
                        seconds, summary, store = timed_build(args.days, base_url, tmp, name)
                        local_runs.append((seconds, summary))
                    else:
                        seconds, summary, store, stream = cluster_build(args, base_url, tmp, name)
                        cluster_runs.append((seconds, summary, stream))
                    print(f"{kind} (round {repeat + 1}): {seconds:.1f} s ({_stages(summary)})",
                          flush=True)
                    raw = zarr_raw(store)
                    shutil.rmtree(store)
                    shutil.rmtree(tmp / f"raw-{name}", ignore_errors=True)  # workers: own
        finally:
            server.terminate()
            server.wait(timeout=10)
        chunk_t, ys, xs = raw.chunks
        spatial = math.ceil(raw.shape[1] / ys) * math.ceil(raw.shape[2] / xs)
    load_after = os.getloadavg()
    local_s, local = min(local_runs, key=lambda run: run[0])
    cluster_s, summary, stream = min(cluster_runs, key=lambda run: run[0])
    costs = task_costs(stream)
    walls = ([seconds for seconds, _ in local_runs], [run[0] for run in cluster_runs])
    section = report(args, walls, local, cluster_s, summary, costs, spatial, chunk_t,
                     file_mb, raw.shape, load_before, load_after)
    print("\n" + section)
    if args.write:
        print(f"recorded in {record(section, '## Cluster')}")


def _runs(seconds: list[float]) -> str:
    return ", ".join(f"{s:.1f}" for s in seconds)


def _stages(summary) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in summary.seconds.items())


def report(args, walls, local, cluster_s, summary, costs, spatial, chunk_t, file_mb, shape,
           load_before, load_after) -> str:
    """The ``## Cluster`` section: the best run of each build (`walls`: every run's seconds,
    threaded and cluster), stages and task costs from the best runs."""
    def cost(name: str) -> tuple[int, float, float]:
        values = costs.get(name, [0.0])
        return len(costs.get(name, [])), statistics.mean(values), max(values)

    # the fill's tasks: `fill-batch-...` since each reads its own haloed window (before:
    # `_fill_store_block` inside a map_overlap graph)
    fill_name = next((k for k in costs if k.startswith("fill-batch") or "fill_store_block" in k),
                     "fill-batch")
    ingest = cost("sicube-ingest")
    fill = cost(fill_name)
    tasks_per_batch = round(sum(len(v) for k, v in costs.items() if k != "sicube-ingest")
                            / max(1, math.ceil(shape[0] / chunk_t / 2)))
    lines = [
        "## Cluster\n",
        f"`{command_line()}` ({time.strftime('%Y-%m-%d')}): "
        f"{args.days} days of the sample archive ({shape[1]} x {shape[2]} cells, "
        f"~{file_mb:.1f} MB per file) from the loopback mirror in its own process; fresh "
        f"stores and download folders. Each build ran {args.repeat} time(s), interleaved "
        "(which goes first alternates from round to round; each cluster run on a fresh "
        "cluster, its start untimed); **the best run of each is shown**, its stages and task "
        "costs from that run.\n",
        "| build | runs (s) | best wall (s) | stages of the best run |",
        "|---|---|---:|---|",
        f"| threaded (this process) | {_runs(walls[0])} | {min(walls[0]):.1f} | "
        f"{_stages(local)} |",
        f"| LocalCluster {args.workers} workers x {args.threads} thread | {_runs(walls[1])} | "
        f"{cluster_s:.1f} | {_stages(summary)} |",
        "",
        f"Best cluster run / best threaded run: **{cluster_s / min(walls[0]):.2f}x** (on one "
        "machine the worker processes add their start-up and the transfers; the point is the "
        "estimate below).",
        "",
        "| task on the cluster | count | mean s | max s |",
        "|---|---:|---:|---:|",
        f"| ingest (fetch {chunk_t} days, decode, write the time chunk) | {ingest[0]} | "
        f"{ingest[1]:.2f} | {ingest[2]:.2f} |",
        f"| fill (one spatial chunk of a batch) | {fill[0]} | {fill[1]:.2f} | {fill[2]:.2f} |",
    ]
    for name, values in sorted(costs.items()):
        if name not in ("sicube-ingest", fill_name):
            lines.append(f"| {name} | {len(values)} | {statistics.mean(values):.3f} | "
                         f"{max(values):.3f} |")
    lines += [
        "",
        f"Fill tasks in flight per window: {summary.fill_in_flight} ({spatial} per batch, "
        f"{args.workers * args.threads} threads, 2 tasks per thread).\n",
        *estimate(ingest[1], fill[1], spatial, chunk_t, tasks_per_batch, file_mb),
        "",
        f"Machine: {machine()}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
