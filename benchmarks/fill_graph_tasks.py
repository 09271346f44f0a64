"""How many Dask tasks the builder's fill makes for a decade at full resolution, built
without running (issue 22 item 4: at most 30,000).

Run:  python benchmarks/fill_graph_tasks.py [--days 3653] [--no-record]

A decade (3,653 days) of the n3125 grid (3584 x 2432 cells) with the default chunks and fill
parameters: every fill batch's job (`sicube.pipeline.fill_stage.fill_job`) is made against
an empty store (metadata only, nothing computed) and its graph's tasks counted, plus the one
task per batch that makes its `FillBatchResult`. Beside it, the same fill as a halo exchange:
the store's raw array as one Dask array through `sicube.gaussian_fill`'s ``map_overlap`` path
(what a Dask array's fill is), its fraction and flags stored into the cube's arrays
(`dask.array.store`). The "per batch" column divides both by the builder's batches. Writes
``## Fill graph of a decade`` in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import machine, record  # noqa: E402

from sicube.archive import products  # noqa: E402
from sicube.datacube import cube  # noqa: E402
from sicube.datacube.store import open_group_for_writing  # noqa: E402
from sicube.params import FillParams  # noqa: E402
from sicube.pipeline.fill_stage import fill_job, fill_layout  # noqa: E402
from sicube.pipeline.plan import fill_batches  # noqa: E402

HEADING = "## Fill graph of a decade"
DECADE = 3653  # days: the span of the target


def halo_exchange_tasks(group, params: FillParams) -> int:
    """Tasks of the whole span's fill through `gaussian_fill`'s map_overlap path (the cube's
    raw array as one Dask array, as a user of the function would fill it), its fraction and
    flags stored into the cube's arrays."""
    import dask.array as da

    from sicube.kernels.fill import gaussian_fill

    raw, land = da.from_zarr(group[cube.RAW]), da.from_zarr(group[cube.LAND])
    fraction, flags = gaussian_fill(raw, **params.to_dict(), land_mask=land, return_flags=True)
    stored = da.store([fraction, flags], [group[cube.CONC], group[cube.FLAG]], compute=False,
                      lock=False)
    # one lazy array per output: their graphs share the reads and the fill
    return len(set().union(*(part.__dask_graph__().keys() for part in stored)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=DECADE, help="days of the cube")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    grid = products.GRIDS["n3125"]
    days = [dt.date(2014, 1, 1) + dt.timedelta(days=i) for i in range(args.days)]
    params = FillParams()
    counted = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/decade.zarr"
        ds = cube.template(days, grid.x(), grid.y(), grid.crs)
        ds.to_zarr(path, mode="w", compute=False, zarr_format=3)  # the metadata only
        group = open_group_for_writing(path)
        raw = group[cube.RAW]
        layout = fill_layout(raw, params.space_window)
        cells = np.ones(raw.shape[1:])  # in memory, as a threaded build holds them
        drop = np.zeros(len(days), bool)
        batches = fill_batches(raw.shape[0], raw.chunks[0], params.time_window)
        for name in ("halo", "own windows"):
            began, tasks = time.perf_counter(), 0
            if name == "halo":
                tasks = halo_exchange_tasks(group, params)
            for batch in batches if name != "halo" else ():
                job = fill_job(group, batch, params, layout, cells, drop)
                tasks += len(job.blocks.__dask_graph__()) + 1  # + the batch's result
            counted[name] = (tasks, time.perf_counter() - began)
            print(f"{name:12s} {tasks:9,} tasks ({tasks / len(batches):.0f} per batch), "
                  f"graphs made in {counted[name][1]:.1f} s", flush=True)
    own = counted["own windows"][0]
    verdict = ("met" if own <= 30_000 else "**missed**") if args.days == DECADE else \
        f"not judged: {args.days:,} days are not a decade"
    lines = [
        HEADING, "",
        f"`python benchmarks/fill_graph_tasks.py --days {args.days}`: the fill of {args.days:,} "
        f"days at full resolution ({raw.shape[1]} x {raw.shape[2]} cells, chunks "
        f"{' x '.join(map(str, raw.chunks))}, default fill parameters: {len(batches)} batches "
        f"of {job.tasks} spatial chunks), made against an empty store and counted without "
        "running. The count does not depend on the machine's load.", "",
        "| fill graph | tasks | per batch | graphs made in |",
        "|---|---:|---:|---:|",
        *(f"| {label} | {counted[name][0]:,} | {counted[name][0] / len(batches):.0f} | "
          f"{counted[name][1]:.1f} s |"
          for name, label in (("halo", "halo exchange: `gaussian_fill`'s `map_overlap` path "
                                       "on the whole span's raw array, stored "
                                       "(`dask.array.store`)"),
                              ("own windows", "the builder's: each task reads its own haloed "
                                              "window from the store (`fill_stage.fill_job`)"))),
        "",
        f"Target (issue 22 item 4): <= 30,000 tasks for a decade ({DECADE:,} days): {own:,}, "
        f"{verdict}. The "
        "cubes are the same bytes either way (tests/test_build.py, test_cluster.py, "
        "test_executors.py).", "",
        f"Machine: {machine()}.",
    ]
    print("\n".join(lines))
    if not args.no_record:
        print(f"recorded in {record(chr(10).join(lines), HEADING)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
