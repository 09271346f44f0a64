"""The Gaussian fill against its oracle, across chunkings and schedulers; its argument checks."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sicube.datacube.cube import FillFlag
from sicube.errors import BadInput
from sicube.kernels.area import extent_area
from sicube.kernels.fill import (
    TILE,
    FillParams,
    _fill_numpy,
    fill_fraction_block,
    gaussian_fill,
    reference_fill,
)
from sicube.kernels.fill_kernel import SEG, axis_weights
from sicube.testing import assert_matches_reference

TOL = 1e-4  # percent: the fill rule's float32 tolerance (docs/cube-format.md, "The fill")
DEFAULTS = tuple(FillParams().to_dict().values())  # time_window, space_window, alpha, sigma


@st.composite
def gappy_arrays(draw):
    """Small (t, y, x) percent arrays with random gaps, whole missing frames and extremes."""
    nt = draw(st.integers(1, 6))
    ny = draw(st.integers(1, 14))
    nx = draw(st.integers(1, 14))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.0, 100.0, (nt, ny, nx)).astype(np.float32)
    pattern = draw(st.sampled_from(["random", "all_nan", "no_nan", "single", "frames", "edges"]))
    if pattern == "random":
        a[rng.random(a.shape) < draw(st.floats(0.0, 1.0))] = np.nan
    elif pattern == "all_nan":
        a[:] = np.nan
    elif pattern == "single":
        keep = tuple(int(rng.integers(0, n)) for n in a.shape)
        value = a[keep]
        a[:] = np.nan
        a[keep] = value
    elif pattern == "frames":
        a[rng.random(a.shape) < 0.5] = np.nan
        a[rng.random(nt) < 0.5] = np.nan
    elif pattern == "edges":
        # Only the border cells are missing: every window there is clipped.
        a[:, 0, :] = a[:, -1, :] = a[:, :, 0] = a[:, :, -1] = np.nan
        a[0] = a[-1] = np.where(rng.random((ny, nx)) < 0.5, np.nan, a[0])
    extreme = draw(st.sampled_from(["none", "zeros", "hundreds"]))
    if extreme != "none":
        a[~np.isnan(a)] = 0.0 if extreme == "zeros" else 100.0
    return a


params = st.tuples(
    st.integers(0, 4),  # time_window
    st.integers(0, 16),  # space_window, often larger than the array
    st.floats(0.0, 40.0),  # alpha
    st.floats(0.2, 12.0),  # sigma
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gappy_arrays(), params)
def test_numpy_fill_matches_oracle(array, p):
    filled = gaussian_fill(array, *p)
    assert isinstance(filled, np.ndarray) and filled.dtype == np.float32
    assert filled.shape == array.shape
    assert_matches_reference(filled, array, *p)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gappy_arrays(), params, st.data())
def test_dask_fill_matches_oracle_for_any_chunking(array, p, data):
    chunks = tuple(
        data.draw(st.integers(1, n), label=f"chunk{i}") for i, n in enumerate(array.shape)
    )
    lazy = gaussian_fill(da.from_array(array, chunks=chunks), *p)
    assert lazy.chunks == da.from_array(array, chunks=chunks).chunks
    assert_matches_reference(lazy.compute(scheduler="sync"), array, *p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gappy_arrays(), params, st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_any_tiling_matches_oracle(array, p, tile_y, tile_x, parallel):
    """The kernel's tiles are an internal detail: tiny ones cross every border the real ones do."""
    gt, gs = axis_weights(p[0], p[1], p[2], p[3])
    filled = _fill_numpy(array, None, p[0], p[1], gt, gs, parallel=parallel, tile=(tile_y, tile_x))
    assert_matches_reference(filled, array, *p)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(SEG + 1, 3 * SEG),
    st.floats(0.0, 0.1),
    st.integers(0, 2**32 - 1),
    params,
    st.integers(1, 40),
)
def test_sparse_wide_rows_match_oracle(nt, ny, nx, share, seed, p, tile_x):
    """Rows wider than the kernel's observation segments, mostly empty: the trimming is exact."""
    rng = np.random.default_rng(seed)
    a = np.where(rng.random((nt, ny, nx)) < share, rng.uniform(0, 100, (nt, ny, nx)), np.nan)
    a = a.astype(np.float32)
    gt, gs = axis_weights(p[0], p[1], p[2], p[3])
    filled = _fill_numpy(a, None, p[0], p[1], gt, gs, parallel=False, tile=(2, tile_x))
    assert_matches_reference(filled, a, *p)


