"""The local fill's block map hands out exactly the haloed blocks dask's map_overlap does."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from sicube.kernels.fill import halo_layout
from sicube.pipeline.haloed import map_haloed_blocks, regular_chunks, threads


def _describe(block, land_block, block_info=None, scale=1.0):
    """What a block function sees: its cells' sum, its land's, its shape and its place."""
    iy, ix = block_info[0]["chunk-location"][1:]
    return np.array([block.sum(dtype=np.float64) * scale, land_block.sum(), *block.shape,
                     iy, ix], np.float64).reshape(1, 1, -1)


@pytest.mark.parametrize("depth", [(3, 3), (0, 0), (9, 12)])  # plain, none, thin chunks merged
def test_the_blocks_and_results_are_map_overlaps(tmp_path, depth):
    rng = np.random.default_rng(0)
    values = rng.random((12, 50, 37)).astype(np.float32)
    array = zarr.create_array(tmp_path / "a.zarr", shape=values.shape, chunks=(4, 8, 10),
                              dtype="f4")
    array[:] = values
    land = zarr.create_array(tmp_path / "l.zarr", shape=values.shape[1:], chunks=(8, 10),
                             dtype="u1")
    land[:] = rng.random(values.shape[1:]) > 0.7
    assert regular_chunks(array.shape[1:], array.chunks[1:]) == ((8,) * 6 + (2,),
                                                                (10,) * 3 + (7,))
    spatial, halo = halo_layout(regular_chunks(array.shape[1:], array.chunks[1:]), depth)
    first, last = 2, 10  # a read window across time chunks
    source = da.from_zarr(array, chunks=((first, last - first, 12 - last), *spatial))
    overlap = {0: 0, 1: halo[0], 2: halo[1]}
    want = da.map_overlap(_describe, source[first:last], da.from_zarr(land, chunks=spatial)[None],
                          depth=[overlap, overlap], boundary="none", trim=False,
                          align_arrays=False, dtype=np.float64, scale=2.0,
                          chunks=((1,), (1,) * len(spatial[0]), (7,) * len(spatial[1]))
                          ).compute().reshape(-1, 7)
    with threads(3):
        got = map_haloed_blocks(_describe, array, land, (first, last), spatial, halo, scale=2.0)
    np.testing.assert_array_equal(got, want)
    assert got.shape[0] == len(spatial[0]) * len(spatial[1])
