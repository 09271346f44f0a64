"""The floor of a build: decode the daily files and write them into a Zarr cube, no fill.

Run:  python benchmarks/floor.py --source DIR --start YYYYMMDD --end YYYYMMDD --store PATH
                                 [--workers 2]

What any build of these days must do at the least, in a fresh process as a build runs: every
present day's file (``{YYYY}/{name}`` below ``--source``) decoded with the reader the build
uses (`sicube.archive.sources.read_day`) and written as one float32 variable in the cube's
chunks and codec (`cube.DEFAULT_CHUNKS`, `cube.default_compressors`), ``--workers`` time
chunks at a time, zarr's codec threads set as a build sets them. No download, validation,
hashing, day statistics, land mask, fill, flags or filled variable. Prints one JSON line:
the days, the observed days, and the thread-seconds spent decoding and writing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sicube import settings  # noqa: E402
from sicube.archive import products  # noqa: E402
from sicube.archive.sources import read_day  # noqa: E402
from sicube.dates import day_range, parse_span  # noqa: E402


def write_floor(source: Path, start: str, end: str, store: Path, workers: int) -> dict:
    """Decode every present day of [start, end] under `source` into a new Zarr array at
    `store`; the seconds spent decoding and writing (summed over the threads)."""
    import zarr

    from sicube.datacube import cube

    settings.apply()  # zarr's codec threads, one per core, as a build has them
    paths = [source / products.relative_path(day) for day in day_range(*parse_span(start, end))]
    paths = [path if path.exists() else None for path in paths]
    present = [path for path in paths if path is not None]
    if not present:
        raise SystemExit(f"no daily file of {start}..{end} under {source}")
    ny, nx = read_day(present[0]).z.shape
    chunks = (cube.DEFAULT_CHUNKS["time"], cube.DEFAULT_CHUNKS["y"], cube.DEFAULT_CHUNKS["x"])
    raw = zarr.open_group(str(store), mode="w").create_array(
        cube.RAW, shape=(len(paths), ny, nx), chunks=chunks, dtype=np.float32,
        fill_value=np.nan, compressors=cube.default_compressors())

    def time_chunk(first: int) -> tuple[float, float]:
        began = time.perf_counter()
        block = np.full((min(chunks[0], len(paths) - first), ny, nx), np.nan, np.float32)
        for i, path in enumerate(paths[first:first + chunks[0]]):
            if path is not None:
                read_day(path, out=block[i])
        decoded = time.perf_counter()
        # Chunk by chunk, as the build writes (a whole block is encoded all at once).
        for y0 in range(0, ny, chunks[1]):
            for x0 in range(0, nx, chunks[2]):
                raw[first:first + len(block), y0:y0 + chunks[1], x0:x0 + chunks[2]] = \
                    block[:, y0:y0 + chunks[1], x0:x0 + chunks[2]]
        return decoded - began, time.perf_counter() - decoded

    with ThreadPoolExecutor(workers) as pool:
        spent = list(pool.map(time_chunk, range(0, len(paths), chunks[0])))
    return {"days": len(paths), "observed": len(present),
            "decode": sum(d for d, _ in spent), "write": sum(w for _, w in spent)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="folder of daily files")
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--store", type=Path, required=True, help="the Zarr store to write")
    parser.add_argument("--workers", type=int, default=2, help="time chunks at a time")
    args = parser.parse_args(argv)
    print(json.dumps(write_floor(args.source, args.start, args.end, args.store, args.workers)),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
