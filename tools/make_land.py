"""Write the land masks that `sicube.views.plot` ships for coastlines: sicube/data/land-{grid}.npz.

Run once (it needs `global-land-mask`, ~1 GB of memory and a minute per grid):

    python tools/make_land.py

Why a shipped file: maps must work offline (the original toolbox's cartopy downloaded
coastlines at run time) and loading `global-land-mask` at plot time costs about 1 GB
and seconds. The full 3.125 km land mask packs into bits and compresses to ~80 kB per
hemisphere, so every map draws coastlines at the product's own resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sicube.archive import products
from sicube.archive.synthetic import lat_lon

OUT = Path(__file__).resolve().parents[1] / "sicube" / "data"
GRIDS = ("n3125", "s3125")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in GRIDS:
        grid = products.GRIDS[name]
        from global_land_mask import globe

        lat, lon = lat_lon(name, 1)  # the same projection code the sample archive uses
        land = globe.is_land(lat, lon)
        path = OUT / f"land-{name}.npz"
        # Coordinates are not stored: products.GRIDS[name] defines them.
        assert land.shape == (grid.ny, grid.nx)
        np.savez_compressed(path, land_bits=np.packbits(land), shape=np.array(land.shape))
        print(f"{path}: {land.shape}, land share {land.mean():.3f}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
