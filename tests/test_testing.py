"""sicube.testing: the synthetic cube is a complete cube in the layout; the fill check fails
on every kind of wrong fill."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import xarray as xr

from sicube.datacube import cube
from sicube.kernels.fill import gaussian_fill
from sicube.testing import assert_matches_reference, synthetic_cube


def test_synthetic_cube_is_a_complete_cube_in_the_layout(tmp_path):
    path = synthetic_cube(tmp_path / "c.zarr", start=20240101, n_days=9, shape=(20, 24),
                          missing=(2, 7), chunks={"time": 4, "y": 8, "x": 8})
    ds = cube.open_cube(path)  # refused unless complete
    assert set(ds.data_vars) >= {*cube.CUBE_VARS, *cube.GRID_VARS, cube.OBSERVED}
    assert ds[cube.CONC].encoding["chunks"] == (4, 8, 8)
    assert ds.attrs[cube.STATUS] == cube.COMPLETE
    # Day keys as the builder writes them (YYYYMMDD strings), not ints.
    assert cube.record_attr(ds, cube.MISSING_DAYS) == ["20240103", "20240108"]
    assert len(cube.record_attr(ds, cube.SOURCE_FILES)) == 7
    observed = ds[cube.OBSERVED].values
    assert observed.tolist() == [i not in (2, 7) for i in range(9)]
    assert ds.time.values[0] == np.datetime64(dt.date(2024, 1, 1), "ns")
    flag, raw = ds[cube.FLAG].values, ds[cube.RAW].values
    land = ds[cube.LAND].values.astype(bool)
    assert (flag[:, land] == 3).all() and (ds[cube.CONC].values[:, land] == 0).all()
    assert (flag[~observed][:, ~land] != 0).all()  # unobserved days: nothing observed
    np.testing.assert_array_equal(np.isnan(raw), flag != 0)
    with pytest.raises(ValueError, match="missing"):
        synthetic_cube(tmp_path / "bad.zarr", n_days=3, missing=(3,))


def _case():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, (4, 9, 11)).astype(np.float32)
    a[rng.random(a.shape) < 0.4] = np.nan
    a[:, :, 8:] = np.nan  # a hole wider than the window: some cells stay NaN
    return a


def test_assert_matches_reference_passes_the_fill_and_fails_wrong_ones():
    a = _case()
    params = dict(time_window=1, space_window=2, alpha=5.0, sigma=2.0)
    filled = gaussian_fill(a, **params)
    assert_matches_reference(filled, a, **params)
    assert_matches_reference(xr.DataArray(filled), xr.DataArray(a), **params)
    missing = np.argwhere(np.isnan(a) & ~np.isnan(filled))[0]
    unfilled = np.argwhere(np.isnan(filled))[0]
    observed = np.argwhere(~np.isnan(a))[0]
    for position, value, message in ((missing, np.nan, "cells filled"),
                                     (unfilled, 50.0, "cells filled"),
                                     (missing, None, "differ from the reference"),
                                     (observed, None, "observed cells changed")):
        wrong = filled.copy()
        wrong[tuple(position)] = value if value is not None else wrong[tuple(position)] + 0.01
        with pytest.raises(AssertionError, match=message):
            assert_matches_reference(wrong, a, **params)
    with pytest.raises(AssertionError, match="differ"):
        assert_matches_reference(filled + np.float32(0.001) * np.isnan(a), a, **params,
                                 atol=1e-4)
    assert_matches_reference(filled + np.float32(0.001) * np.isnan(a), a, **params, atol=0.01)
    with pytest.raises(AssertionError, match="shape"):
        assert_matches_reference(filled[:2], a, **params)
    # `where` leaves the cells outside it unchecked.
    wrong = filled.copy()
    wrong[:, 0, 0] = -1
    assert_matches_reference(wrong, a, **params, where=np.arange(11) > 0)