def test_tiles_and_defaults_match_oracle():
    """An array spanning several kernel tiles, with the default parameters."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 100, (4, TILE[0] + 20, TILE[1] + 30)).astype(np.float32)
    a[rng.random(a.shape) < 0.97] = np.nan  # sparse observations reach across tile borders
    a[1] = np.nan
    a[:, 40:70, TILE[1] - 20 : TILE[1] + 20] = (
        np.nan
    )  # a hole across a tile border: centre unfilled
    filled = gaussian_fill(a)
    assert_matches_reference(filled, a, *DEFAULTS)
    assert np.isnan(a).sum() > np.isnan(filled).sum() > 0  # some filled, some left


def low_nan_day_block(nt: int, ny: int, nx: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A block like a day series with little to fill: smooth ice, land NaN in one corner, a
    pole hole (NaN every day, wider than the window), drifting gaps and one missing day."""
    rng = np.random.default_rng(seed)
    t, y, x = np.ogrid[:nt, :ny, :nx]
    a = (50 + 40 * np.sin(y / 9.0 + t) * np.cos(x / 13.0)).astype(np.float32)
    land = (y[0] - 0.6 * ny) ** 2 + (x[0] - 0.2 * nx) ** 2 < (0.3 * ny) ** 2
    hole = (y[0] - ny // 3) ** 2 + (x[0] - 2 * nx // 3) ** 2 < 14**2
    gaps = np.sin(x / 7.0 + 0.8 * t + rng.uniform(0, 6)) * np.cos(y / 5.0 - t) > 0.75
    a[:, land | hole] = np.nan
    a[gaps] = np.nan
    a[nt // 2] = np.nan
    return a, land.astype(np.uint8)


@pytest.mark.parametrize("tile, parallel", [(TILE, True), ((16, 40), True), ((7, 33), False)])
def test_low_nan_block_with_pole_hole_matches_oracle(tile, parallel):
    """Little to fill, land without and with a mask, a pole hole whose centre stays NaN: the
    kernel fills a tile's frames one after the other and sums up, per tile, which segments
    around it hold observations; across many tiles and threads that matches the oracle."""
    a, land = low_nan_day_block(6, 80, 290, seed=tile[0])
    assert 0.15 < np.isnan(a).mean() < 0.4
    gt, gs = axis_weights(*DEFAULTS)
    filled = _fill_numpy(a, None, DEFAULTS[0], DEFAULTS[1], gt, gs, parallel=parallel, tile=tile)
    assert_matches_reference(filled, a, *DEFAULTS)
    assert np.isnan(filled[:, 80 // 3, 2 * 290 // 3]).all()  # the hole's centre: no neighbour
    assert not np.isnan(filled[0]).all() and np.isnan(filled).sum() < np.isnan(a).sum() / 2
    masked = _fill_numpy(a, land, DEFAULTS[0], DEFAULTS[1], gt, gs, parallel=parallel, tile=tile)
    assert_matches_reference(masked, a, *DEFAULTS, where=~land.astype(bool))
    assert np.isnan(masked[:, land.astype(bool)]).all()  # land keeps its NaN


def test_known_values():
    """Two observations and one gap between them: the weights are computable by hand."""
    a = np.full((3, 1, 3), np.nan, np.float32)
    a[0, 0, 0] = 10.0
    a[2, 0, 2] = 40.0
    filled = gaussian_fill(a, time_window=2, space_window=2, alpha=2.0, sigma=1.5)
    w0 = np.exp(-(0 + 1 + 2.0 * 1) / (2 * 1.5**2))  # (1,0,1) to (0,0,0): dx 1, dt 1
    w1 = np.exp(-(0 + 1 + 2.0 * 1) / (2 * 1.5**2))
    assert filled[1, 0, 1] == pytest.approx((w0 * 10 + w1 * 40) / (w0 + w1), abs=1e-5)
    # (0,0,2): 10 at dx=2, dt=0 and 40 at dt=2, dx=0
    wa, wb = np.exp(-4 / (2 * 1.5**2)), np.exp(-2.0 * 4 / (2 * 1.5**2))
    assert filled[0, 0, 2] == pytest.approx((wa * 10 + wb * 40) / (wa + wb), abs=1e-5)


def test_weight_threshold_leaves_cells_missing():
    """A lone neighbour whose weight is just under 1e-6 does not fill; just over does."""
    a = np.full((1, 1, 2), np.nan, np.float32)
    a[0, 0, 0] = 50.0
    # w = exp(-1 / (2 sigma²)); w = 1e-6 at sigma = sqrt(1 / (2 ln 1e6)).
    sigma_edge = np.sqrt(1.0 / (2.0 * np.log(1e6)))
    assert np.isnan(gaussian_fill(a, 0, 1, 0.0, sigma_edge * 0.999)[0, 0, 1])
    assert gaussian_fill(a, 0, 1, 0.0, sigma_edge * 1.001)[0, 0, 1] == pytest.approx(50.0)


def test_filled_values_do_not_feed_other_fills():
    """A cell beyond every observation's reach stays NaN even though a filled cell is near."""
    a = np.full((1, 1, 5), np.nan, np.float32)
    a[0, 0, 0] = 30.0
    filled, flags = gaussian_fill(a, 0, 2, 0.0, 5.0, return_flags=True)
    np.testing.assert_allclose(filled[0, 0, :3], 30.0)
    assert np.isnan(filled[0, 0, 3:]).all()
    assert flags[0, 0].tolist() == [0, 1, 1, 2, 2]


def test_float64_input_stays_float64():
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 100, (3, 9, 11))
    a[rng.random(a.shape) < 0.5] = np.nan
    filled = gaussian_fill(a, 1, 3, 5.0, 2.0)
    assert filled.dtype == np.float64
    assert_matches_reference(filled, a, 1, 3, 5.0, 2.0)


# --- land and flags -----------------------------------------------------------------------------


def _land_case():
    rng = np.random.default_rng(11)
    a = rng.uniform(0, 100, (5, 12, 15)).astype(np.float32)
    a[rng.random(a.shape) < 0.5] = np.nan
    land = np.zeros((12, 15), bool)
    land[:4, :6] = True
    a[:, :3, :5] = np.nan  # typical land: always missing
    a[2, 3, 5] = 77.0  # an observed value on a land cell
    a[:, 6:, 8:] = np.nan  # a sea hole wider than the window: its corner has no neighbour
    return a, land


def test_land_cells_keep_input_and_get_flag_land():
    a, land = _land_case()
    filled, flags = gaussian_fill(a, 2, 3, 10.0, 3.0, land_mask=land, return_flags=True)
    assert flags.dtype == np.uint8 and flags.shape == a.shape
    np.testing.assert_array_equal(filled[:, land], a[:, land])  # NaN land stays NaN
    assert (flags[:, land] == FillFlag.LAND).all()
    # Off land the fill and the flags are exactly those of the unmasked rule (observed values
    # on land cells still count as neighbours).
    expected = reference_fill(a, 2, 3, 10.0, 3.0)
    sea = ~land
    assert_matches_reference(filled, a, 2, 3, 10.0, 3.0, where=sea)
    observed = ~np.isnan(a)
    assert (flags[:, sea][observed[:, sea]] == FillFlag.OBSERVED).all()
    missing = ~observed[:, sea]
    want = np.where(np.isnan(expected[:, sea][missing]), FillFlag.NO_NEIGHBOUR, FillFlag.FILLED)
    np.testing.assert_array_equal(flags[:, sea][missing], want)
    assert {FillFlag.FILLED, FillFlag.NO_NEIGHBOUR} <= set(np.unique(flags[:, sea]).tolist())


def test_land_mask_and_flags_under_dask_match_numpy():
    a, land = _land_case()
    want_f, want_flags = gaussian_fill(a, 2, 3, 10.0, 3.0, land_mask=land, return_flags=True)
    d = da.from_array(a, chunks=(2, 5, 4))
    got_f, got_flags = gaussian_fill(
        d,
        2,
        3,
        10.0,
        3.0,
        land_mask=da.from_array(land.astype(np.uint8), chunks=7),
        return_flags=True,
    )
    assert got_f.chunks == d.chunks and got_flags.chunks == d.chunks
    assert got_flags.dtype == np.uint8
    got_f, got_flags = dask.compute(got_f, got_flags, scheduler="threads")
    np.testing.assert_array_equal(got_flags, want_flags)
    np.testing.assert_allclose(got_f, want_f, atol=TOL)
    np.testing.assert_array_equal(np.isnan(got_f), np.isnan(want_f))


# --- chunk and scheduler invariance -------------------------------------------------------------


def _invariance_case():
    rng = np.random.default_rng(7)
    a = rng.uniform(0, 100, (12, 40, 36)).astype(np.float32)
    a[rng.random(a.shape) < 0.6] = np.nan
    a[4] = np.nan  # a missing day
    a[:, 10:25, 5:20] = np.nan  # a hole wider than the window: some cells get no neighbour
    return a


CHUNKINGS = [
    (12, 40, 36),  # one block
    (5, 16, 20),  # ordinary chunks
    (2, 5, 4),  # thinner than the halo (3, 7, 7) on every axis
    (1, 3, 2),  # much thinner
    ((2, 7, 3), (9, 1, 30), (36,)),  # irregular
]


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["one", "regular", "thin", "tiny", "irregular"])
def test_chunkings_match_oracle_under_threads(chunks):
    a = _invariance_case()
    d = da.from_array(a, chunks=chunks)
    lazy = gaussian_fill(d)
    assert lazy.chunks == d.chunks
    filled = lazy.compute(scheduler="threads", num_workers=2)
    assert_matches_reference(filled, a, *DEFAULTS)
    assert np.isnan(filled).any() and (np.isnan(a) & ~np.isnan(filled)).any()


def test_processes_scheduler_matches_oracle():
    a = _invariance_case()
    filled = gaussian_fill(da.from_array(a, chunks=(5, 16, 20))).compute(
        scheduler="processes", num_workers=2
    )
    assert_matches_reference(filled, a, *DEFAULTS)


@pytest.mark.slow
def test_distributed_cluster_matches_oracle():
    import distributed

    a = _invariance_case()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        for chunks in (CHUNKINGS[1], CHUNKINGS[2], CHUNKINGS[4]):
            filled, flags = gaussian_fill(
                da.from_array(a, chunks=chunks), return_flags=True, method="gaussian"
            )
            filled, flags = client.compute([filled, flags], sync=True)
            assert_matches_reference(filled, a, *DEFAULTS)
            assert set(np.unique(flags).tolist()) == {0, 1, 2}


def test_numpy_in_numpy_out_dask_stays_lazy():
    a = _invariance_case()
    assert isinstance(gaussian_fill(a), np.ndarray)
    calls = []

    def count(block):
        calls.append(1)
        return block

    d = da.from_array(a, chunks=(4, 20, 18)).map_blocks(count, meta=np.empty((0, 0, 0), a.dtype))
    lazy, flags = gaussian_fill(d, return_flags=True)
    assert isinstance(lazy, da.Array) and isinstance(flags, da.Array)
    assert calls == []  # nothing computed yet


# --- hybrid -------------------------------------------------------------------------------------


def reference_hybrid(array, tw, sw, alpha, sigma, max_gap):
    """Interpolate each cell's time series over short bounded gaps, then the Gaussian oracle."""
    a = np.asarray(array, dtype=np.float64).copy()
    nt = a.shape[0]
    for y in range(a.shape[1]):
        for x in range(a.shape[2]):
            seen = np.flatnonzero(~np.isnan(a[:, y, x]))
            for t0, t1 in zip(seen[:-1], seen[1:], strict=True):
                if 1 <= t1 - t0 - 1 <= max_gap:
                    for t in range(t0 + 1, t1):
                        a[t, y, x] = a[t0, y, x] + (a[t1, y, x] - a[t0, y, x]) * (t - t0) / (
                            t1 - t0
                        )
    assert a.shape[0] == nt
    return reference_fill(a, tw, sw, alpha, sigma)


def test_hybrid_interpolates_short_gaps_linearly():
    a = np.full((9, 1, 1), np.nan, np.float32)
    a[0], a[3], a[8] = 10.0, 40.0, 0.0  # gap of 2 days, then a gap of 4 days
    filled, flags = gaussian_fill(a, 0, 0, 1.0, 1.0, method="hybrid", max_gap=3, return_flags=True)
    np.testing.assert_allclose(filled[:4, 0, 0], [10, 20, 30, 40], atol=1e-5)
    assert np.isnan(filled[4:8, 0, 0]).all()  # gap of 4 > max_gap; windows of 0 fill nothing
    assert flags[:, 0, 0].tolist() == [0, 1, 1, 0, 2, 2, 2, 2, 0]
    wider = gaussian_fill(a, 0, 0, 1.0, 1.0, method="hybrid", max_gap=4)
    np.testing.assert_allclose(wider[3:, 0, 0], [40, 32, 24, 16, 8, 0], atol=1e-5)


def test_hybrid_leaves_gaps_at_the_edges_to_the_gaussian():
    a = np.full((5, 1, 1), np.nan, np.float32)
    a[2] = 60.0
    filled = gaussian_fill(a, 0, 0, 1.0, 1.0, method="hybrid", max_gap=5)
    assert np.isnan(filled[[0, 1, 3, 4], 0, 0]).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gappy_arrays(), params, st.integers(0, 4), st.data())
def test_hybrid_matches_its_oracle_for_any_chunking(array, p, max_gap, data):
    expected = reference_hybrid(array, *p, max_gap)
    filled = gaussian_fill(array, *p, method="hybrid", max_gap=max_gap)
    chunks = tuple(
        data.draw(st.integers(1, n), label=f"chunk{i}") for i, n in enumerate(array.shape)
    )
    lazy = gaussian_fill(da.from_array(array, chunks=chunks), *p, method="hybrid", max_gap=max_gap)
    for got in (filled, lazy.compute(scheduler="sync")):
        both = ~np.isnan(got) & ~np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        if both.any():
            assert np.abs(got[both] - expected[both]).max() <= TOL


# --- validation ---------------------------------------------------------------------------------

GOOD = np.zeros((2, 3, 3), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"time_window": -1}, "time_window"),
        ({"time_window": 1.5}, "time_window"),
        ({"time_window": True}, "time_window"),
        ({"space_window": -2}, "space_window"),
        ({"space_window": "7"}, "space_window"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"method": "linear"}, "method"),
        ({"max_gap": -1}, "max_gap"),
        ({"land_mask": np.zeros((3, 4), bool)}, "land_mask"),
        ({"land_mask": np.zeros((3, 3), np.float32)}, "land_mask"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, name):
    with pytest.raises(BadInput, match=name):
        gaussian_fill(GOOD, **kwargs)


