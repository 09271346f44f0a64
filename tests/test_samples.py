"""The sample plan (sicube.ml.sample_plan) against the original's rule written out, and its JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sicube.errors import BadInput
from sicube.ml.sample_plan import (
    SamplePlan,
    WindowReport,
    chunk_groups,
    select_windows,
    tile_patches,
    window_indices,
)

rules = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.integers(1, 4),
                  st.integers(1, 3), st.integers(1, 4))


def seed_windows(n_days, input_length, pred_length, input_gap, pred_shift, pred_gap,
                 samples_gap):
    """The original toolbox's loop as README.md ("Train from a cube") states it."""
    input_span = input_gap * (input_length - 1) + 1
    pred_span = pred_gap * (pred_length - 1) + 1
    total = input_span + pred_shift + pred_span - 1
    out, i = [], 0
    while i + total <= n_days:
        out.append(([i + k for k in range(0, input_span, input_gap)],
                    [i + input_span + pred_shift - 1 + k for k in range(0, pred_span, pred_gap)]))
        i += samples_gap
    return out


@settings(max_examples=200, deadline=None)
@given(n_days=st.integers(0, 40), rule=rules)
def test_window_indices_give_every_window_of_the_seed_rule(n_days, rule):
    inputs, targets = window_indices(n_days, *rule)
    got = [(i.tolist(), t.tolist()) for i, t in zip(inputs, targets, strict=True)]
    assert got == seed_windows(n_days, *rule)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rule=rules, allow_unobserved=st.booleans())
def test_selected_windows_skip_unobserved_days_unless_allowed(data, rule, allow_unobserved):
    n_days = data.draw(st.integers(1, 40))
    a = data.draw(st.integers(0, n_days - 1))
    b = data.draw(st.integers(a, n_days - 1))
    observed = np.array(data.draw(st.lists(st.booleans(), min_size=n_days, max_size=n_days)))
    expected = [(np.add(i, a).tolist(), np.add(t, a).tolist())
                for i, t in seed_windows(b - a + 1, *rule)]
    if not allow_unobserved:
        expected = [(i, t) for i, t in expected if observed[i + t].all()]
    if not expected:
        with pytest.raises(BadInput):
            select_windows((a, b), rule, None if allow_unobserved else observed)
        return
    inputs, targets, report = select_windows((a, b), rule,
                                             None if allow_unobserved else observed)
    assert [(i.tolist(), t.tolist()) for i, t in zip(inputs, targets, strict=True)] == expected
    assert report.kept == len(expected)
    assert report.candidates - report.unobserved == report.kept
    assert (a <= inputs).all() and (targets <= b).all()


def test_quality_filter_counts_inputs_before_targets():
    fraction = np.array([0.0, 0.9, 0.0, 0.0, 0.0, 0.9])
    inputs, targets, report = select_windows((0, 5), (1, 1, 1, 1, 1, 1), None, fraction,
                                             (0.5, 0.5))
    # windows (0,1) (1,2) (2,3) (3,4) (4,5): inputs 1 too filled once, targets 1 and 5
    assert inputs[:, 0].tolist() == [2, 3]
    assert (report.too_filled_inputs, report.too_filled_targets) == (1, 2)


@given(h=st.integers(1, 30), w=st.integers(1, 30), data=st.data())
def test_tiling_covers_every_in_frame_patch_once(h, w, data):
    ph, pw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    sy, sx = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    origins = tile_patches((h, w), (ph, pw), (sy, sx))
    assert {tuple(o) for o in origins.tolist()} == {
        (y, x) for y in range(0, h - ph + 1, sy) for x in range(0, w - pw + 1, sx)}
    assert len(origins) == len({tuple(o) for o in origins.tolist()})


