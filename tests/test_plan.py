"""The build plan's rules on every shape (no I/O): sicube/pipeline/plan.py."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sicube.params import MASK_THRESHOLD, FillParams
from sicube.pipeline.plan import FILL_BATCH_CHUNKS, BuildArgs, BuildState, fill_batches

START = dt.date(2024, 1, 1)


def _state(n_days: int, time_window: int) -> BuildState:
    end = START + dt.timedelta(days=n_days - 1)
    fill = FillParams(time_window=time_window)
    return BuildState(BuildArgs(f"{START}", f"{end}", fill, MASK_THRESHOLD))


def _n_chunks(n_days: int, chunk: int) -> int:
    return -(-n_days // chunk)


def _key(state: BuildState, i: int) -> str:
    return f"{state.days[i]:%Y%m%d}"


shapes = st.tuples(st.integers(1, 60), st.integers(1, 9), st.integers(0, 12))


@given(shapes)
def test_batches_write_every_day_once_and_read_their_whole_window(shape):
    n, chunk, tw = shape
    batches = fill_batches(n, chunk, tw)
    written = [d for b in batches for d in range(b.start, b.stop)]
    assert written == list(range(n))
    assert [c for b in batches for c in b.chunks] == list(range(_n_chunks(n, chunk)))
    sizes = {b.read_stop - b.read_start for b in batches if len(b.chunks) == FILL_BATCH_CHUNKS}
    assert len(sizes) <= 1  # every whole batch reads as many days, wherever it lies
    for b in batches:
        assert b.read_start <= max(0, b.start - tw) and b.read_stop >= min(n, b.stop + tw)
        assert 0 <= b.read_start and b.read_stop <= n


def _run(state: BuildState, chunk: int, arrives) -> list[int]:
    """One run as the builder executes it: look for the unobserved days, record what came."""
    looked = state.unobserved()
    changed = []
    for i in looked:
        status = arrives(i)
        state.record_day(_key(state, i), status, {"name": "f"} if status == "ok" else "why")
        if status == "ok":
            changed.append(i)
    state.invalidate(changed, chunk)
    state.filled = set(range(_n_chunks(len(state.days), chunk)))
    state.mask_done = True
    return looked


@settings(max_examples=60, deadline=None)
@given(shapes, st.lists(st.lists(st.sampled_from(["ok", "missing", "failed"]), min_size=60,
                                 max_size=60), min_size=1, max_size=4))
def test_every_day_is_ingested_exactly_once_over_any_runs(shape, runs):
    n, chunk, tw = shape
    state = _state(n, tw)
    ingested: list[int] = []
    for outcome in runs:
        observed_before = {i for i in range(n) if _key(state, i) in state.observed}
        looked = _run(state, chunk, lambda i, outcome=outcome: outcome[i])
        assert not set(looked) & observed_before  # observed days are never looked for
        ingested += [i for i in looked if _key(state, i) in state.observed]
    assert sorted(ingested) == sorted(set(ingested))  # no day read from a source twice
    assert len(ingested) == len(state.observed)
    looked_days = set(state.observed) | state.missing | set(state.failed)
    assert looked_days == {_key(state, i) for i in range(n)}
    assert not set(state.observed) & (state.missing | set(state.failed))


@settings(max_examples=80, deadline=None)
@given(shapes, st.integers(1, 40), st.data())
def test_an_updates_plan_equals_a_fresh_builds_plan(shape, added, data):
    """After build(n) + update(n + added), every day whose fill is kept holds exactly what a
    fresh build of the whole span writes there: none of the raw days within `time_window` of
    it changed; and the refill touches no more than that (not whole chunks)."""
    n, chunk, tw = shape
    total = n + added
    first = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    later = data.draw(st.lists(st.booleans(), min_size=total, max_size=total))
    state = _state(n, tw)
    _run(state, chunk, lambda i: "ok" if first[i] else "missing")
    state.extend(START + dt.timedelta(days=total - 1), chunk)
    changed = []
    for i in state.unobserved():
        status = "ok" if later[i] else "missing"
        state.record_day(_key(state, i), status, {} if status == "ok" else "404")
        if status == "ok":
            changed.append(i)
    state.invalidate(changed, chunk)
    stale = state.stale_days(chunk)
    for d in range(total):
        gained = d >= n  # a day the old cube did not have
        touched = any(abs(d - x) <= tw for x in changed)
        assert (d in stale) == (gained or touched), d
    refill = fill_batches(total, chunk, tw, stale)
    assert [d for b in refill for d in range(b.start, b.stop)] == stale  # each once, in order
    for b in refill:
        assert b.read_start <= max(0, b.start - tw) and b.read_stop >= min(total, b.stop + tw)
        assert b.chunks == tuple(range(b.start // chunk, (b.stop - 1) // chunk + 1))
        assert b.stop - b.start <= FILL_BATCH_CHUNKS * chunk
    for b in refill:  # once each batch is done, every chunk is current
        state.record_fill(b)
    assert state.stale_days(chunk) == [] and state.is_complete(chunk) == state.mask_done
    assert {i for i in range(total) if _key(state, i) in state.observed} == \
        {i for i in range(n) if first[i]} | set(changed)


@given(shapes, st.data())
def test_a_refill_of_any_days_writes_them_once_in_as_few_batches(shape, data):
    """Any set of stale days: each written by exactly one batch, no batch longer than a
    whole one, and neighbouring stale days in one batch unless that batch would be longer."""
    n, chunk, tw = shape
    stale = sorted(data.draw(st.sets(st.integers(0, n - 1))))
    batches = fill_batches(n, chunk, tw, stale)
    assert [d for b in batches for d in range(b.start, b.stop)] == stale
    size = FILL_BATCH_CHUNKS * chunk
    assert all(b.stop - b.start <= size for b in batches)
    for before, after in zip(batches, batches[1:], strict=False):
        if before.stop == after.start:  # one run of days, cut: merged it would be too long
            assert after.stop - before.start > size


def test_the_state_survives_json():
    state = _state(20, 3)
    state.record_day("20240103", "ok", {"name": "a.nc", "sha256": "ab"})
    state.record_day("20240104", "missing", "404")
    state.record_day("20240105", "failed", "HTTP 500")
    state.filled = {0, 2}
    state.flag_counts = {0: [1, 2, 3, 4]}
    state.rewrite = {1}
    state.mask_days = {"20240103"}
    again = BuildState.from_data(json.loads(json.dumps(state.to_data())))
    assert again == state
    assert again.unobserved() == [i for i in range(20) if i != 2]
