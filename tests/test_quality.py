"""Suspicious days: the pure rules (`sicube.pipeline.quality`), and the builder, update, dataset and
info on a sample archive with an all-zero day and a day with a third of its observations."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from sicube.archive.synthetic import write_archive
from sicube.cli import main
from sicube.datacube import cube
from sicube.datacube.cube import DayQuality
from sicube.kernels.fill import FillParams
from sicube.pipeline.build import build, update
from sicube.pipeline.plan import BuildArgs, BuildState, days_depending_on
from sicube.pipeline.quality import (
    QualityRules,
    StatCells,
    _neighbour_medians,
    day_stats,
    judge,
)

# --- the pure rules --------------------------------------------------------------------------


def _table(obs, extent, lo=None, hi=None, bad=None) -> dict[str, np.ndarray]:
    n = len(obs)
    return {"obs_fraction": np.asarray(obs, float), "extent_raw": np.asarray(extent, float),
            "min": np.zeros(n) if lo is None else np.asarray(lo, float),
            "max": np.full(n, 100.0) if hi is None else np.asarray(hi, float),
            "out_of_range": np.zeros(n) if bad is None else np.asarray(bad, float),
            "ocean_km2": np.full(n, 5e7), "zero_fraction": np.full(n, 0.5),
            "mean_conc": np.full(n, 30.0)}


# A plausible record: observed share 0.85 +- 0.02, extent 10e6 km2 drifting < 1 % a day.
normal_days = st.integers(8, 40).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.83, 0.87), min_size=n, max_size=n),
    st.lists(st.floats(-0.008, 0.008), min_size=n, max_size=n)))


def _normal(draw) -> tuple[np.ndarray, np.ndarray]:
    obs, steps = draw
    return np.array(obs), 1e7 * np.cumprod(1 + np.array(steps))


@settings(max_examples=60, deadline=None)
@given(normal_days)
def test_a_plausible_record_has_no_suspicious_day(days):
    obs, extent = _normal(days)
    flags, reasons = judge(_table(obs, extent), QualityRules())
    assert not flags.any() and reasons == {}


@settings(max_examples=60, deadline=None)
@given(normal_days, st.data())
def test_an_all_zero_day_is_flagged_all_equal_and_only_it(days, data):
    obs, extent = _normal(days)
    i = data.draw(st.integers(0, obs.size - 1))
    lo, hi = np.zeros(obs.size), np.full(obs.size, 100.0)
    hi[i] = 0.0
    extent[i] = 0.0
    flags, reasons = judge(_table(obs, extent, lo, hi), QualityRules())
    assert flags[i] & DayQuality.ALL_EQUAL and "is 0 %" in reasons[i]
    assert list(np.flatnonzero(flags)) == [i]  # the neighbours of the jump are not flagged
    if 0 < i < obs.size - 1:
        assert flags[i] & DayQuality.EXTENT_JUMP


@settings(max_examples=60, deadline=None)
@given(normal_days, st.data())
def test_a_day_with_a_third_of_its_observations_is_flagged_obs_share(days, data):
    obs, extent = _normal(days)
    i = data.draw(st.integers(0, obs.size - 1))
    obs[i] /= 3
    flags, reasons = judge(_table(obs, extent), QualityRules())
    assert flags[i] & DayQuality.OBS_SHARE and "observed share" in reasons[i]
    assert list(np.flatnonzero(flags)) == [i]


@settings(max_examples=40, deadline=None)
@given(normal_days, st.data())
def test_an_extent_step_that_stays_is_no_jump_one_that_reverts_is(days, data):
    obs, extent = _normal(days)
    i = data.draw(st.integers(1, obs.size - 2))
    stepped = extent.copy()
    stepped[i:] *= 0.5  # a lasting change (a new region, a regime shift): not a bad day
    assert not judge(_table(obs, stepped), QualityRules())[0].any()
    reverting = extent.copy()
    reverting[i] *= 0.5
    flags, _ = judge(_table(obs, reverting), QualityRules())
    assert list(np.flatnonzero(flags)) == [i] and flags[i] == DayQuality.EXTENT_JUMP


@settings(max_examples=40, deadline=None)
@given(normal_days, st.data(), st.floats(0.0, 0.05))
def test_out_of_range_is_judged_against_the_neighbours(days, data, usual):
    obs, extent = _normal(days)
    bad = np.full(obs.size, usual)  # a product flagging land > 100 every day: not suspicious
    assert not judge(_table(obs, extent, bad=bad), QualityRules())[0].any()
    i = data.draw(st.integers(0, obs.size - 1))
    bad[i] += 0.01
    flags, reasons = judge(_table(obs, extent, bad=bad), QualityRules())
    assert list(np.flatnonzero(flags)) == [i] and flags[i] == DayQuality.OUT_OF_RANGE


@settings(max_examples=30, deadline=None)
@given(normal_days, st.data())
def test_days_without_statistics_are_never_flagged_and_k_is_settable(days, data):
    obs, extent = _normal(days)
    gone = data.draw(st.sets(st.integers(0, obs.size - 1)))
    obs[list(gone)] = np.nan
    extent[list(gone)] = np.nan
    flags, _ = judge(_table(obs, extent), QualityRules())
    assert not flags[list(gone)].any()
    # Tighter settings flag a superset of the days: k and the floor are what decide.
    loose, _ = judge(_table(obs, extent), QualityRules(k=0.0, min_obs_deviation=0.0))
    assert not (flags & ~loose).any()
    # A day 0.1 below the others: beyond the default floor (0.05), within a floor of 0.2.
    flat = np.full(obs.size, 0.85)
    flat[obs.size // 2] = 0.75
    assert judge(_table(flat, extent), QualityRules())[0][obs.size // 2] == DayQuality.OBS_SHARE
    assert not judge(_table(flat, extent), QualityRules(min_obs_deviation=0.2))[0].any()


@pytest.mark.parametrize("kwargs", [{"window": 4}, {"window": 1}, {"k": -1.0},
                                    {"min_neighbours": 0}, {"extent_jump": float("nan")}])
def test_bad_rules_are_refused_naming_the_setting(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        QualityRules(**kwargs)


def _neighbour_medians_day_by_day(values, half, min_neighbours):
    """The rule as written: per day, the median and MAD of its known neighbours."""
    median, mad = np.full(values.size, np.nan), np.full(values.size, np.nan)
    for i in range(values.size):
        around = np.concatenate([values[max(0, i - half):i], values[i + 1:i + 1 + half]])
        around = around[~np.isnan(around)]
        if around.size and around.size >= min_neighbours:
            median[i] = np.median(around)
            mad[i] = np.median(np.abs(around - median[i]))
    return median, mad


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(0, 6), st.integers(1, 8), st.data())
def test_neighbour_medians_equal_the_day_by_day_rule_bit_for_bit(n, half, min_neighbours, data):
    values = np.array(data.draw(st.lists(
        st.one_of(st.just(np.nan), st.floats(0, 1, allow_nan=False, width=32)),
        min_size=n, max_size=n)), np.float64)
    got = _neighbour_medians(values, half, min_neighbours)
    want = _neighbour_medians_day_by_day(values, half, min_neighbours)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)  # NaN where NaN, every other value equal


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.data())
def test_day_stats_equal_a_direct_numpy_computation(ny, nx, data):
    values = data.draw(st.lists(st.sampled_from([np.nan, 0.0, 5.0, 15.0, 40.0, 100.0]),
                                min_size=ny * nx, max_size=ny * nx))
    field = np.array(values, np.float32).reshape(ny, nx)
    land = np.array(data.draw(st.lists(st.booleans(), min_size=ny * nx, max_size=ny * nx))
                    ).reshape(ny, nx)
    area = np.arange(1, ny * nx + 1, dtype=float).reshape(ny, nx) * 1e6
    got = day_stats(field, StatCells.make(land, np.arange(nx), np.arange(ny), area), 2)
    ocean = field[~land]
    seen = ocean[~np.isnan(ocean)]
    if ocean.size:
        assert got["obs_fraction"] == pytest.approx(seen.size / ocean.size)
        assert got["extent_raw"] == pytest.approx(
            (area[~land] / 1e6)[~np.isnan(ocean) & (np.nan_to_num(ocean) >= 15)].sum())
        assert got["out_of_range"] == pytest.approx(2 / ocean.size)
    if seen.size:
        assert got["zero_fraction"] == pytest.approx((seen == 0).mean())
        assert got["mean_conc"] == pytest.approx(seen.mean())
        assert (got["min"], got["max"]) == (seen.min(), seen.max())
    else:
        assert got["mean_conc"] is None and got["min"] is None


@settings(max_examples=60, deadline=None)
@given(st.integers(5, 60), st.integers(1, 8), st.integers(0, 4), st.data(),
       st.sampled_from(["missing", "keep"]))
def test_a_changed_verdict_refills_exactly_the_days_that_depend_on_it(n, chunk, tw, data,
                                                                        policy):
    days = [dt.date(2024, 1, 1) + dt.timedelta(i) for i in range(n)]
    state = BuildState(BuildArgs(f"{days[0]}", f"{days[-1]}", FillParams(time_window=tw),
                                 0.85, suspicious=policy))
    keys = [f"{d:%Y%m%d}" for d in days]
    before = data.draw(st.sets(st.sampled_from(keys)))
    after = data.draw(st.sets(st.sampled_from(keys)))
    state.suspicious = dict.fromkeys(before, "x")
    state.filled = set(range(-(-n // chunk)))
    state.mask_done = True
    changed = state.judge(dict.fromkeys(after, "y"), chunk)
    assert sorted(changed) == sorted(keys.index(k) for k in before ^ after)
    stale = days_depending_on(changed, n, tw) if policy == "missing" else set()
    assert state.stale_days(chunk) == sorted(stale)
    assert state.mask_done == (policy == "keep" or not changed)
    assert state.excluded() == (set(after) if policy == "missing" else set())


# --- the builder on a sample archive ------------------------------------------------------------

START, END = dt.date(2024, 4, 1), dt.date(2024, 4, 16)
MISSING = dt.date(2024, 4, 4)
ZERO = dt.date(2024, 4, 8)  # every observed value 0
SPARSE = dt.date(2024, 4, 12)  # a third of its usual observations
STEP = 32
CHUNKS = {"time": 4, "y": 32, "x": 32}


def _index(day: dt.date) -> int:
    return (day - START).days


@pytest.fixture(scope="module")
def bad_archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("bad"), START, END, step=STEP,
                         missing_days=[MISSING], seed=5, zero_days=[ZERO],
                         sparse_days=[SPARSE])


@pytest.fixture(scope="module")
def flagged(bad_archive, tmp_path_factory):
    """A cube of the archive, default policy: suspicious days filled as missing."""
    store = tmp_path_factory.mktemp("flagged") / "c.zarr"
    summary = build(START, END, store, source=bad_archive.root, chunks=CHUNKS, progress=False)
    return store, summary


def _arrays(store) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: group[name][:] for name in (*cube.CUBE_VARS, *cube.GRID_VARS,
                                              *cube.DAY_VARS)}


def test_the_zero_day_and_the_sparse_day_are_flagged_with_their_reason(flagged):
    store, summary = flagged
    quality = _arrays(store)[cube.DAY_QUALITY]
    assert quality[_index(ZERO)] & DayQuality.ALL_EQUAL
    assert quality[_index(SPARSE)] & DayQuality.OBS_SHARE
    assert np.flatnonzero(quality).tolist() == [_index(ZERO), _index(SPARSE)]
    found = cube.suspicious_days(zarr.open_group(str(store), mode="r"))
    assert list(found) == [ZERO, SPARSE]
    assert "every observed ocean value is 0 %" in found[ZERO]
    assert "observed share" in found[SPARSE]
    text = summary.text()
    assert "suspect   20240408: every observed ocean value is 0 %" in text
    assert "suspect   20240412: observed share" in text and "filled as missing days" in text


def test_the_day_statistics_say_what_happened(flagged, bad_archive):
    arrays = _arrays(flagged[0])
    obs = arrays[cube.OBS_FRACTION]
    usual = np.nanmedian(obs)
    assert np.isnan(obs[_index(MISSING)]) and arrays[cube.DAY_QUALITY][_index(MISSING)] == 0
    assert obs[_index(SPARSE)] == pytest.approx(usual / 3, rel=0.15)
    assert arrays[cube.ZERO_FRACTION][_index(ZERO)] == 1.0
    assert arrays[cube.MEAN_CONC][_index(ZERO)] == 0.0
    assert arrays[cube.EXTENT_RAW][_index(ZERO)] == 0.0
    assert 1e6 < np.nanmedian(arrays[cube.EXTENT_RAW]) < 3e7  # km2: Arctic-sized


def test_the_fill_around_a_suspicious_day_equals_the_fill_with_it_missing(
        flagged, bad_archive, tmp_path):
    gone = write_archive(tmp_path / "gone", START, END, step=STEP, seed=5,
                         missing_days=[MISSING, ZERO, SPARSE])
    store = tmp_path / "gone.zarr"
    build(START, END, store, source=gone.root, chunks=CHUNKS, progress=False)
    got, want = _arrays(flagged[0]), _arrays(store)
    for name in (cube.CONC, cube.FLAG, *cube.GRID_VARS):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # ... while the suspicious days' raw data stay in the cube
    assert np.nanmax(got[cube.RAW][_index(SPARSE)]) > 0
    assert np.nanmax(got[cube.RAW][_index(ZERO)]) == 0
    assert np.isnan(want[cube.RAW][_index(ZERO)]).all()


def test_suspicious_keep_uses_the_day_as_data(flagged, bad_archive, tmp_path, capsys):
    store = tmp_path / "keep.zarr"
    code = main(["build", "--start", f"{START:%Y%m%d}", "--end", f"{END:%Y%m%d}",
                 "--store", str(store), "--source", str(bad_archive.root),
                 "--chunks", "4,32,32", "--suspicious", "keep", "--quiet"])
    assert code == 0
    assert "kept as data (--suspicious keep)" in capsys.readouterr().out
    kept, missing = _arrays(store), _arrays(flagged[0])
    np.testing.assert_array_equal(kept[cube.DAY_QUALITY], missing[cube.DAY_QUALITY])
    np.testing.assert_array_equal(kept[cube.RAW], missing[cube.RAW])
    zero = _index(ZERO)
    seen = ~np.isnan(kept[cube.RAW][zero])
    assert (kept[cube.FLAG][zero][seen] == cube.FillFlag.OBSERVED).all()
    assert (kept[cube.CONC][zero][seen] == 0).all()
    assert (missing[cube.FLAG][zero][seen] == cube.FillFlag.FILLED).any()
    assert missing[cube.CONC][zero].max() > 0.5  # filled from its neighbours' ice
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["suspicious_policy"] == "keep"


def test_bad_suspicious_arguments_are_one_line_and_exit_2(bad_archive, tmp_path, capsys):
    code = main(["build", "--start", "20240401", "--end", "20240402", "--store",
                 str(tmp_path / "x.zarr"), "--source", str(bad_archive.root),
                 "--suspicious-window", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "--suspicious-window" in err and len(err.strip().splitlines()) == 1


def test_update_judges_again_the_days_whose_neighbours_arrived(flagged, bad_archive, tmp_path):
    store = tmp_path / "grown.zarr"
    build(START, SPARSE, store, source=bad_archive.root, chunks=CHUNKS, progress=False)
    first = _arrays(store)[cube.DAY_QUALITY]
    # the sparse day is the last: its extent cannot be seen to revert yet
    assert first[_index(SPARSE)] == DayQuality.OBS_SHARE
    summary = update(store, END, source=bad_archive.root, progress=False)
    assert SPARSE in summary.suspicious
    grown, fresh = _arrays(store), _arrays(flagged[0])
    assert grown[cube.DAY_QUALITY][_index(SPARSE)] == DayQuality.OBS_SHARE | \
        DayQuality.EXTENT_JUMP
    for name in (cube.DAY_QUALITY, *cube.DAY_STATS, cube.CONC, cube.FLAG):
        np.testing.assert_array_equal(grown[name], fresh[name], err_msg=name)
    assert cube.suspicious_days(zarr.open_group(str(store), mode="r")) == \
        cube.suspicious_days(zarr.open_group(str(flagged[0]), mode="r"))


def test_dataset_skips_windows_that_touch_a_suspicious_day(flagged):
    from sicube.ml.dataset import SICDataset

    store = flagged[0]
    every = SICDataset(store, START, END, input_length=2, pred_length=1)
    skipping = SICDataset(store, START, END, input_length=2, pred_length=1,
                          skip_suspicious=True)
    bad = {int(f"{ZERO:%Y%m%d}"), int(f"{SPARSE:%Y%m%d}")}
    assert any(bad & set(row) for row in every.get_times().tolist())
    assert not any(bad & set(row) for row in skipping.get_times().tolist())
    assert len(skipping) == len(every) - 6  # 3 windows touch each of the two days


def test_info_lists_the_suspicious_days_with_their_reason(flagged, capsys):
    assert main(["info", str(flagged[0])]) == 0
    out = capsys.readouterr().out
    assert "suspicious days: 2, filled as missing days" in out
    assert "  20240408: every observed ocean value is 0 %" in out
    assert "  20240412: observed share" in out
