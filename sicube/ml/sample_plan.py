"""The sample plan of a dataset: which (window, patch) items there are, pure and JSON-able.

Like xbatcher's `BatchSchema`, the plan says what the items are without reading anything:
the windows of the original toolbox's rule (`window_indices`) over a span of the cube's days,
less the windows that touch a day without data or fail the quality filter; the patch
tiling of the (coarsened) region of interest; the channels of inputs and targets, the land
mask and the normalisation scales; the chunk groups that `SICStream` visits, and how an
epoch of them is shared among DDP ranks and DataLoader workers (`shard_items`).

The plan is made first, then handed to the readers: `SamplePlan.from_cube` reads what it
depends on from a cube once (`sicube.ml.planner`) and `SICDataset(...)` does just that;
`SamplePlan.to_json` / `from_json` round-trip it, and `SICDataset.from_plan` reads the items
of a saved plan again. This module imports NumPy and the standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from sicube.datacube.cube import CONC
from sicube.dates import DateLike
from sicube.errors import BadInput
from sicube.ml.channels import time_channels


def positive_int(value, name: str) -> int:
    """`value` as an int; BadInput naming `name` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BadInput(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def positive_pair(value, name: str) -> tuple[int, int]:
    """(h, w) from an int or a pair of ints; BadInput naming `name` unless positive."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return positive_int(value[0], name), positive_int(value[1], name)
    n = positive_int(value, name)
    return n, n


def window_indices(n_days: int, input_length: int, pred_length: int, input_gap: int = 1,
                   pred_shift: int = 1, pred_gap: int = 1,
                   samples_gap: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Day indices of every (inputs, targets) window by the original toolbox's rule.

    Parameters
    ----------
    n_days : number of days on the axis.
    input_length, pred_length : frames per input and per target sequence.
    input_gap, pred_gap : days between successive input (target) frames.
    pred_shift : days from the last input frame to the first target frame.
    samples_gap : days between the starts of successive windows.

    Returns
    -------
    inputs, targets : int64 arrays (n_windows, input_length) and (n_windows, pred_length);
        n_windows may be 0.
    """
    for name, value in (("input_length", input_length), ("pred_length", pred_length),
                        ("input_gap", input_gap), ("pred_shift", pred_shift),
                        ("pred_gap", pred_gap), ("samples_gap", samples_gap)):
        positive_int(value, name)
    input_span = input_gap * (input_length - 1) + 1
    pred_span = pred_gap * (pred_length - 1) + 1
    total = input_span + pred_shift + pred_span - 1
    starts = np.arange(0, max(n_days - total + 1, 0), samples_gap, dtype=np.int64)
    inputs = starts[:, None] + np.arange(0, input_span, input_gap)
    targets = starts[:, None] + (input_span + pred_shift - 1) + np.arange(0, pred_span, pred_gap)
    return inputs, targets


@dataclasses.dataclass
class WindowReport:
    """How many windows the span offers and why some were skipped."""

    candidates: int  # windows the original's rule gives over the span
    unobserved: int  # skipped: a frame falls on a day without a source file
    too_filled_inputs: int  # skipped: an input frame's filled share > max_filled_fraction
    too_filled_targets: int  # skipped: a target frame's filled share > max_filled_fraction
    kept: int
    days: np.ndarray  # YYYYMMDD of every day of the span
    filled_fraction: np.ndarray | None  # per day of the span: share of filled ocean cells in
    # the ROI (None when no quality filter was asked for)

    def __str__(self) -> str:
        return (f"{self.kept} of {self.candidates} windows kept "
                f"({self.unobserved} touch a day without data, {self.too_filled_inputs} "
                f"too filled in inputs, {self.too_filled_targets} too filled in targets)")


def select_windows(span: tuple[int, int], rule: tuple[int, ...], observed: np.ndarray | None,
                   filled_fraction: np.ndarray | None = None,
                   max_filled: tuple[float, float] | None = None,
                   days: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, WindowReport]:
    """The windows of `rule` over cube days span[0]..span[1], less the skipped ones.

    `rule` is (input_length, pred_length, input_gap, pred_shift, pred_gap, samples_gap);
    `observed` (per cube day) drops windows touching a day without data (None keeps them);
    `filled_fraction` (per day of the span) and `max_filled` (inputs, targets) drop windows
    with a frame too filled. Returns cube day indices of the kept windows' inputs and
    targets, and the report. BadInput when no window fits or none is kept.
    """
    a, b = span
    inputs, targets = window_indices(b - a + 1, *rule)
    span_days = np.asarray(days[a:b + 1] if days is not None else np.arange(a, b + 1))
    if len(inputs) == 0:
        input_length, pred_length, input_gap, pred_shift, pred_gap, _ = rule
        need = input_gap * (input_length - 1) + 1 + pred_shift + pred_gap * (pred_length - 1)
        raise BadInput(f"input_length/pred_length: a window spans {need} days but "
                       f"{span_days[0]}..{span_days[-1]} has {b - a + 1}; no window fits")
    inputs, targets = inputs + a, targets + a
    candidates = len(inputs)
    keep = np.ones(candidates, bool)
    if observed is not None:
        observed = np.asarray(observed, bool)
        keep = observed[inputs].all(1) & observed[targets].all(1)
    unobserved = int(candidates - keep.sum())
    too_in = too_tgt = 0
    if max_filled is not None and filled_fraction is not None:
        max_in, max_tgt = max_filled
        bad_in = keep & (filled_fraction[inputs - a] > max_in).any(1)
        bad_tgt = keep & ~bad_in & (filled_fraction[targets - a] > max_tgt).any(1)
        too_in, too_tgt = int(bad_in.sum()), int(bad_tgt.sum())
        keep &= ~bad_in & ~bad_tgt
    report = WindowReport(candidates, unobserved, too_in, too_tgt, int(keep.sum()),
                          span_days.copy(), filled_fraction)
    if not keep.any():
        raise BadInput(f"start_time/end_time: none of the {candidates} windows is usable "
                       f"({report}); widen the span, allow_unobserved=True or raise "
                       "max_filled_fraction")
    return inputs[keep], targets[keep], report


def tile_patches(frame_shape: tuple[int, int], patch_shape: tuple[int, int],
                 stride: tuple[int, int]) -> np.ndarray:
    """(n, 2) output-pixel origins of the patches tiling a frame, row by row.

    Patches that would cross the frame's far edge are left out.
    """
    (h, w), (ph, pw), (sy, sx) = frame_shape, patch_shape, stride
    ys, xs = np.arange(0, h - ph + 1, sy), np.arange(0, w - pw + 1, sx)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2).astype(np.int64)