def test_chunk_groups_partition_the_items_by_chunk():
    patches = tile_patches((32, 32), (8, 8), (8, 8))
    starts = np.arange(0, 20, 2)
    groups = chunk_groups(starts, patches, (0, 32, 0, 32), 1, (4, 16, 16), (32, 32), (8, 8),
                          1, 4 * 4 * 24 * 24)  # one time chunk per group
    items = np.concatenate(groups)
    assert sorted(items.tolist()) == list(range(len(starts) * len(patches)))
    for group in groups:
        windows, p = np.divmod(group, len(patches))
        assert len(set((starts[windows] // 4).tolist())) == 1
        assert len(set(map(tuple, (patches[p] // 16).tolist()))) == 1


def test_plan_round_trips_through_json():
    inputs, targets, report = select_windows((2, 20), (3, 2, 1, 1, 1, 2), None,
                                             np.linspace(0, 1, 19), (0.8, 0.9),
                                             np.arange(20240101, 20240131))
    plan = SamplePlan(np.arange(20240101, 20240131), (2, 20), inputs, targets, (0, 32, 0, 24),
                      2, (16, 12), (8, 4), tile_patches((16, 12), (8, 4), (8, 4)), None,
                      (4, 16, 16), (40, 30), report)
    again = SamplePlan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()
    assert len(again) == len(plan) == len(inputs) * 6
    np.testing.assert_array_equal(again.times(), plan.times())
    assert isinstance(again.report, WindowReport) and str(again.report) == str(report)


@settings(max_examples=50, deadline=None)
@given(scales=st.dictionaries(st.sampled_from(["sea_ice_conc", "anomaly", "filled"]),
                              st.tuples(st.floats(-1e6, 1e6), st.floats(1e-12, 1e6)), max_size=3),
       flags=st.tuples(st.booleans(), st.booleans()), fraction=st.booleans(),
       random_patches=st.none() | st.integers(1, 5))
def test_every_field_of_the_plan_round_trips_to_an_equal_plan(scales, flags, fraction,
                                                               random_patches):
    days = np.arange(20240101, 20240131)
    inputs, targets, report = select_windows(
        (0, 29), (2, 3, 2, 1, 1, 3), np.arange(30) % 7 != 3,
        np.linspace(0, 1, 30) if fraction else None, (0.7, 0.9) if fraction else None, days)
    patches = (np.zeros((random_patches, 2), np.int64) if random_patches
               else tile_patches((20, 15), (6, 5), (3, 4)))
    plan = SamplePlan(days, (0, 29), inputs, targets, (2, 42, 0, 30), 2, (20, 15), (6, 5),
                      patches, random_patches, (8, 16, 16), (48, 40), report,
                      input_channels=("sea_ice_conc", "anomaly", "filled"),
                      target_channels=("sea_ice_conc", "anomaly"), apply_land_mask=flags[0],
                      return_mask=flags[1], normalize=scales, climatology="clim.zarr")
    again = SamplePlan.from_json(plan.to_json())
    assert again == plan
    assert again.normalize == plan.normalize  # floats exact, pairs as tuples
    assert again.input_channels == plan.input_channels and again.climatology == "clim.zarr"
    assert (again.apply_land_mask, again.return_mask, again.random_patches) == \
        (*flags, random_patches)
    assert again.time_channels == ("anomaly", "filled", "sea_ice_conc")
    np.testing.assert_array_equal(again.inputs, plan.inputs)
    np.testing.assert_array_equal(again.patches, plan.patches)
    for got, want in zip(again.groups(3, 2**20), plan.groups(3, 2**20), strict=True):
        np.testing.assert_array_equal(got, want)
    changed = SamplePlan.from_json(plan.to_json())
    changed.targets = changed.targets[:-1]
    assert changed != plan  # equality looks at the items, not only the parameters


def test_a_plan_without_channels_reads_as_sea_ice_concentration_only():
    """A plan saved before it named its channels (to_json of the first SamplePlan)."""
    inputs, targets, report = select_windows((0, 9), (2, 1, 1, 1, 1, 1), None)
    plan = SamplePlan(np.arange(20240101, 20240111), (0, 9), inputs, targets, (0, 8, 0, 8), 1,
                      (8, 8), (8, 8), np.zeros((1, 2), np.int64), None, (4, 8, 8), (8, 8),
                      report)
    data = json.loads(plan.to_json())
    for name in ("input_channels", "target_channels", "apply_land_mask", "return_mask",
                 "normalize", "climatology"):
        del data[name]
    assert SamplePlan.from_json(json.dumps(data)) == plan
    assert plan.input_channels == plan.target_channels == ("sea_ice_conc",)