@pytest.mark.parametrize(
    "array",
    [np.zeros((3, 3), np.float32), np.zeros((2, 3, 3, 1), np.float32), np.zeros((2, 3, 3), int)],
)
def test_bad_arrays_are_refused(array):
    with pytest.raises(BadInput, match="array"):
        gaussian_fill(array)
    with pytest.raises(BadInput, match="array"):
        gaussian_fill(da.from_array(array))


@pytest.mark.parametrize("core", [
    (0, 5, 0, 12, 0, 15),  # the whole block
    (1, 4, 3, 9, 2, 13),  # an inner core with a halo on every side
    (2, 5, 0, 7, 5, 15),  # touching the block's edges on some sides
])
def test_builder_block_equals_the_fill_and_the_seed_final_steps(core):
    """fill_fraction_block on a core = gaussian_fill of the block, /100, NaN and land -> 0."""
    a, land = _land_case()
    t0, t1, y0, y1, x0, x1 = core
    filled, flags = gaussian_fill(a, 2, 3, 10.0, 3.0, land_mask=land, return_flags=True)
    fraction, got_flags, counts, sums = fill_fraction_block(a, land, core, 2, 3, 10.0, 3.0)
    # A core needs its window's neighbours only; the fill of the whole block has them all.
    want = (filled / np.float32(100))[t0:t1, y0:y1, x0:x1]
    want[np.isnan(want)] = 0
    want[:, land[y0:y1, x0:x1]] = 0
    assert fraction.dtype == np.float32 and got_flags.dtype == np.uint8
    np.testing.assert_array_equal(fraction.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(got_flags, flags[t0:t1, y0:y1, x0:x1])
    np.testing.assert_array_equal(  # each day's count of each flag
        counts, [np.bincount(day.ravel(), minlength=len(FillFlag)) for day in got_flags])
    assert counts[:, FillFlag.FILLED].sum() > 0 and counts[:, FillFlag.LAND].sum() > 0
    # given the core's cell areas, each day's extent and area come out of the same pass
    assert sums is None
    cells_m2 = np.random.default_rng(1).uniform(9e6, 1e7, fraction.shape[1:])
    *_, sums = fill_fraction_block(a, land, core, 2, 3, 10.0, 3.0, cell_km2=cells_m2 * 1e-6)
    extent, ice = extent_area(fraction, cells_m2)
    assert ((fraction > 0) & (fraction < 0.15)).any() and (fraction >= 0.15).any()
    np.testing.assert_allclose(sums[:, 0], extent, rtol=1e-12)
    np.testing.assert_allclose(sums[:, 1], ice, rtol=1e-12)


def test_a_data_array_comes_back_with_its_coords_and_lazy_when_dask():
    """An xarray.DataArray in, a DataArray out: same dims, coords, name, attrs, values."""
    import dask.array as da
    import xarray as xr

    rng = np.random.default_rng(5)
    values = rng.uniform(0, 100, (4, 6, 7)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    coords = {"time": np.arange(4), "y": np.linspace(0, 1, 6), "x": np.arange(7) * 2.0}
    arr = xr.DataArray(values, dims=("time", "y", "x"), coords=coords, name="conc",
                       attrs={"units": "%"})
    expected, expected_flags = gaussian_fill(values, 1, 2, 1.0, 1.5, return_flags=True)
    got = gaussian_fill(arr, 1, 2, 1.0, 1.5)
    assert isinstance(got, xr.DataArray) and got.dims == arr.dims and got.name == "conc"
    assert got.attrs == {"units": "%"}
    assert got.coords.to_dataset().identical(arr.coords.to_dataset())
    np.testing.assert_array_equal(got.values, expected)
    lazy, flags = gaussian_fill(arr.chunk({"time": 2, "y": 3}), 1, 2, 1.0, 1.5, return_flags=True)
    assert isinstance(lazy.data, da.Array) and isinstance(flags.data, da.Array)
    assert flags.name == "fill_flag" and flags.dims == arr.dims
    np.testing.assert_allclose(lazy.values, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(flags.values, expected_flags)


# --- the gufunc ---------------------------------------------------------------------------------


def _gufunc_case():
    """A gappy float32 block with land and its `gaussian_fill` result (the expected output)."""
    rng = np.random.default_rng(7)
    a = rng.uniform(0.0, 100.0, (6, 40, 300)).astype(np.float32)  # x wider than one tile
    a[rng.random(a.shape) < 0.4] = np.nan
    a[2] = np.nan  # a whole missing day
    land = np.zeros(a.shape[1:], np.uint8)
    land[:8, :20] = 1
    expected = gaussian_fill(a, 2, 5, 10.0, 4.0, land_mask=land)
    return a, land, (2, 5, 10.0, 4.0), expected


def test_gufunc_equals_gaussian_fill_on_numpy():
    from sicube.kernels.fill import gaussian_fill_gufunc

    a, land, params, expected = _gufunc_case()
    out = gaussian_fill_gufunc(a, land, *params)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # float64 in, float64 out; a bool land mask; no land at all
    np.testing.assert_array_equal(gaussian_fill_gufunc(a.astype(np.float64), land.astype(bool),
                                                       *params),
                                  gaussian_fill(a.astype(np.float64), *params, land_mask=land))
    np.testing.assert_array_equal(gaussian_fill_gufunc(a, np.zeros_like(land), *params),
                                  gaussian_fill(a, *params))


def test_gufunc_broadcasts_over_a_leading_dimension():
    from sicube.kernels.fill import gaussian_fill_gufunc

    a, land, params, expected = _gufunc_case()
    stacked = np.stack([a, a[::-1]])
    out = gaussian_fill_gufunc(stacked, land, *params)
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], gaussian_fill(a[::-1], *params, land_mask=land))


def test_gufunc_through_dask_apply_gufunc():
    from sicube.kernels.fill import GUFUNC_LAYOUT, gaussian_fill_gufunc

    a, land, params, expected = _gufunc_case()
    lazy = da.apply_gufunc(gaussian_fill_gufunc, GUFUNC_LAYOUT, da.from_array(a),
                           da.from_array(land), *params, output_dtypes=a.dtype)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), expected)


