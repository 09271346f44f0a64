"""SICDataset throughput on a full-resolution cube, against direct Zarr reads and the original way.

    python benchmarks/bench_dataset.py [--days 24] [--items 768] [--workdir DIR] [--write]

Builds (once, cached in --workdir) a full-resolution (3584 x 2432) sample archive, a cube
in sicube's layout from it, and one zlib NetCDF file as the original toolbox wrote. Then
streams 8-frame (4 inputs + 4 targets) 256 x 256 windows with 2 worker processes, each
method over the same items in the same shuffled order, and reports samples per second:

- direct: two plain processes slicing the Zarr array, nothing around it (the ceiling);
- SICDataset in a DataLoader (batch 8, 2 workers, shuffled items);
- SICStream in a DataLoader (same, all items, grouped by chunk);
- the original way: xarray over the NetCDF file, `isel` per item, 2 workers (fewer items:
  it is slow).

--write puts the table under "## Dataset" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sicube import cube  # noqa: E402
from sicube.sample import write_archive  # noqa: E402
from sicube.sources import find_day_files, read_day  # noqa: E402

START = dt.date(2024, 4, 1)
INPUT_LENGTH = PRED_LENGTH = 4
PATCH = 256
WORKERS = 2
BATCH = 8


# ------------------------------------------------------------------------ data


def make_archive(workdir: Path, days: int) -> Path:
    root = workdir / f"archive-{days}"
    if not (root / "done").exists():
        write_archive(root, START, START + dt.timedelta(days=days - 1), step=1,
                      missing_days=[START + dt.timedelta(days=days // 2)], seed=1)
        (root / "done").touch()
    return root


def make_cube(workdir: Path, archive: Path, days: int, chunks: dict) -> Path:
    """A cube in sicube's layout: NaN -> 0 and percent -> fraction (no gap fill needed here)."""
    name = "x".join(str(chunks[k]) for k in ("time", "y", "x"))
    store = workdir / f"cube-{days}-{name}.zarr"
    if (store / "done").exists():
        return store
    files = find_day_files(archive)
    all_days = [START + dt.timedelta(days=i) for i in range(days)]
    first = read_day(files[min(files)])
    grid = first.grid
    ds = cube.template(all_days, grid.x, grid.y, first.epsg or 3411, chunks=chunks)
    ds[cube.OBSERVED].values[:] = [d in files for d in all_days]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(store, mode="w", compute=False)
    import zarr

    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    observed = np.zeros(days, bool)
    nan_days = None
    step = chunks["time"]
    for t0 in range(0, days, step):
        span = all_days[t0:t0 + step]
        raw = np.full((len(span), grid.y.size, grid.x.size), np.nan, np.float32)
        for i, day in enumerate(span):
            if day in files:
                raw[i] = read_day(files[day], grid).z
                observed[t0 + i] = True
        missing = np.isnan(raw)
        nan_days = missing[observed[t0:t0 + len(span)]].sum(0) + (0 if nan_days is None
                                                                   else nan_days)
        group[cube.RAW][t0:t0 + len(span)] = raw
        group[cube.CONC][t0:t0 + len(span)] = np.nan_to_num(raw / 100, nan=0.0)
        group[cube.FLAG][t0:t0 + len(span)] = missing.astype(np.uint8)
    ratio = (nan_days / observed.sum()).astype(np.float32)
    group[cube.NAN_RATIO][:] = ratio
    group[cube.LAND][:] = (ratio >= 0.85).astype(np.uint8)
    group[cube.OBSERVED][:] = observed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))
    (store / "done").touch()
    return store


def make_netcdf(workdir: Path, store: Path, days: int) -> Path:
    """The original's output: one NetCDF file, zlib, written by xarray with its defaults."""
    import xarray as xr

    path = workdir / f"original-{days}.nc"
    if not path.exists():
        ds = xr.open_zarr(store)[[cube.CONC]]
        tmp = path.with_suffix(".tmp")
        ds.to_netcdf(tmp, encoding={cube.CONC: {"zlib": True, "complevel": 4}})
        tmp.rename(path)
    return path


# ------------------------------------------------------------------------ methods


def _direct_part(args) -> int:
    store, items = args
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = zarr.open_group(str(store), mode="r")[cube.CONC]
    for t0, y, x in items:
        array[t0:t0 + INPUT_LENGTH + PRED_LENGTH, y:y + PATCH, x:x + PATCH]
    return len(items)


def run_direct(store: Path, items: list[tuple[int, int, int]]) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        # Interleaved halves, as a DataLoader's workers take alternate batches.
        parts = [(store, items[w::WORKERS]) for w in range(WORKERS)]
        assert sum(pool.map(_direct_part, parts)) == len(items)
    return time.perf_counter() - start


def _drain(loader) -> int:
    count = 0
    for inputs, _targets in loader:
        count += len(inputs)
    return count


def run_dataset(dataset, order: list[int]) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=BATCH, sampler=order, num_workers=WORKERS,
                        multiprocessing_context="fork")
    start = time.perf_counter()
    assert _drain(loader) == len(order)
    return time.perf_counter() - start


def run_stream(dataset) -> tuple[float, int]:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset.stream(seed=0), batch_size=BATCH, num_workers=WORKERS,
                        multiprocessing_context="fork")
    start = time.perf_counter()
    count = _drain(loader)
    return time.perf_counter() - start, count


