"""SICDataset throughput on a full-resolution cube, against direct Zarr reads and the original way.

    python benchmarks/bench_dataset.py [--days 24] [--items 768] [--chunks 8,512,512 ...]
                                       [--workdir DIR] [--write]

Builds (once, cached in --workdir) a full-resolution (3584 x 2432) sample archive, a cube
in sicube's layout from it, and one zlib NetCDF file as the original toolbox wrote. Then
streams 8-frame (4 inputs + 4 targets) 256 x 256 windows with 2 worker processes, each
method over the same items in the same shuffled order, and reports samples per second:

- direct: two plain processes slicing the Zarr array, nothing around it (the ceiling);
- SICDataset in a DataLoader (batch 8, 2 workers, shuffled items);
- SICDataset.loader (the same batches, read in place into shared memory);
- SICStream in a DataLoader (same, all items, grouped by chunk), and stacking its own
  batches in shared memory;
- the original way: xarray over the NetCDF file, `isel` per item, 2 workers (fewer items:
  it is slow).

--write puts the table under "## Dataset" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import command_line, machine, record, sample_archive  # noqa: E402

from sicube.archive.sources import find_day_files, read_day  # noqa: E402
from sicube.datacube import cube  # noqa: E402

START = dt.date(2024, 4, 1)
INPUT_LENGTH = PRED_LENGTH = 4
PATCH = 256
WORKERS = 2
BATCH = 8
HEADING = "## Dataset"  # its section of benchmarks/RESULTS.md


# ------------------------------------------------------------------------ data


def make_archive(workdir: Path, days: int, step: int = 1) -> Path:
    """The full-resolution archive of `days` days (or one on a grid coarsened `step` times, in
    its own folder), the middle day missing, written once."""
    root = workdir / (f"archive-{days}" if step == 1 else f"archive-{days}-step{step}")
    return sample_archive(root, START, START + dt.timedelta(days=days - 1), step=step, seed=1,
                          missing_days=[START + dt.timedelta(days=days // 2)])


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


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (the workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), \
        resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class Timer:
    """Wall and CPU seconds (all processes) of a `with` block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _direct_part(args) -> int:
    store, items = args
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = zarr.open_group(str(store), mode="r")[cube.CONC]
    for t0, y, x in items:
        array[t0:t0 + INPUT_LENGTH + PRED_LENGTH, y:y + PATCH, x:x + PATCH]
    return len(items)


def run_direct(store: Path, items: list[tuple[int, int, int]]) -> Timer:
    with Timer() as timer:
        pool = multiprocessing.get_context("fork").Pool(WORKERS)
        # Interleaved halves, as a DataLoader's workers take alternate batches.
        parts = [(store, items[w::WORKERS]) for w in range(WORKERS)]
        assert sum(pool.map(_direct_part, parts)) == len(items)
        pool.close()
        pool.join()  # reaped: their CPU time counts
    return timer


def _drain(loader) -> int:
    count = 0
    for inputs, _targets in loader:
        count += len(inputs)
    return count


def _timed_drain(loader, expected: int) -> Timer:
    with Timer() as timer:
        # The exhausted iterator shuts its workers down and reaps them: inside the timer.
        assert _drain(loader) == expected
    return timer


def run_dataset(dataset, order: list[int]) -> Timer:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=BATCH, sampler=order, num_workers=WORKERS,
                        multiprocessing_context="fork")
    return _timed_drain(loader, len(order))


def run_loader(dataset, order: list[int]) -> Timer:
    """`dataset.loader`: whole batches read in place (same items and order)."""
    from torch.utils.data import BatchSampler, DataLoader

    loader = DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, BATCH, False),
                        num_workers=WORKERS, multiprocessing_context="fork")
    return _timed_drain(loader, len(order))


def run_stream(dataset, batched: bool) -> Timer:
    from torch.utils.data import DataLoader

    if batched:  # the stream stacks its batches itself, in shared memory
        loader = DataLoader(dataset.stream(seed=0, batch_size=BATCH), batch_size=None,
                            num_workers=WORKERS, multiprocessing_context="fork")
    else:
        loader = DataLoader(dataset.stream(seed=0), batch_size=BATCH, num_workers=WORKERS,
                            multiprocessing_context="fork")
    return _timed_drain(loader, len(dataset))


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


