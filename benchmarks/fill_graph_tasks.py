"""How many Dask tasks the builder's fill makes for a decade at full resolution, built
without running (issue 22 item 4: at most 30,000).

A decade (3,653 days) of the n3125 grid (3584 x 2432 cells) with the default chunks and fill
parameters: every fill batch's job (`sicube.pipeline.fill_stage.fill_job`) is made against
an empty store (metadata only, nothing computed) and its graph's tasks counted, plus the one
task per batch that makes its `FillBatchResult`.

    python benchmarks/fill_graph_tasks.py
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time

import numpy as np

from sicube.archive import products
from sicube.datacube import cube
from sicube.datacube.store import open_group_for_writing
from sicube.params import FillParams
from sicube.pipeline.fill_stage import fill_job, fill_layout
from sicube.pipeline.plan import fill_batches

DAYS = 3653


def main() -> None:
    grid = products.GRIDS["n3125"]
    days = [dt.date(2014, 1, 1) + dt.timedelta(days=i) for i in range(DAYS)]
    params = FillParams()
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
        began = time.perf_counter()
        tasks = 0
        for batch in batches:
            job = fill_job(group, batch, params, layout, cells, drop)
            tasks += len(job.blocks.__dask_graph__()) + 1  # + the batch's result
        seconds = time.perf_counter() - began
    print(f"{DAYS} days, grid {raw.shape[1]} x {raw.shape[2]}, chunks {raw.chunks}: "
          f"{len(batches)} fill batches, {job.tasks} fill tasks each; "
          f"{tasks:,} tasks in all ({tasks / len(batches):.0f} per batch), "
          f"graphs made in {seconds:.1f} s")


if __name__ == "__main__":
    main()