class OriginalWayDataset:
    """The original toolbox's reading: xarray over the NetCDF file, `isel` per item.

    The file is opened lazily in each worker (the original opened it in __init__, which
    breaks worker processes); everything else is as it was.
    """

    def __init__(self, path: Path, items: list[tuple[int, int, int]]):
        self.path, self.items, self.data = path, items, None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        import torch
        import xarray as xr

        if self.data is None:
            self.data = xr.open_dataset(self.path)[cube.CONC]
        t0, y, x = self.items[index]
        window = self.data.isel(time=slice(t0, t0 + INPUT_LENGTH + PRED_LENGTH),
                                y=slice(y, y + PATCH), x=slice(x, x + PATCH)).values
        frames = torch.from_numpy(window.astype(np.float32)[:, None])
        return frames[:INPUT_LENGTH], frames[INPUT_LENGTH:]


def run_original(path: Path, items: list[tuple[int, int, int]]) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(OriginalWayDataset(path, items), batch_size=BATCH,
                        num_workers=WORKERS, multiprocessing_context="fork")
    start = time.perf_counter()
    assert _drain(loader) == len(items)
    return time.perf_counter() - start


# ------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=24)
    parser.add_argument("--items", type=int, default=768, help="items for direct and dataset")
    parser.add_argument("--original-items", type=int, default=96)
    parser.add_argument("--chunks", default="8,512,512", help="time,y,x chunk of the cube")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sicube-bench-dataset"))
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    chunks = dict(zip(("time", "y", "x"), map(int, args.chunks.split(",")), strict=True))
    args.workdir.mkdir(parents=True, exist_ok=True)

    from sicube.dataset import SICDataset

    t = time.perf_counter()
    archive = make_archive(args.workdir, args.days)
    store = make_cube(args.workdir, archive, args.days, chunks)
    netcdf = make_netcdf(args.workdir, store, args.days)
    print(f"data ready in {time.perf_counter() - t:.0f} s: {store}, {netcdf}")
    # Warm the page cache for every method alike: the benchmark measures reading and
    # decompressing, not the disk.
    for path in [*store.rglob("*"), netcdf]:
        if path.is_file():
            path.read_bytes()

    end = START + dt.timedelta(days=args.days - 1)
    dataset = SICDataset(store, START, end, INPUT_LENGTH, PRED_LENGTH, patch_size=PATCH,
                         allow_unobserved=True, quality_cache=False)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dataset))[:args.items].tolist()
    inputs, _ = dataset.windows
    origins = dataset.patch_origins
    items = []
    for k in order:
        window, patch = divmod(k, len(origins))
        items.append((int(inputs[window, 0]), int(origins[patch, 0]), int(origins[patch, 1])))

    rates: dict[str, list[float]] = {"direct": [], "dataset": [], "stream": [], "original": []}
    for _ in range(2):  # alternate, keep the best of two
        rates["direct"].append(len(items) / run_direct(store, items))
        rates["dataset"].append(len(items) / run_dataset(dataset, order))
        seconds, count = run_stream(dataset)
        rates["stream"].append(count / seconds)
        print({k: round(v[-1], 1) for k, v in rates.items() if v})
    few = items[:args.original_items]
    rates["original"].append(len(few) / run_original(netcdf, few))
    best = {k: max(v) for k, v in rates.items()}

    import xarray as xr

    with xr.open_dataset(netcdf) as nc:
        nc_chunks = nc[cube.CONC].encoding.get("chunksizes")
    report = results(args, chunks, best, len(items), count, len(few), nc_chunks)
    print(report)
    if args.write:
        write_results(report)


def results(args, chunks, best, n_items, n_stream, n_original, nc_chunks) -> str:
    import torch
    import zarr

    direct = best["direct"]
    rows = [
        ("direct Zarr slicing, 2 plain processes (ceiling)", best["direct"], n_items),
        ("`SICDataset` + DataLoader, shuffled items", best["dataset"], n_items),
        ("`SICStream` + DataLoader, grouped by chunk, all items", best["stream"], n_stream),
        ("original way: xarray `isel` on one zlib NetCDF", best["original"], n_original),
    ]
    table = "\n".join(f"| {name} | {n} | {rate:.1f} | {rate / direct:.2f}x | "
                      f"{rate / best['original']:.1f}x |" for name, rate, n in rows)
    chunk_text = " x ".join(str(chunks[k]) for k in ("time", "y", "x"))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"""## Dataset

`python benchmarks/bench_dataset.py --write` ({dt.date.today()}): a full-resolution cube
(3584 x 2432, {args.days} days, one missing) in sicube's layout, chunks {chunk_text}
(time x y x, `cube.DEFAULT_CHUNKS`; zarr's default zstd codec), and the same
`sea_ice_conc` as one zlib NetCDF file (level 4, netCDF chunks {nc_chunks}) as the
original wrote it. Items: 8-frame windows (4 inputs + 4 targets) of 256 x 256 patches
tiling the grid, shuffled; batches of {BATCH}; {WORKERS} worker processes (fork); page
cache warm for all; best of two runs (the original way: one run, fewer items).

| method | items | samples/s | vs direct | vs original |
|---|---:|---:|---:|---:|
{table}

Targets: `SICDataset` >= 0.8x direct, >= 5x the original way. Shuffled single items
decompress every chunk they touch (an 8-frame window spans two 8-day chunks); `SICStream`
decompresses each chunk about once per epoch and cuts all its windows from memory,
which is why it beats per-item slicing.

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,
{memory:.0f} GiB; Python {platform.python_version()}, zarr {zarr.__version__},
torch {torch.__version__}.
"""


def write_results(section: str) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"## Dataset\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(section.rstrip("\n") + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
