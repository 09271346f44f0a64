"""PyTorch datasets of (input, target) time windows read lazily from a sicube cube.

`SICDataset` keeps the original toolbox's `ConsolidatedSICDataset` parameters and window
rule (`sicube.ml.sample_plan.window_indices`) and adds what a training run on the full grid
needs: an index rectangle (ROI), patches, coarsening, extra channels, a land mask and a
quality filter on the share of filled cells. Its parameters make a `SamplePlan` first (what
the items are: pure, JSON-able, `sicube.ml.sample_plan`); the dataset is the torch adapter
that reads the plan's items: through `CubeReader` (`sicube.ml.reader`), only the chunks an
item needs, opened in the process that reads (never at construction), so it works with
DataLoader worker processes (fork or spawn) and with remote stores (any fsspec URL:
http://, s3://, memory://, ...); the channels are made by `sicube.ml.channels`.

`SICDataset.loader(batch_size, ...)` is a DataLoader whose workers read whole batches
straight into shared memory (no collate copy): the fastest way to shuffled items.
`SICStream` (`sicube.ml.stream`) walks the same items grouped by Zarr chunk, so that each
chunk is decompressed about once per epoch instead of once per window that touches it.
Speeds: benchmarks/RESULTS.md, "Dataset".

`unfold_patches` / `fold_patches` are the original's space-to-channel patch helpers.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import os
from collections.abc import Sequence

import numpy as np

from sicube.datacube import cube, versions
from sicube.dates import DateLike
from sicube.errors import BadInput, require_extra
from sicube.ml.channels import CHANNELS, Block, ChannelMaker
from sicube.ml.planner import check_fits
from sicube.ml.reader import DEFAULT_PREFETCH, CubeReader, read_ahead, read_into
from sicube.ml.sample_plan import SamplePlan, WindowReport, positive_int, window_indices

require_extra("torch", "sicube.ml.dataset", "torch")
import torch  # noqa: E402
from torch.utils.data import Dataset, get_worker_info  # noqa: E402

from sicube.ml.stream import SICStream  # noqa: E402  (importable from here, as it always was)

__all__ = ["CHANNELS", "DEFAULT_PREFETCH", "SICDataset", "SICStream", "SamplePlan",
           "WindowReport", "fold_patches", "unfold_patches", "window_indices"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- patch helpers


def unfold_patches(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Fold space into channels: (..., C, H, W) -> (..., C*p*p, H/p, W/p).

    Channel `c*p*p + i*p + j` of the result holds pixel (i, j) of every p x p patch of
    channel c (the layout of `torch.nn.functional.pixel_unshuffle`). `fold_patches` is
    its exact inverse.
    """
    p = _check_patch_factor(frames, patch_size, "patch_size")
    h, w = frames.shape[-2:]
    if h % p or w % p:
        raise BadInput(f"patch_size: {p} does not divide the frame size {h} x {w}")
    return torch.nn.functional.pixel_unshuffle(frames, p)