def test_gufunc_through_xarray_apply_ufunc():
    import xarray as xr

    from sicube.kernels.fill import gaussian_fill_gufunc

    a, land, params, expected = _gufunc_case()
    conc = xr.DataArray(da.from_array(a), dims=("time", "y", "x"),
                        coords={"time": np.arange(a.shape[0])})
    mask = xr.DataArray(land, dims=("y", "x"))
    out = xr.apply_ufunc(gaussian_fill_gufunc, conc, mask, *params,
                         input_core_dims=[["time", "y", "x"], ["y", "x"], [], [], [], []],
                         output_core_dims=[["time", "y", "x"]], dask="parallelized",
                         output_dtypes=[a.dtype])
    assert out.dims == ("time", "y", "x") and out.chunks is not None
    np.testing.assert_array_equal(out.compute(scheduler="sync").values, expected)
    np.testing.assert_array_equal(out.time.values, conc.time.values)


def test_block_gufunc_fills_only_the_core_as_the_whole_array_fill_does():
    """The map_overlap path's kernel: a block's core, with a halo at least the windows deep,
    comes out as in the whole-array fill; the halo comes back unchanged."""
    from sicube.kernels.fill import gaussian_block_gufunc

    a, land, params, expected = _gufunc_case()
    core = np.array([2, 4, 5, 35, 5, 295], np.int64)  # halo: 2 days, 5 cells (= the windows)
    out = gaussian_block_gufunc(a, land, core, *params)
    t0, t1, y0, y1, x0, x1 = core
    np.testing.assert_array_equal(out[t0:t1, y0:y1, x0:x1], expected[t0:t1, y0:y1, x0:x1])
    halo = np.ones(a.shape, bool)
    halo[t0:t1, y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[halo], a[halo])


