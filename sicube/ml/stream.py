"""`SICStream`: a `SICDataset`'s items, visited Zarr chunk group by chunk group.

Map-style access (`SICDataset[i]`, its `loader`) decompresses every chunk an item touches, once
per item; a stream reads each chunk group's frames in one go and cuts the group's items from
memory, so each chunk is decompressed about once per epoch. The plan (`dataset.plan`) says
which items form a group (`SamplePlan.groups`) and how an epoch is shared among DDP ranks
and DataLoader workers (`sicube.ml.sample_plan.shard_items`); this module only walks it,
through the dataset's public methods. Speeds: benchmarks/RESULTS.md, "Dataset".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from sicube.errors import BadInput, require_extra
from sicube.ml.reader import DEFAULT_PREFETCH, read_ahead
from sicube.ml.sample_plan import positive_int, shard_items

require_extra("torch", "sicube.ml.stream", "torch")
import torch  # noqa: E402
from torch.utils.data import IterableDataset, get_worker_info  # noqa: E402

if TYPE_CHECKING:
    from sicube.ml.channels import Block
    from sicube.ml.dataset import SICDataset

__all__ = ["SICStream"]


class SICStream(IterableDataset):
    """A `SICDataset`'s items, visited chunk group by chunk group.

    Items are grouped by the Zarr chunk their window starts in (time) and their patch
    starts in (space); a group's frames are read and decompressed in one go, then its
    items are cut from memory. Groups are shuffled each epoch, items within
    `groups_in_flight` groups are shuffled together, so each chunk is decompressed about
    once per epoch.

    Sharing an epoch: the epoch's groups, in their shuffled order, are laid end to end
    and cut into equal contiguous shares, one per DDP rank, then one per DataLoader worker
    of that rank (`sicube.ml.sample_plan.shard_items`). Every item is read at most once per epoch
    across all ranks and every rank gets len(dataset) // world_size items: the last
    len(dataset) % world_size items of the epoch's order (fewer than world_size, different
    ones each epoch) are dropped, as DistributedSampler(drop_last=True) does. Without DDP
    (world_size 1) nothing is dropped.

    Parameters
    ----------
    dataset : the SICDataset (fixed tiling or none; not random_patches).
    shuffle : shuffle group order and items; False gives groups and items in order.
    seed : base of the shuffle. With world_size 1 each epoch (each `iter`) draws a new
        order from it and torch's seed, identically in every worker. With world_size > 1
        the order depends only on seed, `set_epoch` and how often the copy was iterated,
        so every rank draws the same one: call `set_epoch(n)` each epoch, as with
        DistributedSampler.
    groups_in_flight : groups whose items are mixed together (memory: that many blocks).
    block_bytes : memory budget for one group's block; sets how many time chunks a
        group spans.
    batch_size : yield stacked batches of this many items, written straight into shared
        memory in a worker (use ``DataLoader(stream, batch_size=None)``); workers take
        whole batches, so only the epoch's last batch (of this rank) may be short, and
        ``len(stream)`` is the number of batches whatever the number of workers. None
        yields single items.
    prefetch : group reads kept in flight per process (DataLoader worker), on reader
        threads, ahead of the items being yielded; their chunk requests overlap, so a
        remote store's latency is paid about once per `prefetch` groups instead of once
        per group. 1 reads one group after the other (no threads). Memory: up to
        groups_in_flight + prefetch blocks per worker. The default, 4, costs nothing on
        local disk (benchmarks/bench_stream.py: the same samples/s as 1) and keeps a
        round trip hidden while a group's items take at least a quarter of it; deeper
        only helps with tiny groups and costs a block each (benchmarks/RESULTS.md,
        "Remote streaming").
    rank, world_size : this process's DDP rank and the number of ranks; by default taken
        from `torch.distributed` when it is initialised (at construction), else 0 and 1.
    """

    def __init__(self, dataset: SICDataset, shuffle: bool = True, seed: int = 0,
                 groups_in_flight: int = 2, block_bytes: int = 256 * 2**20,
                 batch_size: int | None = None, prefetch: int = DEFAULT_PREFETCH,
                 rank: int | None = None, world_size: int | None = None):
        if dataset.plan.random_patches is not None:
            raise BadInput("random_patches: a stream needs a fixed patch tiling")
        self.batch_size = None if batch_size is None else positive_int(batch_size,
                                                                        "batch_size")
        self.dataset = dataset
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.groups_in_flight = positive_int(groups_in_flight, "groups_in_flight")
        self.block_bytes = positive_int(block_bytes, "block_bytes")
        self.prefetch = positive_int(prefetch, "prefetch")
        self.rank, self.world_size = _ddp_rank(rank, world_size)
        self._epoch = 0  # explicit epoch (set_epoch) ...
        self._iterations = 0  # ... plus how often this copy was iterated
        self.groups = self._group_items()

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch number that seeds the shuffle (as DistributedSampler does)."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        """What this rank's DataLoader (``batch_size=None``) yields per epoch, all its workers
        together: items, or batches with `batch_size` (the last one may be short)."""
        items = len(self.dataset) // self.world_size
        return items if self.batch_size is None else -(-items // self.batch_size)

    def _group_items(self) -> list[np.ndarray]:
        """Item indices of each chunk group, in cube order."""
        ds = self.dataset
        return ds.plan.groups(len(ds.plan.time_channels), self.block_bytes)

    def _rng(self) -> np.random.Generator:
        info = get_worker_info()
        # Workers share the DataLoader's base seed (fresh per epoch without persistent
        # workers), and all copies count iterations in step: every worker draws the same
        # order, and a new one each epoch. Ranks do not share that seed: with several,
        # only the seed, the epoch and the iteration count (in step on every rank) count.
        base = (info.seed - info.id) if info is not None and self.world_size == 1 else 0
        return np.random.default_rng([self.seed, self._epoch, self._iterations, base % 2**63])

    def shares(self, worker: int = 0, workers: int = 1,
               rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Item indices this rank's `worker` reads this epoch, piece by piece (group part)."""
        n = len(self.groups)
        order = rng.permutation(n) if self.shuffle and rng is not None else np.arange(n)
        segments = shard_items([len(g) for g in self.groups], order, self.rank,
                               self.world_size, worker, workers, unit=self.batch_size or 1)
        return [self.groups[g][a:b] for g, a, b in segments]

    def __iter__(self) -> Iterator:
        rng = self._rng()
        self._iterations += 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.shares(worker, workers, rng)
        ds = self.dataset
        patches = ds.plan.patches
        executor = ds.reader.executor(self.prefetch) if self.prefetch > 1 else None
        blocks_ahead = read_ahead(self._load, mine, self.prefetch, executor)
        pending: list = []  # items of the batch being filled
        try:
            for start in range(0, len(mine), self.groups_in_flight):
                batch = mine[start:start + self.groups_in_flight]
                blocks = [next(blocks_ahead) for _ in batch]
                owner = np.concatenate([np.full(len(items), i)
                                        for i, items in enumerate(batch)])
                items = np.concatenate(batch)
                sequence = (rng.permutation(len(items)) if self.shuffle
                            else np.arange(len(items)))
                for j in sequence:
                    window, patch = divmod(int(items[j]), len(patches))
                    y, x = patches[patch]
                    if self.batch_size is None:
                        yield ds.item(blocks[owner[j]], window, int(y), int(x))
                        continue
                    pending.append((blocks[owner[j]], window, int(y), int(x)))
                    if len(pending) == self.batch_size:
                        yield self._stack(pending)
                        pending = []
            if pending:
                yield self._stack(pending)
        finally:
            blocks_ahead.close()  # cancel reads still in flight

    def _stack(self, pending: list) -> tuple[torch.Tensor, ...]:
        batch = self.dataset.empty_batch(len(pending))
        for b, (block, window, y, x) in enumerate(pending):
            self.dataset.item_into(block, window, y, x, batch, b)
        return batch

    def _load(self, items: np.ndarray) -> Block:
        """One group's block: all frames and the bounding region of its items."""
        plan = self.dataset.plan
        windows, patches = np.divmod(items, len(plan.patches))
        frames = np.unique(np.concatenate([plan.inputs[windows].ravel(),
                                           plan.targets[windows].ravel()]))
        origins = plan.patches[np.unique(patches)]
        y, x = origins.min(0)
        h = origins[:, 0].max() - y + plan.patch_shape[0]
        w = origins[:, 1].max() - x + plan.patch_shape[1]
        return self.dataset.load_block(frames, int(y), int(x), int(h), int(w))


def _ddp_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): the explicit ones, else torch.distributed's, else (0, 1)."""
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise BadInput("rank/world_size: give both or neither")
    world_size = positive_int(world_size, "world_size")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
            or not 0 <= rank < world_size:
        raise BadInput(f"rank: must be an integer in [0, {world_size}), got {rank!r}")
    return int(rank), world_size
