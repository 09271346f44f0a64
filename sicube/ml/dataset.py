"""PyTorch datasets of (input, target) time windows read lazily from a sicube cube.

`SICDataset` keeps the original toolbox's `ConsolidatedSICDataset` parameters and window
rule (`sicube.ml.sample_plan.window_indices`) and adds what a training run on the full grid needs:
an index rectangle (ROI), patches, coarsening, extra channels, a land mask and a quality filter
on the share of filled cells. It reads straight from the Zarr arrays, only the chunks an
item needs, and opens the store in the process that reads (never at construction), so
it works with DataLoader worker processes (fork or spawn) and with remote stores (any
fsspec URL: http://, s3://, memory://, ...).

`SICDataset.loader(batch_size, ...)` is a DataLoader whose workers read whole batches
straight into shared memory (no collate copy): the fastest way to shuffled items.
`SICStream` walks the same items grouped by Zarr chunk, so that each chunk is
decompressed about once per epoch instead of once per window that touches it.
Speeds: benchmarks/RESULTS.md, "Dataset".

`unfold_patches` / `fold_patches` are the original's space-to-channel patch helpers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sicube.cache import cache_dir
from sicube.datacube import cube, versions
from sicube.datacube.store import atomic_file
from sicube.dates import DateLike, parse_date, yyyymmdd
from sicube.errors import BadInput, require_extra
from sicube.ml.reader import CubeReader, decode_days, read_ahead, read_frames, read_into
from sicube.ml.sample_plan import (
    SamplePlan,
    WindowReport,
    positive_int,
    select_windows,
    shard_items,
    tile_patches,
    window_indices,
)

require_extra("torch", "sicube.ml.dataset", "torch")
import torch  # noqa: E402
from torch.utils.data import Dataset, IterableDataset, get_worker_info  # noqa: E402

__all__ = ["CHANNELS", "SICDataset", "SICStream", "WindowReport", "fold_patches",
           "unfold_patches", "window_indices"]

log = logging.getLogger(__name__)

# Channels an item can carry besides sea_ice_conc, and what each holds.
CHANNELS = {
    cube.CONC: "filled concentration, fraction 0-1 (land 0)",
    cube.RAW: "source concentration in percent, NaN where missing (as stored)",
    cube.FLAG: "fill_flag code 0-4 as a float (0 observed, 1 filled, 2 no neighbour, 3 land, "
               "4 pole hole)",
    "filled": "1 where sea_ice_conc is not an observation (fill_flag 1, 2 or 4), else 0",
    cube.LAND: "1 on land (static)",
    cube.NAN_RATIO: "share of observed days the cell was missing (static)",
    "day_of_year": "day of year / 366, constant over the frame",
    "day_of_year_sin": "sin(2 pi day_of_year / 365.25), constant over the frame",
    "day_of_year_cos": "cos(2 pi day_of_year / 365.25), constant over the frame",
    "anomaly": "sea_ice_conc minus the climatology's mean of its day of year (needs "
               "climatology=, from `sicube climatology`)",
}
# Which stored array each time-varying channel is read from.
_SOURCE = {cube.CONC: cube.CONC, cube.RAW: cube.RAW, cube.FLAG: cube.FLAG, "filled": cube.FLAG,
           "anomaly": cube.CONC}
_STATIC = (cube.LAND, cube.NAN_RATIO)
# Group reads a SICStream keeps in flight per worker (see SICStream, `prefetch`).
DEFAULT_PREFETCH = 4


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


# --------------------------------------------------------------------------- reading


def _empty_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor, in shared memory inside a DataLoader worker."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    # As torch's default_collate does: allocate shared, so the batch is not copied again
    # on its way to the main process.
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)


def _coarsen_sum(values: np.ndarray, c: int) -> np.ndarray:
    """Sum over c x c blocks of the last two axes."""
    *lead, h, w = values.shape
    return values.reshape(*lead, h // c, c, w // c, c).sum(axis=(-3, -1))


def _coarsen(name: str, values: np.ndarray, ocean: np.ndarray, c: int) -> np.ndarray:
    """Coarsen one channel by c: the mean over the block's valid cells.

    Valid cells are ocean cells for sea_ice_conc and `filled` (land's zeros would dilute
    coastal blocks), non-NaN cells for sea_ice_conc_raw, and all cells for static fields.
    A block without a valid cell is 0 (NaN for sea_ice_conc_raw).
    """
    if c == 1:
        return values
    if name == cube.RAW:
        valid = ~np.isnan(values)
        total = _coarsen_sum(np.where(valid, values, 0), c)
        count = _coarsen_sum(valid, c)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / count).astype(np.float32)
    if name in (cube.CONC, "filled", "anomaly"):
        count = _coarsen_sum(ocean, c)
        total = _coarsen_sum(values * ocean, c)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
    return (_coarsen_sum(values.astype(np.float32), c) / (c * c)).astype(np.float32)


@dataclasses.dataclass
class _Block:
    """Time-varying channels at output resolution over some frames and a region.

    arrays[name] is (len(frames), h, w); frames are sorted cube day indices; (oy, ox) is
    the block's origin in output pixels of the ROI.
    """

    frames: np.ndarray
    oy: int
    ox: int
    arrays: dict[str, np.ndarray]

    def take(self, name: str, frames: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
        rows = slice(y - self.oy, y - self.oy + h)
        cols = slice(x - self.ox, x - self.ox + w)
        data = self.arrays[name]
        positions = np.searchsorted(self.frames, frames)
        first, last = int(positions[0]), int(positions[-1])
        if last - first + 1 == len(positions):  # consecutive frames: a view, no copy
            return data[first:last + 1, rows, cols]
        return data[positions, rows, cols]


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


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return positive_int(value[0], name), positive_int(value[1], name)
    n = positive_int(value, name)
    return n, n


# --------------------------------------------------------------------------- dataset


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
        targets; names in `CHANNELS`.
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
        self.concurrent_reads = positive_int(concurrent_reads, "concurrent_reads")
        store, self.snapshot = versions.pin(store, snapshot, storage_options)
        self.store = store
        self.storage_options = storage_options
        self.allow_incomplete = bool(allow_incomplete)
        # The per-process store handle; construction reads through its own, not kept.
        self.reader = CubeReader(store, storage_options, self.allow_incomplete)
        group = cube.open_group(store, allow_incomplete=self.allow_incomplete,
                                storage_options=storage_options)
        self._setup_time(group, start_time, end_time)
        self._setup_space(group, roi, coarsen, patch_size, patch_stride, random_patches)
        self._setup_channels(group, variables, target_variables, apply_land_mask, return_mask,
                             load_land=max_filled_fraction is not None)
        self._setup_climatology(group, climatology, normalize)
        self._setup_windows(group, (input_length, pred_length, input_gap, pred_shift, pred_gap,
                                    samples_gap), allow_unobserved, max_filled_fraction,
                            quality_cache, skip_suspicious)
        self.plan = SamplePlan(self._day_ints, self._span, self._inputs, self._targets,
                               self.roi, self.coarsen, self.frame_shape, self.patch_shape,
                               self._patches, self.random_patches, self.chunks,
                               self.grid_shape, self.report)
        self.preload_data = bool(preload_data)
        self._preloaded = (self._read_block(group, self._all_frames(), 0, 0, *self.frame_shape)
                           if preload_data else None)
        log.info("SICDataset %s %s..%s: %s", store, self.days[0], self.days[-1], self.report)

    # ---- construction

    def _setup_time(self, group, start_time: DateLike, end_time: DateLike) -> None:
        """The cube's calendar and the span [start_time, end_time] on it."""
        cube_days = decode_days(group["time"])
        first = parse_date(start_time, "start_time")
        last = parse_date(end_time, "end_time")
        if last < first:
            raise BadInput(f"end_time: {last} is before start_time {first}")
        if first < cube_days[0] or first > cube_days[-1]:
            raise BadInput(f"start_time: {first} is outside the cube "
                           f"({cube_days[0]}..{cube_days[-1]})")
        if last > cube_days[-1]:
            raise BadInput(f"end_time: {last} is outside the cube "
                           f"({cube_days[0]}..{cube_days[-1]})")
        self._span = (cube_days.index(first), cube_days.index(last))  # cube day indices
        self.days = cube_days[self._span[0]:self._span[1] + 1]
        self._day_ints = np.array([yyyymmdd(d) for d in cube_days], np.int64)
        self._doy = np.array([d.timetuple().tm_yday for d in cube_days], np.float32)

    def _setup_space(self, group, roi, coarsen, patch_size, patch_stride,
                     random_patches) -> None:
        """ROI in grid cells, coarsening, the output frame and the patches."""
        conc = group[cube.CONC]
        _, ny, nx = conc.shape
        self.chunks = tuple(int(c) for c in conc.chunks)
        self.grid_shape = (int(ny), int(nx))
        if roi is None:
            roi = (0, ny, 0, nx)
        try:
            y0, y1, x0, x1 = (int(v) for v in roi)
        except (TypeError, ValueError):
            raise BadInput(f"roi: expected (ymin, ymax, xmin, xmax), got {roi!r}") from None
        if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
            raise BadInput(f"roi: {roi!r} is not a non-empty rectangle inside the "
                           f"{ny} x {nx} grid (ymin < ymax <= {ny}, xmin < xmax <= {nx})")
        self.roi = (y0, y1, x0, x1)
        self.coarsen = c = positive_int(coarsen, "coarsen")
        if (y1 - y0) % c or (x1 - x0) % c:
            raise BadInput(f"coarsen: {c} does not divide the ROI's {y1 - y0} x {x1 - x0} cells")
        self.frame_shape = ((y1 - y0) // c, (x1 - x0) // c)
        self._setup_patches(patch_size, patch_stride, random_patches)

    def _setup_channels(self, group, variables, target_variables, apply_land_mask,
                        return_mask, load_land: bool) -> None:
        """The channels of inputs and targets, and the static fields they need."""
        self.variables = self._check_channels(variables, "variables")
        self.target_variables = self._check_channels(target_variables, "target_variables")
        self.input_channels = (cube.CONC, *self.variables)
        self.target_channels = (cube.CONC, *self.target_variables)
        extra = (*self.variables, *self.target_variables)
        c = self.coarsen
        if c > 1 and cube.FLAG in extra:
            raise BadInput("variables: fill_flag codes cannot be averaged; with coarsen > 1 "
                           "ask for 'filled' (the share of filled cells) instead")
        self.apply_land_mask = bool(apply_land_mask)
        self.return_mask = bool(return_mask)
        y0, y1, x0, x1 = self.roi
        if load_land or c > 1 or self.apply_land_mask or self.return_mask or cube.LAND in extra:
            self._land_full = np.asarray(group[cube.LAND][y0:y1, x0:x1])
        else:
            self._land_full = np.zeros((y1 - y0, x1 - x0), np.uint8)
        self._ocean_full = self._land_full == 0
        # At output resolution; a coarsened block is land when it has no ocean cell.
        self._land_out = (_coarsen_sum(self._ocean_full, c) == 0 if c > 1
                          else ~self._ocean_full)
        self._static = {cube.LAND: _coarsen(cube.LAND, self._land_full, self._ocean_full, c)}
        if cube.NAN_RATIO in extra:
            ratio = np.asarray(group[cube.NAN_RATIO][y0:y1, x0:x1], np.float32)
            self._static[cube.NAN_RATIO] = _coarsen(cube.NAN_RATIO, ratio, self._ocean_full, c)

    def _setup_climatology(self, group, climatology, normalize) -> None:
        """The climatology the anomaly channel subtracts, and the per-channel scaling."""
        from sicube.analysis.climatology import CHANNEL_STATS, MEAN, day_slot, open_climatology

        channels = {*self.input_channels, *self.target_channels}
        self.climatology = None if climatology is None else str(climatology)
        self._clim = None  # the climatology's mean array, opened per process
        if "anomaly" in channels and climatology is None:
            raise BadInput("variables: the anomaly channel needs climatology= (a store "
                           "written by `sicube climatology`)")
        stats: dict = {}
        if climatology is not None:
            clim = open_climatology(climatology)
            if clim[MEAN].shape[1:] != tuple(group[cube.CONC].shape[1:]):
                raise BadInput(f"climatology: {climatology} is on a {clim[MEAN].shape[1:]} "
                               f"grid, the cube on {tuple(group[cube.CONC].shape[1:])}")
            stats = json.loads(clim.attrs.get(CHANNEL_STATS, "{}"))
            days = np.array([f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}"
                             for d in self._day_ints], "datetime64[D]")
            self._slots = day_slot(days)
        if normalize is True:
            if not stats:
                raise BadInput("normalize: True takes the statistics from climatology=; "
                               "give one, or a mapping {channel: (mean, std)}")
            normalize = {k: v for k, v in stats.items() if k in channels}
        self._norm = {}
        for name, pair in dict(normalize or {}).items():
            if name not in channels:
                raise BadInput(f"normalize: {name!r} is not one of the channels "
                               f"{', '.join(sorted(channels))}")
            mean, std = (float(v) for v in pair)
            if not std > 0:
                raise BadInput(f"normalize: {name} std must be positive, got {std}")
            self._norm[name] = (np.float32(mean), np.float32(std))

    def _climatology_means(self, frames: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """The climatology's mean (NaN as 0) on each frame's day of year, over a region."""
        import zarr

        from sicube.analysis.climatology import MEAN
        from sicube.datacube.store import open_store

        if self._clim is None or self._clim[0] != os.getpid():
            # through the one opener, which keeps a remote store's file system per process
            self._clim = (os.getpid(),
                          zarr.open_group(open_store(self.climatology), mode="r")[MEAN])
        slots, back = np.unique(self._slots[frames], return_inverse=True)
        means = np.nan_to_num(self._clim[1].oindex[slots, rows, cols])
        return means[back]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_clim"] = None  # each process opens its own
        return state

    def _setup_windows(self, group, rule: tuple[int, ...], allow_unobserved: bool,
                       max_filled_fraction, quality_cache, skip_suspicious: bool = False
                       ) -> None:
        """The windows of the original's rule over the span, less the skipped ones (a
        suspicious day, with `skip_suspicious`, is skipped as a day without data)."""
        a, b = self._span
        observed = None if allow_unobserved else np.asarray(group[cube.OBSERVED][:], bool)
        if skip_suspicious:
            if cube.DAY_QUALITY not in group:
                raise BadInput(f"skip_suspicious: {self.store} has no {cube.DAY_QUALITY} "
                               "(built before sicube flagged suspicious days); rebuild it")
            usable = np.asarray(group[cube.DAY_QUALITY][:]) == 0
            observed = usable if observed is None else observed & usable
        fraction = limits = None
        if max_filled_fraction is not None:
            limits = self._check_fraction(max_filled_fraction)
            fraction = self._filled_fractions(group, a, b, quality_cache)
        self._inputs, self._targets, self.report = select_windows(
            self._span, rule, observed, fraction, limits, self._day_ints)

    def _setup_patches(self, patch_size, patch_stride, random_patches) -> None:
        h, w = self.frame_shape
        self.random_patches = (None if random_patches is None
                               else positive_int(random_patches, "random_patches"))
        if patch_size is None:
            if patch_stride is not None or random_patches is not None:
                raise BadInput("patch_size: needed with patch_stride or random_patches")
            self.patch_shape = (h, w)
            self._patches = np.zeros((1, 2), np.int64)
            return
        ph, pw = _pair(patch_size, "patch_size")
        if ph > h or pw > w:
            raise BadInput(f"patch_size: {ph} x {pw} is larger than the (coarsened) "
                           f"ROI of {h} x {w}")
        self.patch_shape = (ph, pw)
        if self.random_patches is not None:
            if patch_stride is not None:
                raise BadInput("patch_stride: random_patches places patches anywhere")
            self._patches = np.zeros((self.random_patches, 2), np.int64)  # drawn per item
            return
        stride = _pair(patch_stride if patch_stride is not None else (ph, pw), "patch_stride")
        self._patches = tile_patches((h, w), (ph, pw), stride)

    @staticmethod
    def _check_channels(names: Sequence[str], argument: str) -> tuple[str, ...]:
        if isinstance(names, str):
            names = (names,)
        unknown = [n for n in names if n not in CHANNELS or n == cube.CONC]
        if unknown:
            choices = ", ".join(n for n in CHANNELS if n != cube.CONC)
            raise BadInput(f"{argument}: unknown {', '.join(map(repr, unknown))}; "
                           f"choose from {choices}")
        return tuple(names)

    @staticmethod
    def _check_fraction(value) -> tuple[float, float]:
        pair = value if isinstance(value, (tuple, list)) else (value, value)
        try:
            pair = tuple(float(v) for v in pair)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2 or not all(0 <= v <= 1 for v in pair):
            raise BadInput(f"max_filled_fraction: expected a share in [0, 1] or a pair "
                           f"(inputs, targets), got {value!r}")
        return pair

    def _filled_fractions(self, group, a: int, b: int, quality_cache) -> np.ndarray:
        """Per day a..b: the share of ROI ocean cells whose value was filled (cached)."""
        cache_file = None
        if quality_cache:
            directory = (cache_dir("filled_fraction") if quality_cache is True
                         else Path(os.fspath(quality_cache)))
            # The key names the cube's content: its group attributes carry the build time
            # and per-day provenance, so a rebuilt cube gets a new entry.
            where = str(self.store)
            if "://" not in where:  # a local path: the same cube from any working directory
                where = os.path.abspath(where)
            key = json.dumps([where, self.roi, a, b,
                              self._day_ints[a], dict(group.attrs)], sort_keys=True, default=str)
            cache_file = directory / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
            with contextlib.suppress(OSError, ValueError, KeyError):
                cached = json.loads(cache_file.read_text())
                if len(cached["fraction"]) == b - a + 1:
                    log.info("filled fractions from cache %s", cache_file)
                    return np.array(cached["fraction"], np.float64)
        y0, y1, x0, x1 = self.roi
        ocean = self._ocean_full
        n_ocean = max(int(ocean.sum()), 1)
        flags = group[cube.FLAG]
        step = self.chunks[0]
        fractions = []
        # Chunk-aligned batches of days: each chunk is read once, memory stays bounded.
        for t0 in range(a - a % step, b + 1, step):
            lo, hi = max(t0, a), min(t0 + step, b + 1)
            block = np.asarray(flags[lo:hi, y0:y1, x0:x1])
            filled = np.isin(block, cube.NOT_OBSERVED_FLAGS) & ocean
            fractions.append(filled.sum(axis=(1, 2)) / n_ocean)
        fraction = np.concatenate(fractions)
        if cache_file is not None:
            with contextlib.suppress(OSError):
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(cache_file) as tmp:
                    tmp.write_text(json.dumps({"store": str(self.store), "roi": self.roi,
                                               "days": [int(self._day_ints[a]),
                                                        int(self._day_ints[b])],
                                               "fraction": fraction.tolist()}))
        return fraction

    # ---- lazy store access

    def _arrays(self) -> dict:
        """The cube's Zarr arrays by name, opened once in the calling process."""
        return self.reader.arrays()

    @property
    def time_channels(self) -> tuple[str, ...]:
        """The asked-for channels read from the cube per day (what a block holds), sorted."""
        return tuple(sorted({name for name in (*self.input_channels, *self.target_channels)
                             if name in _SOURCE}))

    def load_block(self, frames: np.ndarray, y: int, x: int, h: int, w: int) -> _Block:
        """A block of the time-varying channels of `frames` over an output-pixel region.

        Read through this process's store handle; with preload_data, the preloaded block
        (it holds every frame and the whole region).
        """
        if self._preloaded is not None:
            return self._preloaded
        return self._read_block(self._arrays(), frames, y, x, h, w)

    def _read_block(self, group, frames: np.ndarray, y: int, x: int, h: int, w: int) -> _Block:
        """Read the time-varying channels of `frames` over an output-pixel region."""
        c = self.coarsen
        rows = slice(self.roi[0] + y * c, self.roi[0] + (y + h) * c)
        cols = slice(self.roi[2] + x * c, self.roi[2] + (x + w) * c)
        ocean = self._ocean_full[y * c:(y + h) * c, x * c:(x + w) * c]
        arrays: dict[str, np.ndarray] = {}
        flags = None
        for name in self.time_channels:
            if name in ("filled", cube.FLAG):
                if flags is None:
                    flags = read_frames(group[cube.FLAG], frames, rows, cols)
                values = (np.isin(flags, cube.NOT_OBSERVED_FLAGS).astype(np.float32)
                          if name == "filled" else flags.astype(np.float32))
            elif name == "anomaly":
                values = (read_frames(group[cube.CONC], frames, rows, cols)
                          - self._climatology_means(frames, rows, cols)).astype(np.float32)
            else:
                values = read_frames(group[_SOURCE[name]], frames, rows, cols)
            arrays[name] = _coarsen(name, values, ocean, c)
        return _Block(frames, y, x, arrays)

    def _all_frames(self) -> np.ndarray:
        return self.plan.frames()

    # ---- items

    def __len__(self) -> int:
        return len(self._inputs) * len(self._patches)

    def _locate(self, index: int) -> tuple[int, int, int]:
        """Window and patch origin (output pixels) of item `index`."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"item {index} of a dataset of {n}")
        window, patch = divmod(index % n, len(self._patches))
        if self.random_patches is not None:
            h, w = self.frame_shape
            ph, pw = self.patch_shape
            y = int(torch.randint(0, h - ph + 1, ()).item())
            x = int(torch.randint(0, w - pw + 1, ()).item())
            return window, y, x
        y, x = self._patches[patch]
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
        ti, tp = self._inputs.shape[1], self._targets.shape[1]
        ph, pw = self.patch_shape
        n = len(indices)
        in_place = (self.input_channels == self.target_channels == (cube.CONC,)
                    and self.coarsen == 1 and not self.apply_land_mask and not self._norm
                    and self._preloaded is None
                    and np.all(np.diff(np.concatenate([self._inputs, self._targets], 1)) == 1))
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
        conc = self._arrays()[cube.CONC]

        def read_in_place(b: int) -> None:
            window, y, x = places[b]
            first = int(self._inputs[window, 0])
            read_into(conc, first, first + ti + tp, slice(y0 + y, y0 + y + ph),
                      slice(x0 + x, x0 + x + pw), frames[b, :, 0].numpy())
            if masks is not None:
                masks[b, 0] = torch.from_numpy(self._land_out[y:y + ph, x:x + pw])

        self._each(read_in_place, n)
        inputs, targets = frames[:, :ti], frames[:, ti:]
        return (inputs, targets) if masks is None else (inputs, targets, masks)

    def _each(self, read, n: int) -> None:
        """read(b) for b in range(n), `concurrent_reads` at a time on reader threads."""
        depth = min(self.concurrent_reads, n)
        executor = self.reader.executor(depth) if depth > 1 else None
        for _ in read_ahead(read, range(n), depth, executor):
            pass

    def _read_item(self, window: int, y: int, x: int) -> _Block:
        """A block holding the item of `window` at (y, x) (exactly it, unless preloaded)."""
        frames = np.union1d(self._inputs[window], self._targets[window])
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

    def item(self, block: _Block, window: int, y: int, x: int):
        """The item of `window` at patch origin (y, x), cut from a block that holds it."""
        inputs = self._stack(block, self.input_channels, self._inputs[window], y, x)
        targets = self._stack(block, self.target_channels, self._targets[window], y, x)
        if not self.return_mask:
            return inputs, targets
        ph, pw = self.patch_shape
        land = self._land_out[y:y + ph, x:x + pw].astype(np.float32)[None]
        return inputs, targets, torch.from_numpy(land)

    def item_into(self, block: _Block, window: int, y: int, x: int, batch: tuple,
                   b: int) -> None:
        """Write the item of `window` at (y, x) into slot b of batch tensors (one copy)."""
        self._stack(block, self.input_channels, self._inputs[window], y, x,
                    out=batch[0][b].numpy())
        self._stack(block, self.target_channels, self._targets[window], y, x,
                    out=batch[1][b].numpy())
        if self.return_mask:
            ph, pw = self.patch_shape
            batch[2][b, 0] = torch.from_numpy(self._land_out[y:y + ph, x:x + pw])

    def empty_batch(self, n: int) -> tuple[torch.Tensor, ...]:
        """Uninitialised (inputs, targets[, mask]) batch tensors for `n` items, for item_into."""
        ph, pw = self.patch_shape
        batch = (_empty_batch((n, self._inputs.shape[1], len(self.input_channels), ph, pw)),
                 _empty_batch((n, self._targets.shape[1], len(self.target_channels), ph, pw)))
        return (*batch, _empty_batch((n, 1, ph, pw))) if self.return_mask else batch

    def _stack(self, block: _Block, channels: Sequence[str], frames: np.ndarray,
               y: int, x: int, out: np.ndarray | None = None) -> torch.Tensor | None:
        """(T, C, h, w) float32 of `channels` on `frames` at patch origin (y, x).

        Returns a tensor, or writes into `out` when given.
        """
        h, w = self.patch_shape
        land = self._land_out[y:y + h, x:x + w] if self.apply_land_mask else None
        result = None
        if out is None:
            if len(channels) == 1 and land is None and not self._norm:  # common: no copy
                data = block.take(channels[0], frames, y, x, h, w)
                return torch.from_numpy(np.ascontiguousarray(data, np.float32)[:, None])
            result = out = np.empty((len(frames), len(channels), h, w), np.float32)
        for i, name in enumerate(channels):
            if name in _SOURCE:
                out[:, i] = block.take(name, frames, y, x, h, w)
            elif name in _STATIC:
                out[:, i] = self._static[name][y:y + h, x:x + w]
            else:
                doy = self._doy[frames]
                value = {"day_of_year": doy / 366.0,
                         "day_of_year_sin": np.sin(2 * np.pi * doy / 365.25),
                         "day_of_year_cos": np.cos(2 * np.pi * doy / 365.25)}[name]
                out[:, i] = value.astype(np.float32)[:, None, None]
            if name in self._norm:
                mean, std = self._norm[name]
                out[:, i] -= mean
                out[:, i] /= std
            if land is not None and name != cube.LAND:
                out[:, i][:, land] = 0
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
        return self._inputs.copy(), self._targets.copy()

    @property
    def patch_origins(self) -> np.ndarray:
        """Output-pixel (y, x) origin of each patch of the tiling, in item order."""
        return self._patches.copy()

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


# --------------------------------------------------------------------------- streaming


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
        if dataset.random_patches is not None:
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
        return ds.plan.groups(len(ds.time_channels), self.block_bytes)

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

    def _load(self, items: np.ndarray) -> _Block:
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