def test_the_dask_fill_fills_each_block_as_the_block_gufunc_does(monkeypatch):
    """gaussian_fill's map_overlap path fills each haloed block once, its core as the block
    gufunc gives it, and the result equals the NumPy fill for a chunking that needs halos on
    every axis."""
    from sicube.kernels import fill
    from sicube.kernels.fill import gaussian_block_gufunc

    blocks = []
    real = fill._gaussian_block

    def recorded(block, land_block, core, **kwargs):
        out = real(block, land_block, core, **kwargs)
        blocks.append((block.copy(), land_block, core, out))
        return out

    monkeypatch.setattr(fill, "_gaussian_block", recorded)
    a, land, params, expected = _gufunc_case()
    lazy = gaussian_fill(da.from_array(a, chunks=(3, 20, 150)), *params, land_mask=land)
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), expected)
    assert len(blocks) == 2 * 2 * 2
    for block, land_block, core, out in blocks:
        t0, t1, y0, y1, x0, x1 = core
        whole = gaussian_block_gufunc(block, land_block.astype(np.uint8),
                                      np.asarray(core, np.int64), *params)
        np.testing.assert_array_equal(out, whole[t0:t1, y0:y1, x0:x1])
    # float64 keeps the last bits float32 rounds away: the same there too
    a64 = a.astype(np.float64)
    lazy = gaussian_fill(da.from_array(a64, chunks=(3, 20, 150)), *params, land_mask=land)
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"),
                                  gaussian_fill(a64, *params, land_mask=land))


def test_the_gufuncs_raise_no_floating_point_warning():
    """Columns without weight divide nothing by zero: NumPy turns the CPU's "invalid" flag,
    left set by a gufunc, into a RuntimeWarning (issue 20 item 6: six of them per evaluate)."""
    from sicube.kernels.fill import gaussian_block_gufunc, gaussian_fill_gufunc

    a, land, params, _ = _gufunc_case()
    core = np.array([2, 4, 5, 35, 5, 295], np.int64)
    with warnings.catch_warnings(), np.errstate(all="warn"):
        warnings.simplefilter("error")
        for array in (a, a.astype(np.float64)):
            gaussian_fill_gufunc(array, land, *params)
            gaussian_block_gufunc(array, land, core, *params)
            lazy = gaussian_fill(da.from_array(array, chunks=(3, 20, 150)), *params,
                                 land_mask=land)
            lazy.compute(scheduler="sync")