def fold_patches(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Unfold channels back into space: (..., C*p*p, H/p, W/p) -> (..., C, H, W)."""
    p = _check_patch_factor(patches, patch_size, "patch_size")
    if patches.shape[-3] % (p * p):
        raise BadInput(f"patch_size: {p * p} does not divide the {patches.shape[-3]} channels")
    return torch.nn.functional.pixel_shuffle(patches, p)


def _check_patch_factor(tensor: torch.Tensor, p: int, name: str) -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
        raise BadInput(f"{name}: must be a positive integer, got {p!r}")
    if tensor.ndim < 3:
        raise BadInput(f"{name}: needs a tensor shaped (..., C, H, W), got {tuple(tensor.shape)}")
    return int(p)


# --------------------------------------------------------------------------- dataset


def _empty_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor, in shared memory inside a DataLoader worker."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    # As torch's default_collate does: allocate shared, so the batch is not copied again
    # on its way to the main process.
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)


class SICDataset(Dataset):
    """(inputs, targets) windows of sea-ice concentration from a sicube cube.

    Items are float32 tensors shaped (T, C, H, W): inputs hold `input_length` frames,
    targets `pred_length` frames, channel 0 is `sea_ice_conc` (fraction 0-1). Windows
    follow the original toolbox's rule over the calendar days of [start_time, end_time];
    windows with a frame on a day without a source file are skipped unless
    `allow_unobserved` (those frames are entirely filled).

    Parameters
    ----------
    store : path or fsspec URL of the cube (``cube.zarr``, ``http://host/cube.zarr``,
        ``s3://bucket/cube.zarr``, ``memory://cube.zarr``); `storage_options` go to fsspec.
    start_time, end_time : first and last day (YYYYMMDD int or string, ISO date, date).
    input_length, pred_length, input_gap, pred_shift, pred_gap, samples_gap : the
        original's window parameters (see `window_indices`).
    preload_data : read the selected region of every needed day into memory once, at
        construction; later items come from memory. Otherwise each item reads its chunks.
    roi : (ymin, ymax, xmin, xmax) index rectangle on the cube's grid, ends exclusive.
    coarsen : integer factor; each c x c block becomes the mean over its valid cells (ocean
        for concentration). The ROI's height and width must be multiples of it.
    patch_size, patch_stride : cut the (coarsened) ROI into patches of this size (int or
        (h, w)), stepping by `patch_stride` (default: patch_size); each window x patch is
        one item. Patches that would cross the ROI's far edge are left out.
    random_patches : instead of a fixed tiling, this many patches per window at random
        positions, drawn anew on every access (so anew every epoch).
    variables, target_variables : extra channels after sea_ice_conc for inputs and for
        targets; names in `CHANNELS` (`sicube.ml.channels`).
    apply_land_mask : set every channel but land_mask to 0 on land.
    climatology : a store written by `sicube climatology` on this cube's grid; needed by the
        "anomaly" channel and by ``normalize=True``.
    normalize : scale channels to (value - mean) / std: True takes each channel's mean and
        std from the climatology's ``channel_stats`` (sea_ice_conc, anomaly; others as
        they are), or a mapping {channel: (mean, std)}. Applied before apply_land_mask.
    return_mask : items become (inputs, targets, land) with land (1, H, W) float32,
        1 where the cell (every cell of a coarsened block) is land.
    max_filled_fraction : skip windows with a frame whose share of filled ocean cells
        in the ROI exceeds this; one number or (inputs, targets). Computed once from
        fill_flag, cached in `quality_cache` (True: ~/.cache/sicube; False: not on disk;
        or a directory), and reported in `report`.
    allow_unobserved : keep windows that touch days without data.
    allow_incomplete : read a cube whose build or update has not finished (its unwritten
        cells read as NaN / 0); by default such a cube is refused (`cube.IncompleteCube`).
    skip_suspicious : skip windows that touch a suspicious day (`day_quality` not 0; see
        `cube.suspicious_days`); they count as touching a day without data in `report`.
    storage_options : fsspec options of the store's (and a remote climatology's) file system.
    concurrent_reads : items of a batch (`dataset[[i, j, ...]]`, `loader`) read at once on
        reader threads, so a remote store's per-request latency is paid about once per
        that many items; 1 reads them one after the other.
    snapshot : an icechunk store's snapshot id or tag. An icechunk store is read at one
        snapshot (this one, else the tip of ``main`` at construction) in every process;
        its id is `snapshot` on the object, for a training run to log.

    The object holds no open file or connection: each process opens the store on its
    first read, so it pickles and works with DataLoader workers (fork or spawn).
    `memory://` stores live in one process: use them with fork or without workers.
    `dataset[[i, j, ...]]` gives a stacked batch; `loader` builds a DataLoader on that.

    The parameters that say what the items are make a `SamplePlan` first
    (`SamplePlan.from_cube`), kept in `plan`: `plan.to_json()` saves it and
    `SICDataset.from_plan(SamplePlan.from_json(text), store)` reads the same items again.

    Examples
    --------
    >>> ds = SICDataset("cube.zarr", 20240401, 20240430, input_length=5, pred_length=3,
    ...                 roi=(1000, 2024, 800, 1824), patch_size=256)
    >>> for inputs, targets in ds.loader(8, shuffle=True, num_workers=4):
    ...     ...  # inputs (8, 5, 1, 256, 256), targets (8, 3, 1, 256, 256)
    """

    def __init__(self, store, start_time: DateLike, end_time: DateLike, input_length: int,
                 pred_length: int, input_gap: int = 1, pred_shift: int = 1, pred_gap: int = 1,
                 samples_gap: int = 1, preload_data: bool = False, *,
                 roi: Sequence[int] | None = None, coarsen: int = 1,
                 patch_size: int | Sequence[int] | None = None,
                 patch_stride: int | Sequence[int] | None = None,
                 random_patches: int | None = None,
                 variables: Sequence[str] = (), target_variables: Sequence[str] = (),
                 apply_land_mask: bool = False, return_mask: bool = False,
                 max_filled_fraction: float | Sequence[float] | None = None,
                 quality_cache: bool | str | os.PathLike = True,
                 allow_unobserved: bool = False, storage_options: dict | None = None,
                 allow_incomplete: bool = False, skip_suspicious: bool = False,
                 concurrent_reads: int = DEFAULT_PREFETCH,
                 climatology: str | os.PathLike | None = None,
                 normalize: bool | dict | None = None, snapshot: str | None = None):
        concurrent_reads = positive_int(concurrent_reads, "concurrent_reads")
        store, self.snapshot = versions.pin(store, snapshot, storage_options)
        plan = SamplePlan.from_cube(
            store, start_time, end_time, input_length, pred_length, input_gap, pred_shift,
            pred_gap, samples_gap, roi=roi, coarsen=coarsen, patch_size=patch_size,
            patch_stride=patch_stride, random_patches=random_patches, variables=variables,
            target_variables=target_variables, apply_land_mask=apply_land_mask,
            return_mask=return_mask, max_filled_fraction=max_filled_fraction,
            quality_cache=quality_cache, allow_unobserved=allow_unobserved,
            skip_suspicious=skip_suspicious, climatology=climatology, normalize=normalize,
            storage_options=storage_options, allow_incomplete=allow_incomplete)
        self._open(plan, store, storage_options, allow_incomplete, preload_data,
                   concurrent_reads)

    @classmethod
    def from_plan(cls, plan: SamplePlan, store, *, storage_options: dict | None = None,
                  allow_incomplete: bool = False, preload_data: bool = False,
                  concurrent_reads: int = DEFAULT_PREFETCH,
                  snapshot: str | None = None) -> SICDataset:
        """The dataset of exactly `plan`'s items (a saved ``dataset.plan``), read from `store`.

        `store` is the cube the plan was made on, a copy of it anywhere (another path or
        URL), or the same cube since updated; BadInput when its grid or days differ from
        the plan's, or when the anomaly channel's climatology (`plan.climatology`, opened
        with `storage_options` too) cannot be read. Nothing is recomputed: the windows,
        patches, channels and scales are the plan's. `snapshot` as for the constructor.

        >>> Path("plan.json").write_text(dataset.plan.to_json())
        >>> again = SICDataset.from_plan(SamplePlan.from_json(Path("plan.json").read_text()),
        ...                              "https://host/cube.zarr")
        """
        if not isinstance(plan, SamplePlan):
            raise BadInput(f"plan: expected a SamplePlan (SamplePlan.from_json reads a saved "
                           f"one), got {type(plan).__name__}")
        dataset = cls.__new__(cls)
        store, dataset.snapshot = versions.pin(store, snapshot, storage_options)
        if "anomaly" in plan.time_channels:  # a climatology gone is said now, not per item
            CubeReader(store, storage_options, climatology=plan.climatology).climatology_mean()
        dataset._open(plan, store, storage_options, allow_incomplete, preload_data,
                      positive_int(concurrent_reads, "concurrent_reads"))
        return dataset

    def _open(self, plan: SamplePlan, store, storage_options: dict | None,
              allow_incomplete: bool, preload_data: bool, concurrent_reads: int) -> None:
        """Make this dataset the reader of `plan`'s items from `store`."""
        self.plan = plan
        self.store = store
        self.storage_options = storage_options
        self.allow_incomplete = bool(allow_incomplete)
        self.concurrent_reads = concurrent_reads
        # The per-process store handle; construction reads through its own, not kept.
        self.reader = CubeReader(store, storage_options, self.allow_incomplete,
                                 plan.climatology)
        group = cube.open_group(store, allow_incomplete=self.allow_incomplete,
                                storage_options=storage_options)
        check_fits(plan, group, store)
        self.channels = ChannelMaker.from_group(group, plan)
        self.preload_data = bool(preload_data)
        self._preloaded = (self.channels.read_block(group, plan.frames(), 0, 0,
                                                    *plan.frame_shape, self._climatology())
                           if preload_data else None)
        log.info("SICDataset %s %s..%s: %s", store, self.days[0], self.days[-1], plan.report)

    # ---- what the plan says, under the names the dataset always had (see PLAN_ATTRIBUTES)

    @property
    def variables(self) -> tuple[str, ...]:
        """The extra channels of the inputs, after sea_ice_conc."""
        return self.plan.input_channels[1:]

    @property
    def target_variables(self) -> tuple[str, ...]:
        """The extra channels of the targets, after sea_ice_conc."""
        return self.plan.target_channels[1:]

    @property
    def days(self) -> list[dt.date]:
        """The calendar days of [start_time, end_time]."""
        a, b = self.plan.span
        return [dt.date(d // 10000, d // 100 % 100, d % 100)
                for d in self.plan.day_ints[a:b + 1].tolist()]

    # ---- lazy store access

    def _climatology(self):
        """The climatology's mean array in this process, when the anomaly channel needs it."""
        return self.reader.climatology_mean() if self.channels.needs_climatology else None

    def load_block(self, frames: np.ndarray, y: int, x: int, h: int, w: int) -> Block:
        """A block of the time-varying channels of `frames` over an output-pixel region.

        Read through this process's store handle; with preload_data, the preloaded block
        (it holds every frame and the whole region).
        """
        if self._preloaded is not None:
            return self._preloaded
        return self.channels.read_block(self.reader.arrays(), frames, y, x, h, w,
                                        self._climatology())

    # ---- items

    def __len__(self) -> int:
        return len(self.plan.inputs) * len(self.plan.patches)

    def _locate(self, index: int) -> tuple[int, int, int]:
        """Window and patch origin (output pixels) of item `index`."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"item {index} of a dataset of {n}")
        window, patch = divmod(index % n, len(self.plan.patches))
        if self.random_patches is not None:
            h, w = self.frame_shape
            ph, pw = self.patch_shape
            y = int(torch.randint(0, h - ph + 1, ()).item())
            x = int(torch.randint(0, w - pw + 1, ()).item())
            return window, y, x
        y, x = self.plan.patches[patch]
        return window, int(y), int(x)

    def __getitem__(self, index: int | Sequence[int]):
        """Item `index`; a list of indices gives a whole batch, stacked (see `loader`)."""
        if isinstance(index, (list, tuple, np.ndarray, torch.Tensor)):
            return self._batch([int(i) for i in index])
        return self._item_at(*self._locate(int(index)))

    def _batch(self, indices: list[int]):
        """Items `indices` stacked into (B, T, C, H, W) tensors, read in place.

        In a DataLoader worker the tensors live in shared memory, so they reach the main
        process without a copy; when only sea_ice_conc is asked for on consecutive days,
        Zarr decompresses straight into them, with no intermediate array either.
        """
        plan = self.plan
        ti, tp = plan.inputs.shape[1], plan.targets.shape[1]
        ph, pw = plan.patch_shape
        n = len(indices)
        in_place = (plan.input_channels == plan.target_channels == (cube.CONC,)
                    and plan.coarsen == 1 and not plan.apply_land_mask and not plan.normalize
                    and self._preloaded is None
                    and np.all(np.diff(np.concatenate([plan.inputs, plan.targets], 1)) == 1))
        places = [self._locate(index) for index in indices]  # random patches: drawn in order
        if not in_place:
            batch = self.empty_batch(n)

            def read_item(b: int) -> None:
                window, y, x = places[b]
                self.item_into(self._read_item(window, y, x), window, y, x, batch, b)

            self._each(read_item, n)
            return batch
        frames = _empty_batch((n, ti + tp, 1, ph, pw))
        masks = _empty_batch((n, 1, ph, pw)) if self.return_mask else None
        y0, x0 = self.roi[0], self.roi[2]
        conc = self.reader.arrays()[cube.CONC]

        def read_in_place(b: int) -> None:
            window, y, x = places[b]
            first = int(plan.inputs[window, 0])
            read_into(conc, first, first + ti + tp, slice(y0 + y, y0 + y + ph),
                      slice(x0 + x, x0 + x + pw), frames[b, :, 0].numpy())
            if masks is not None:
                masks[b, 0] = torch.from_numpy(self.channels.land_out[y:y + ph, x:x + pw])

        self._each(read_in_place, n)
        inputs, targets = frames[:, :ti], frames[:, ti:]
        return (inputs, targets) if masks is None else (inputs, targets, masks)

    def _each(self, read, n: int) -> None:
        """read(b) for b in range(n), `concurrent_reads` at a time on reader threads."""
        depth = min(self.concurrent_reads, n)
        executor = self.reader.executor(depth) if depth > 1 else None
        for _ in read_ahead(read, range(n), depth, executor):
            pass

    def _read_item(self, window: int, y: int, x: int) -> Block:
        """A block holding the item of `window` at (y, x) (exactly it, unless preloaded)."""
        frames = np.union1d(self.plan.inputs[window], self.plan.targets[window])
        return self.load_block(frames, y, x, *self.patch_shape)

    def _item_at(self, window: int, y: int, x: int):
        return self.item(self._read_item(window, y, x), window, y, x)

    def loader(self, batch_size: int, shuffle: bool = False, drop_last: bool = False,
               **kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader of batches that each worker reads in one go, straight into shared memory.

        Same batches as ``DataLoader(self, batch_size, shuffle)`` but without the collate
        copy; `kwargs` go to DataLoader (num_workers, persistent_workers, generator, ...).
        Workers on an icechunk store are spawned, not forked (icechunk does not survive a fork).
        """
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

        if versions.is_versioned(self.store) and kwargs.get("num_workers"):
            kwargs.setdefault("multiprocessing_context", "spawn")

        generator = kwargs.get("generator")
        order = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        return DataLoader(self, batch_size=None,
                          sampler=BatchSampler(order, positive_int(batch_size, "batch_size"),
                                               drop_last), **kwargs)

    def item(self, block: Block, window: int, y: int, x: int):
        """The item of `window` at patch origin (y, x), cut from a block that holds it."""
        inputs = self._stack(block, self.input_channels, self.plan.inputs[window], y, x)
        targets = self._stack(block, self.target_channels, self.plan.targets[window], y, x)
        if not self.return_mask:
            return inputs, targets
        ph, pw = self.patch_shape
        land = self.channels.land_out[y:y + ph, x:x + pw].astype(np.float32)[None]
        return inputs, targets, torch.from_numpy(land)

    def item_into(self, block: Block, window: int, y: int, x: int, batch: tuple,
                   b: int) -> None:
        """Write the item of `window` at (y, x) into slot b of batch tensors (one copy)."""
        self._stack(block, self.input_channels, self.plan.inputs[window], y, x,
                    out=batch[0][b].numpy())
        self._stack(block, self.target_channels, self.plan.targets[window], y, x,
                    out=batch[1][b].numpy())
        if self.return_mask:
            ph, pw = self.patch_shape
            batch[2][b, 0] = torch.from_numpy(self.channels.land_out[y:y + ph, x:x + pw])

    def empty_batch(self, n: int) -> tuple[torch.Tensor, ...]:
        """Uninitialised (inputs, targets[, mask]) batch tensors for `n` items, for item_into."""
        plan = self.plan
        ph, pw = plan.patch_shape
        batch = (_empty_batch((n, plan.inputs.shape[1], len(plan.input_channels), ph, pw)),
                 _empty_batch((n, plan.targets.shape[1], len(plan.target_channels), ph, pw)))
        return (*batch, _empty_batch((n, 1, ph, pw))) if self.return_mask else batch

    def _stack(self, block: Block, channels: Sequence[str], frames: np.ndarray,
               y: int, x: int, out: np.ndarray | None = None) -> torch.Tensor | None:
        """(T, C, h, w) float32 of `channels` on `frames` at patch origin (y, x).

        Returns a tensor, or writes into `out` when given.
        """
        result = self.channels.frames(block, channels, frames, y, x, out)
        return None if result is None else torch.from_numpy(result)

    # ---- whole-dataset views (the original's API)

    def get_times(self) -> np.ndarray:
        """YYYYMMDD of every item's frames, inputs then targets: (len, input_length+pred_length)."""
        return self.plan.times()

    def get_inputs(self) -> torch.Tensor:
        """Every item's inputs stacked: (len, T, C, H, W). Holds the whole set in memory."""
        return torch.stack([self[i][0] for i in range(len(self))])

    def get_targets(self) -> torch.Tensor:
        """Every item's targets stacked: (len, T, C, H, W). Holds the whole set in memory."""
        return torch.stack([self[i][1] for i in range(len(self))])

    # The original toolbox's names, for code ported from ConsolidatedSICDataset.
    GetTimes = get_times
    GetInputs = get_inputs
    GetTargets = get_targets

    @property
    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Cube day indices of the kept windows' inputs and targets."""
        return self.plan.inputs.copy(), self.plan.targets.copy()

    @property
    def patch_origins(self) -> np.ndarray:
        """Output-pixel (y, x) origin of each patch of the tiling, in item order."""
        return self.plan.patches.copy()

    def stream(self, shuffle: bool = True, seed: int = 0, groups_in_flight: int = 2,
               block_bytes: int = 256 * 2**20, batch_size: int | None = None,
               prefetch: int = DEFAULT_PREFETCH, rank: int | None = None,
               world_size: int | None = None) -> SICStream:
        """This dataset's items as a `SICStream` (grouped by chunk; see there)."""
        return SICStream(self, shuffle=shuffle, seed=seed, groups_in_flight=groups_in_flight,
                         block_bytes=block_bytes, batch_size=batch_size, prefetch=prefetch,
                         rank=rank, world_size=world_size)

    def __repr__(self) -> str:
        return (f"SICDataset({self.store!s}, {self.days[0]}..{self.days[-1]}, {len(self)} items "
                f"of {self.frame_shape if self.random_patches is None else self.patch_shape}; "
                f"{self.report})")


# The plan's attributes, readable on the dataset under the names it always had (dataset.roi
# is dataset.plan.roi): read-only, the plan is the one place that holds them.
PLAN_ATTRIBUTES = ("roi", "coarsen", "frame_shape", "patch_shape", "random_patches", "chunks",
                   "grid_shape", "report", "input_channels", "target_channels",
                   "apply_land_mask", "return_mask", "climatology", "time_channels")
for _name in PLAN_ATTRIBUTES:
    setattr(SICDataset, _name, property(operator.attrgetter(f"plan.{_name}"),
                                        doc=f"The plan's `{_name}` (see `SamplePlan`)."))
del _name
