"""SICStream beyond one process: shares among DDP ranks and workers, reads from a slow server."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from sicube import testing
from sicube.errors import BadInput
from sicube.ml.dataset import SICDataset
from sicube.ml.sample_plan import shard_items

START = dt.date(2024, 4, 1)
N_DAYS = 30
SHAPE = (48, 40)
# Items: windows (3 in + 2 out, days 5, 6 and 17 missing) x 3 x 2 patches of 16 x 16.
PARAMS = dict(input_length=3, pred_length=2, roi=(0, 48, 0, 32), patch_size=16,
              quality_cache=False)
BLOCK = 16 * 16 * 4 * 8 * 2  # small blocks: many groups, several per worker


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "cube.zarr"
    return testing.synthetic_cube(path, start=START, n_days=N_DAYS, shape=SHAPE)


def _dataset(store) -> SICDataset:
    return SICDataset(str(store), 20240401, 20240430, **PARAMS)


def _key(item) -> str:
    """An item's identity: its frames' values (unique with random data)."""
    return hashlib.sha1(item[0].numpy().tobytes() + item[1].numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------- the sharing rule


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=12), st.integers(1, 5),
       st.integers(1, 4), st.randoms(use_true_random=False))
def test_shares_cover_the_epoch_once_in_equal_parts(sizes, world_size, workers, random):
    order = list(range(len(sizes)))
    random.shuffle(order)
    epoch = [(g, i) for g in order for i in range(sizes[g])]  # the epoch's item order
    n = len(epoch) // world_size
    seen = []
    for rank in range(world_size):
        rank_items = []
        worker_counts = []
        for worker in range(workers):
            segments = shard_items(sizes, np.array(order), rank, world_size, worker, workers)
            items = [(g, i) for g, a, b in segments for i in range(a, b)]
            assert all(b > a for _, a, b in segments)
            assert len(segments) == len({g for g, _, _ in segments})  # a group once a share
            worker_counts.append(len(items))
            rank_items += items
        assert len(rank_items) == n  # equal counts per rank
        assert max(worker_counts) - min(worker_counts) <= 1
        assert rank_items == epoch[rank * n:(rank + 1) * n]  # contiguous, in epoch order
        seen += rank_items
    assert len(set(seen)) == len(seen)  # nobody reads an item twice
    assert set(seen) == set(epoch[:n * world_size])  # only the remainder is dropped
    assert len(epoch) - len(seen) == len(epoch) % world_size < world_size


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=12), st.integers(1, 3),
       st.integers(1, 4), st.integers(1, 5), st.randoms(use_true_random=False))
def test_worker_shares_are_whole_batches(sizes, world_size, workers, unit, random):
    """With a batch size (unit), a rank's workers cut its share into the same batches
    whatever their number: only the rank's last batch is short."""
    order = list(range(len(sizes)))
    random.shuffle(order)
    epoch = [(g, i) for g in order for i in range(sizes[g])]
    n = len(epoch) // world_size
    for rank in range(world_size):
        shares = [[(g, i) for g, a, b in shard_items(sizes, np.array(order), rank,
                                                     world_size, w, workers, unit)
                   for i in range(a, b)] for w in range(workers)]
        assert sum(shares, []) == epoch[rank * n:(rank + 1) * n]
        counts = [len(share) for share in shares if share]
        assert all(c % unit == 0 for c in counts[:-1])  # whole batches but the last
        assert sum(-(-c // unit) for c in counts) == -(-n // unit)


def test_shard_items_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        shard_items([3, 4], np.arange(2), rank=2, world_size=2)


# ---------------------------------------------------------------- explicit ranks


@pytest.mark.slow
def test_explicit_ranks_share_an_epoch_and_set_epoch_reshuffles(cube_path):
    ds = _dataset(cube_path)
    every = collections.Counter(_key(ds[k]) for k in range(len(ds)))
    assert len(every) == len(ds) and len(ds) % 2 == 0  # even: nothing dropped
    orders = []
    for epoch in (0, 1):
        ranks = []
        for rank in (0, 1):
            stream = ds.stream(seed=4, block_bytes=BLOCK, rank=rank, world_size=2)
            stream.set_epoch(epoch)
            assert len(stream) == len(ds) // 2
            loader = DataLoader(stream, batch_size=None, num_workers=2,
                                multiprocessing_context="fork")
            ranks.append([_key(item) for item in loader])
        assert [len(r) for r in ranks] == [len(ds) // 2] * 2
        union = collections.Counter(ranks[0] + ranks[1])
        assert union == every  # one epoch's items, each once
        orders.append(ranks)
    assert orders[0] != orders[1]
    # The same seed and epoch give the same order on any rank, run after run.
    again = ds.stream(seed=4, block_bytes=BLOCK, rank=1, world_size=2)
    again.set_epoch(1)
    loader = DataLoader(again, batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert [_key(item) for item in loader] == orders[1][1]


@pytest.mark.slow
def test_ranks_yield_the_same_number_of_batches(cube_path):
    ds = _dataset(cube_path)
    counts = []
    assert len(ds) % 4 == 2  # two items dropped
    for rank in range(4):
        stream = ds.stream(seed=2, block_bytes=BLOCK, batch_size=4, rank=rank, world_size=4)
        loader = DataLoader(stream, batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
        batches = [len(b[0]) for b in loader]
        counts.append((len(batches), sum(batches)))
    assert counts == [counts[0]] * 4 and counts[0][1] == len(ds) // 4


@pytest.mark.parametrize("workers", [0, 2])
def test_len_of_a_batched_stream_is_the_batches_it_yields(cube_path, workers):
    ds = _dataset(cube_path)
    stream = ds.stream(seed=1, block_bytes=BLOCK, batch_size=4, rank=1, world_size=2)
    loader = DataLoader(stream, batch_size=None, num_workers=workers,
                        multiprocessing_context="fork" if workers else None)
    with warnings.catch_warnings():
        # DataLoader warns when an IterableDataset yields more than its len said
        warnings.filterwarnings("error", "Length of IterableDataset")
        sizes = [len(b[0]) for b in loader]
    assert len(loader) == len(stream) == len(sizes) == -(-(len(ds) // 2) // 4)
    assert sizes[:-1] == [4] * (len(sizes) - 1) and sum(sizes) == len(ds) // 2


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0), (None, 2), (1, None)])
def test_bad_rank_or_world_size(cube_path, rank, world_size):
    with pytest.raises(BadInput, match="rank|world_size"):
        _dataset(cube_path).stream(rank=rank, world_size=world_size)


def test_prefetch_must_be_positive(cube_path):
    with pytest.raises(BadInput, match="prefetch"):
        _dataset(cube_path).stream(prefetch=0)


# ---------------------------------------------------------------- DDP, two real ranks


def _ddp_rank(rank: int, world_size: int, port: int, store: str, out: str) -> None:
    """One DDP rank: gloo on 127.0.0.1, a SICStream with 2 DataLoader workers, 2 epochs."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        stream = _dataset(store).stream(seed=9, block_bytes=BLOCK)  # rank from dist
        loader = DataLoader(stream, batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
        epochs = []
        for epoch in (0, 1):
            stream.set_epoch(epoch)
            epochs.append([_key(item) for item in loader])
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"rank": stream.rank, "world_size": stream.world_size, "epochs": epochs}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_ranks_two_workers_read_each_item_once(cube_path, tmp_path):
    ds = _dataset(cube_path)
    every = {_key(ds[k]) for k in range(len(ds))}
    torch.multiprocessing.spawn(_ddp_rank, args=(2, _free_port(), str(cube_path),
                                                 str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in results] == [(0, 2), (1, 2)]
    for epoch in (0, 1):
        ranks = [r["epochs"][epoch] for r in results]
        assert len(ranks[0]) == len(ranks[1]) == len(ds) // 2
        union = ranks[0] + ranks[1]
        assert len(set(union)) == len(union)  # no duplicates
        assert set(union) == every  # one epoch's items
    assert results[0]["epochs"][0] != results[0]["epochs"][1]  # set_epoch reshuffles


# ---------------------------------------------------------------- a slow remote store


def test_remote_stream_equals_local_and_overlaps_requests(cube_path):
    local = [_key(item) for item in _dataset(cube_path).stream(seed=1, block_bytes=BLOCK)]
    peaks = {}
    with testing.serve_directory(cube_path.parent, latency=0.05) as served:
        remote = _dataset(f"{served.url}/{cube_path.name}")
        for prefetch in (1, 4):
            served.peak = 0
            stream = remote.stream(seed=1, block_bytes=BLOCK, prefetch=prefetch)
            assert [_key(item) for item in stream] == local
            peaks[prefetch] = served.peak
    # Zarr fetches one group's chunks together; read ahead, several groups' requests
    # wait on the server together.
    assert peaks[4] >= 2 * peaks[1], peaks


def test_remote_batches_read_their_items_together(cube_path):
    local = _dataset(cube_path)
    indices = list(range(0, len(local), 7))
    expected = local[indices]
    peaks = {}
    with testing.serve_directory(cube_path.parent, latency=0.05) as served:
        for reads in (1, 8):
            remote = SICDataset(f"{served.url}/{cube_path.name}", 20240401, 20240430,
                                concurrent_reads=reads, **PARAMS)
            remote[0]  # open the arrays first: only the batch's reads count
            served.peak = 0
            got = remote[indices]
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
            peaks[reads] = served.peak
    assert peaks[8] >= 2 * peaks[1], peaks


def test_concurrent_reads_must_be_positive(cube_path):
    with pytest.raises(BadInput, match="concurrent_reads"):
        SICDataset(str(cube_path), 20240401, 20240430, concurrent_reads=0, **PARAMS)