def chunk_groups(window_starts: np.ndarray, patches: np.ndarray, roi: tuple[int, ...],
                 coarsen: int, chunks: tuple[int, int, int], grid_shape: tuple[int, int],
                 patch_shape: tuple[int, int], n_channels: int,
                 block_bytes: int) -> list[np.ndarray]:
    """Item indices (window * len(patches) + patch) of each chunk group, in cube order.

    Items group by the time chunk span their window starts in and the space chunk their
    patch starts in; a group spans as many time chunks as `block_bytes` allows for its
    block (float32, `n_channels` arrays), at least one.
    """
    ct, cy, cx = chunks
    c = coarsen
    ph, pw = patch_shape
    area = min(ph * c + cy, roi[1] - roi[0]) * min(pw * c + cx, roi[3] - roi[2])
    span = ct * max(1, block_bytes // (4 * max(n_channels, 1) * area * ct))
    time_group = np.asarray(window_starts) // span  # spans start on chunk boundaries
    rows = roi[0] + patches[:, 0] * c
    cols = roi[2] + patches[:, 1] * c
    space_group = (rows // cy) * (grid_shape[1] // cx + 1) + cols // cx
    _, space_id = np.unique(space_group, return_inverse=True)
    n_space = space_id.max() + 1
    key = (time_group[:, None] * n_space + space_id[None, :]).ravel()  # item order
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return np.split(order, bounds)


def shard_items(group_sizes, order: np.ndarray, rank: int = 0, world_size: int = 1,
                worker: int = 0, workers: int = 1, unit: int = 1) -> list[tuple[int, int, int]]:
    """One rank's, one DataLoader worker's share of an epoch: (group, start, stop) segments.

    The epoch visits the groups in `order` (a permutation of their indices), each group's
    items end to end: N = sum(group_sizes) positions. Rank r of `world_size` takes positions
    [r * n, (r + 1) * n) with n = N // world_size, so every rank gets the same count and the
    last N % world_size positions (fewer than world_size items, the tail of this epoch's
    order) are dropped, as DistributedSampler(drop_last=True) does. Worker w of `workers`
    takes the w-th of near-equal contiguous parts of its rank's share, made of whole `unit`s
    (a stream's batch size; sizes differ by at most one unit and depend only on n, so every
    rank yields the same number of batches). The rank's share is thus cut into the same
    ceil(n / unit) batches whatever the number of workers, only its last one short.
    Contiguous shares keep chunk locality: a share cuts at most two groups. `start:stop`
    index the group's items.
    """
    sizes = np.asarray(group_sizes, np.int64)
    order = np.asarray(order, np.int64)
    if not (0 <= rank < world_size and 0 <= worker < workers and unit >= 1):
        raise ValueError(f"shard_items: rank {rank} of {world_size}, worker {worker} of "
                         f"{workers}, unit {unit}")
    n = int(sizes.sum()) // world_size
    part, extra = divmod(-(-n // unit), workers)  # the rank's units (batches) per worker
    first = worker * part + min(worker, extra)  # this worker's first unit
    lo = rank * n + min(n, first * unit)
    hi = rank * n + min(n, (first + part + (worker < extra)) * unit)
    ends = np.cumsum(sizes[order])
    starts = ends - sizes[order]
    segments = []
    for k in range(int(np.searchsorted(ends, lo, "right")), len(order)):
        if starts[k] >= hi:
            break
        a, b = max(lo, starts[k]), min(hi, ends[k])
        if b > a:
            segments.append((int(order[k]), int(a - starts[k]), int(b - starts[k])))
    return segments


@dataclasses.dataclass(eq=False)
class SamplePlan:
    """What a dataset's items are: windows (cube day indices) x patches over an ROI, and
    the channels they carry.

    Item `i` is window ``i // len(patches)`` at patch origin ``patches[i % len(patches)]``
    (output pixels of the coarsened ROI); with `random_patches` the origins are drawn per
    access and `patches` only counts them. Two plans are equal when their JSON is.
    """

    day_ints: np.ndarray  # YYYYMMDD of every day of the cube
    span: tuple[int, int]  # first and last cube day index of the dataset's span
    inputs: np.ndarray  # (n_windows, input_length) cube day indices
    targets: np.ndarray  # (n_windows, pred_length)
    roi: tuple[int, int, int, int]  # (ymin, ymax, xmin, xmax) in grid cells, ends exclusive
    coarsen: int
    frame_shape: tuple[int, int]  # the coarsened ROI
    patch_shape: tuple[int, int]
    patches: np.ndarray  # (n_patches, 2) origins
    random_patches: int | None
    chunks: tuple[int, int, int]  # the cube's (time, y, x) chunks
    grid_shape: tuple[int, int]
    report: WindowReport
    input_channels: tuple[str, ...] = (CONC,)  # names in sicube.ml.channels.CHANNELS
    target_channels: tuple[str, ...] = (CONC,)
    apply_land_mask: bool = False  # every channel but land_mask 0 on land
    return_mask: bool = False  # items carry the land mask
    normalize: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    climatology: str | None = None  # the climatology store the anomaly channel reads

    @classmethod
    def from_cube(cls, store, start_time: DateLike, end_time: DateLike, input_length: int,
                  pred_length: int, input_gap: int = 1, pred_shift: int = 1, pred_gap: int = 1,
                  samples_gap: int = 1, *, roi: Sequence[int] | None = None, coarsen: int = 1,
                  patch_size: int | Sequence[int] | None = None,
                  patch_stride: int | Sequence[int] | None = None,
                  random_patches: int | None = None, variables: Sequence[str] = (),
                  target_variables: Sequence[str] = (), apply_land_mask: bool = False,
                  return_mask: bool = False,
                  max_filled_fraction: float | Sequence[float] | None = None,
                  quality_cache: bool | str | os.PathLike = True,
                  allow_unobserved: bool = False, skip_suspicious: bool = False,
                  climatology: str | os.PathLike | None = None,
                  normalize: bool | dict | None = None, storage_options: dict | None = None,
                  allow_incomplete: bool = False) -> SamplePlan:
        """The plan of a dataset on the cube at `store`: its parameters are `SICDataset`'s
        (all but preload_data and concurrent_reads, which say how to read, not what).

        Reads what the plan depends on (the time axis, the observed and suspicious days,
        the filled fractions, the climatology's statistics) once, through
        `sicube.ml.planner.plan_samples`; BadInput for a parameter the cube cannot meet.
        """
        from sicube.ml.planner import plan_samples

        return plan_samples(
            store, start_time, end_time,
            (input_length, pred_length, input_gap, pred_shift, pred_gap, samples_gap),
            roi=roi, coarsen=coarsen, patch_size=patch_size, patch_stride=patch_stride,
            random_patches=random_patches, variables=variables,
            target_variables=target_variables, apply_land_mask=apply_land_mask,
            return_mask=return_mask, max_filled_fraction=max_filled_fraction,
            quality_cache=quality_cache, allow_unobserved=allow_unobserved,
            skip_suspicious=skip_suspicious, climatology=climatology, normalize=normalize,
            storage_options=storage_options, allow_incomplete=allow_incomplete)

    def __len__(self) -> int:
        return len(self.inputs) * len(self.patches)

    def __eq__(self, other) -> bool:
        return isinstance(other, SamplePlan) and self.to_json() == other.to_json()

    __hash__ = None  # mutable, like its arrays

    @property
    def time_channels(self) -> tuple[str, ...]:
        """The channels read from the cube per day (what a block holds), sorted."""
        return time_channels((*self.input_channels, *self.target_channels))

    def frames(self) -> np.ndarray:
        """Every cube day index some item reads, sorted."""
        return np.unique(np.concatenate([self.inputs.ravel(), self.targets.ravel()]))

    def times(self) -> np.ndarray:
        """YYYYMMDD of every item's frames, inputs then targets."""
        days = np.concatenate([self.day_ints[self.inputs], self.day_ints[self.targets]], 1)
        return np.repeat(days, len(self.patches), axis=0)

    def groups(self, n_channels: int, block_bytes: int) -> list[np.ndarray]:
        """Item indices of each chunk group (see `chunk_groups`)."""
        return chunk_groups(self.inputs.min(1), self.patches, self.roi, self.coarsen,
                            self.chunks, self.grid_shape, self.patch_shape, n_channels,
                            block_bytes)

    def to_json(self) -> str:
        """The plan as JSON (arrays as lists)."""
        def plain(value):
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, WindowReport):
                return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
            return value
        return json.dumps({f.name: plain(getattr(self, f.name))
                           for f in dataclasses.fields(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SamplePlan:
        """The plan `to_json` wrote; BadInput when `text` is not one."""
        try:
            return cls._decode(json.loads(text))
        except (TypeError, ValueError, KeyError, IndexError) as err:
            raise BadInput(f"plan: not a sample plan's JSON ({type(err).__name__}: {err})"
                           ) from None

    @classmethod
    def _decode(cls, data: dict) -> SamplePlan:
        report = data["report"]
        report["days"] = np.array(report["days"], np.int64)
        if report["filled_fraction"] is not None:
            report["filled_fraction"] = np.array(report["filled_fraction"], np.float64)
        n_in, n_tgt = len(data["inputs"][0]), len(data["targets"][0])
        # Plans written before the channels were part of them read as sea_ice_conc only.
        return cls(day_ints=np.array(data["day_ints"], np.int64), span=tuple(data["span"]),
                   inputs=np.array(data["inputs"], np.int64).reshape(-1, n_in),
                   targets=np.array(data["targets"], np.int64).reshape(-1, n_tgt),
                   roi=tuple(data["roi"]), coarsen=data["coarsen"],
                   frame_shape=tuple(data["frame_shape"]),
                   patch_shape=tuple(data["patch_shape"]),
                   patches=np.array(data["patches"], np.int64).reshape(-1, 2),
                   random_patches=data["random_patches"], chunks=tuple(data["chunks"]),
                   grid_shape=tuple(data["grid_shape"]), report=WindowReport(**report),
                   input_channels=tuple(data.get("input_channels", (CONC,))),
                   target_channels=tuple(data.get("target_channels", (CONC,))),
                   apply_land_mask=bool(data.get("apply_land_mask", False)),
                   return_mask=bool(data.get("return_mask", False)),
                   normalize={name: tuple(pair)
                              for name, pair in data.get("normalize", {}).items()},
                   climatology=data.get("climatology"))