def run_original(path: Path, items: list[tuple[int, int, int]]) -> Timer:
    from torch.utils.data import DataLoader

    loader = DataLoader(OriginalWayDataset(path, items), batch_size=BATCH,
                        num_workers=WORKERS, multiprocessing_context="fork")
    return _timed_drain(loader, len(items))


# ------------------------------------------------------------------------ main


def measure(store: Path, days: int, n_items: int, repeat: int,
            original: tuple[Path, int] | None = None) -> tuple[dict, dict, list]:
    """Best (samples/s, CPU ms per sample) of each method on one cube, and the items.
    `original`: (the NetCDF file, items) to time the original way in the same rounds."""
    from sicube.ml.dataset import SICDataset

    # Warm the page cache for every method alike: the benchmark measures reading and
    # decompressing, not the disk.
    for path in store.rglob("*"):
        if path.is_file():
            path.read_bytes()
    end = START + dt.timedelta(days=days - 1)
    dataset = SICDataset(store, START, end, INPUT_LENGTH, PRED_LENGTH, patch_size=PATCH,
                         allow_unobserved=True, quality_cache=False,
                         allow_incomplete=True)  # made raw, never marked complete
    order = np.random.default_rng(0).permutation(len(dataset))[:n_items].tolist()
    inputs, _ = dataset.windows
    origins = dataset.patch_origins
    items = []
    for k in order:
        window, patch = divmod(k, len(origins))
        items.append((int(inputs[window, 0]), int(origins[patch, 0]), int(origins[patch, 1])))

    methods = {
        "direct": (lambda: run_direct(store, items), len(items)),
        "dataset": (lambda: run_dataset(dataset, order), len(items)),
        "loader": (lambda: run_loader(dataset, order), len(items)),
        "stream": (lambda: run_stream(dataset, False), len(dataset)),
        "stream_batched": (lambda: run_stream(dataset, True), len(dataset)),
    }
    if original is not None:
        netcdf, n_original = original
        netcdf.read_bytes()
        methods["original"] = (lambda: run_original(netcdf, items[:n_original]),
                               min(n_original, len(items)))
    # The machine is shared: runs alternate between methods and the best of `repeat`
    # counts (samples/s and CPU time separately).
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, (run, n) in methods.items():
            timer = run()
            runs[name].append((n / timer.wall, 1000 * timer.cpu / n))
        print(store.name, {name: f"{v[-1][0]:.0f}/s {v[-1][1]:.1f} ms"
                           for name, v in runs.items()})
    best = {name: (max(r for r, _ in v), min(c for _, c in v)) for name, v in runs.items()}
    return best, {name: n for name, (_, n) in methods.items()}, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=24)
    parser.add_argument("--items", type=int, default=768, help="shuffled items per method")
    parser.add_argument("--original-items", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunks", nargs="+", default=["8,512,512"],
                        help="time,y,x chunks of the cube; several: one cube each")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sicube-bench-dataset"))
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    archive = make_archive(args.workdir, args.days)
    measured = []
    netcdf = None
    for text in args.chunks:
        chunks = dict(zip(("time", "y", "x"), map(int, text.split(",")), strict=True))
        store = make_cube(args.workdir, archive, args.days, chunks)
        print(f"cube ready after {time.perf_counter() - t:.0f} s: {store}")
        # The original way reads a NetCDF file written from the first cube, timed in the
        # same rounds as the methods on that cube.
        first = netcdf is None
        if first:
            netcdf = make_netcdf(args.workdir, store, args.days)
        best, counts, items = measure(store, args.days, args.items, args.repeat,
                                      (netcdf, args.original_items) if first else None)
        if first:
            original, n_original = best.pop("original"), counts.pop("original")
        measured.append((chunks, best, counts))

    import xarray as xr

    with xr.open_dataset(netcdf) as nc:
        nc_chunks = nc[cube.CONC].encoding.get("chunksizes")
    report = results(args, measured, original, n_original, nc_chunks)
    print(report)
    if args.write:
        print(f"recorded in {record(report, HEADING)}")


