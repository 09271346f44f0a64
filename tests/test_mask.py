"""The NaN counting behind the land mask, against numpy."""

from __future__ import annotations

import dask.array as da
import numpy as np

from sicube.pipeline import mask


def test_missing_counts_cover_observed_days_only():
    rng = np.random.default_rng(5)
    block = rng.uniform(0, 100, (6, 9, 11)).astype(np.float32)
    block[rng.random(block.shape) < 0.4] = np.nan
    block[2] = np.nan  # a day with no file: all NaN, not observed
    observed = np.array([True, True, False, True, False, True])
    counts = np.full(block.shape[1:], 2, np.int32)  # counts so far from other blocks
    mask.add_missing(counts, block, observed)
    np.testing.assert_array_equal(counts, 2 + np.isnan(block[observed]).sum(axis=0))
    counts -= 2
    # The same ratio as the lazy reduction the builder uses when it resumes.
    lazy = mask.nan_ratio(da.from_array(block, chunks=(2, 4, 4)), observed).compute()
    np.testing.assert_array_equal(mask.ratio_from_counts(counts, int(observed.sum())), lazy)