def results(args, measured, original, n_original, nc_chunks) -> str:
    import torch
    import zarr

    names = {
        "direct": "direct Zarr slicing, 2 plain processes (the ceiling)",
        "dataset": "`SICDataset` in `DataLoader(batch_size=8)`",
        "loader": "`SICDataset.loader(8)`: batches read in place",
        "stream": "`SICStream` in `DataLoader(batch_size=8)`, all items",
        "stream_batched": "`SICStream(batch_size=8)`, batches in place, all items",
    }
    rows = []
    for chunks, best, counts in measured:
        chunk_text = " x ".join(str(chunks[k]) for k in ("time", "y", "x"))
        rate0, cpu0 = best["direct"]
        rows += [f"| {chunk_text} | {names[k]} | {counts[k]} | {rate:.0f} | "
                 f"{rate / rate0:.2f}x | {rate / original[0]:.1f}x | {cpu:.1f} | "
                 f"{cpu0 / cpu:.2f}x |" for k, (rate, cpu) in best.items()]
    rate0, cpu0 = measured[0][1]["direct"]  # the original way against the first cube
    rows.append(f"| NetCDF {nc_chunks} | original way: xarray `isel` on one zlib NetCDF | "
                f"{n_original} | {original[0]:.1f} | {original[0] / rate0:.2f}x | 1.0x | "
                f"{original[1]:.1f} | {cpu0 / original[1]:.2f}x |")
    table = "\n".join(rows)
    first = measured[0][1]  # the targets are judged on the first (default) chunks
    verdicts = []
    for key in ("dataset", "loader"):
        direct, vs_original = first[key][0] / first["direct"][0], first[key][0] / original[0]
        verdicts.append(f"{names[key]} {direct:.2f}x direct, {_met(direct >= 0.8)}; "
                        f"{vs_original:.1f}x the original way, {_met(vs_original >= 5)}")
    command = command_line()
    return f"""{HEADING}

`{command}`

({dt.date.today()}) Full-resolution cubes (3584 x 2432, {args.days} days, one missing) in
sicube's layout with the chunks (time x y x) of the first column, the layout's Blosc lz4
codec; the first is `cube.DEFAULT_CHUNKS`. The original way reads the same `sea_ice_conc`
from one zlib NetCDF file (level 4, netCDF's default chunks) as the original toolbox
wrote it. Items: 8-frame windows (4 inputs + 4 targets) of 256 x 256 patches tiling the
grid, shuffled, the same items in the same order for every method; batches of {BATCH};
{WORKERS} worker processes (fork); page cache warm. Runs alternate between methods, best
of {args.repeat} (the original way too, in the same rounds, on the first {n_original}
items). CPU time counts the main process and the workers; on this shared 2-core machine
it is the steadier measure. Ratios compare with direct slicing of the same cube.

| chunks | method | items | samples/s | vs direct | vs original | CPU ms/sample | CPU vs direct |
|---|---|---:|---:|---:|---:|---:|---:|
{table}

Targets: `SICDataset` >= 0.8x direct, >= 5x the original way. {". ".join(verdicts)}.

- `DataLoader(dataset, batch_size=8)` pays one extra copy per sample: torch's collate
  stacks the items into a fresh shared-memory batch. `dataset.loader(8)` gives the same
  batches (tested) with Zarr decompressing straight into the shared batch, so what is
  left over direct slicing is handing the batch to the main process (fresh shared pages).
- Shuffled single items decompress every chunk they touch: an 8-frame window spans two
  8-day chunks and a 256 x 256 patch is a quarter of a 512 x 512 chunk, so each item
  decompresses up to 8x the bytes it returns. `SICStream` decompresses each chunk about
  once per epoch and cuts all its windows from memory, which is why it beats per-item
  slicing.
- Handing a sample (2 MiB) to the main process costs a roughly fixed 1-2 ms of CPU here
  (fresh shared-memory pages on this VM), whatever the chunking. With 8 x 256 x 256
  chunks a shuffled patch is cheap to read (no decompression wasted), so that fixed cost
  weighs more and the ratio falls while the rate rises: for random 256 x 256 patches such
  chunks are the faster cube; `SICStream` makes the 512 x 512 default as fast or faster.

Machine: {machine()}, zarr {zarr.__version__}, torch {torch.__version__}.
"""


def _met(met: bool) -> str:
    return "met" if met else "**missed**"


if __name__ == "__main__":
    main()
