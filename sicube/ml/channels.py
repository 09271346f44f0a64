"""The channels of a dataset's items: what each holds, where it is read, coarsened and scaled.

A sample plan (`sicube.ml.sample_plan.SamplePlan`) names the channels of the inputs and the
targets; this module says what each one is (`CHANNELS`), which stored array a time-varying one
comes from (`SOURCE`), how a block of frames is coarsened (`coarsen`: the mean over the
block's valid cells), and how normalisation and the land mask apply. `ChannelMaker` does all
of it for one plan with NumPy only; `SICDataset` and `SICStream` wrap its arrays in tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from sicube.datacube import cube
from sicube.errors import BadInput
from sicube.ml.reader import read_frames

if TYPE_CHECKING:
    from sicube.ml.sample_plan import SamplePlan

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
SOURCE = {cube.CONC: cube.CONC, cube.RAW: cube.RAW, cube.FLAG: cube.FLAG, "filled": cube.FLAG,
          "anomaly": cube.CONC}
STATIC = (cube.LAND, cube.NAN_RATIO)


# --------------------------------------------------------------------------- choosing


def check_channels(names: str | Sequence[str], argument: str) -> tuple[str, ...]:
    """The extra channels `names` as a tuple; BadInput naming `argument` for an unknown one."""
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in CHANNELS or n == cube.CONC]
    if unknown:
        choices = ", ".join(n for n in CHANNELS if n != cube.CONC)
        raise BadInput(f"{argument}: unknown {', '.join(map(repr, unknown))}; "
                       f"choose from {choices}")
    return tuple(names)


def item_channels(variables: str | Sequence[str], target_variables: str | Sequence[str],
                  coarsen: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The channels of inputs and of targets: sea_ice_conc, then the asked-for extras."""
    variables = check_channels(variables, "variables")
    target_variables = check_channels(target_variables, "target_variables")
    if coarsen > 1 and cube.FLAG in (*variables, *target_variables):
        raise BadInput("variables: fill_flag codes cannot be averaged; with coarsen > 1 "
                       "ask for 'filled' (the share of filled cells) instead")
    return (cube.CONC, *variables), (cube.CONC, *target_variables)


def time_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """The channels among `channels` read from the cube per day (what a block holds), sorted."""
    return tuple(sorted({name for name in channels if name in SOURCE}))


def normalization(normalize: bool | Mapping | None, stats: Mapping,
                  channels: Sequence[str]) -> dict[str, tuple[float, float]]:
    """{channel: (mean, std)} to scale by: `normalize` itself, or with True the
    climatology's `stats` of the channels asked for. BadInput for an unknown channel or a
    std that is not positive."""
    if normalize is True:
        if not stats:
            raise BadInput("normalize: True takes the statistics from climatology=; "
                           "give one, or a mapping {channel: (mean, std)}")
        normalize = {k: v for k, v in stats.items() if k in channels}
    scales = {}
    for name, pair in dict(normalize or {}).items():
        if name not in channels:
            raise BadInput(f"normalize: {name!r} is not one of the channels "
                           f"{', '.join(sorted(set(channels)))}")
        mean, std = (float(v) for v in pair)
        if not std > 0:
            raise BadInput(f"normalize: {name} std must be positive, got {std}")
        scales[name] = (mean, std)
    return scales


# --------------------------------------------------------------------------- coarsening


def coarsen_sum(values: np.ndarray, c: int) -> np.ndarray:
    """Sum over c x c blocks of the last two axes."""
    *lead, h, w = values.shape
    return values.reshape(*lead, h // c, c, w // c, c).sum(axis=(-3, -1))


def coarsen(name: str, values: np.ndarray, ocean: np.ndarray, c: int) -> np.ndarray:
    """Coarsen one channel by c: the mean over the block's valid cells.

    Valid cells are ocean cells for sea_ice_conc and `filled` (land's zeros would dilute
    coastal blocks), non-NaN cells for sea_ice_conc_raw, and all cells for static fields.
    A block without a valid cell is 0 (NaN for sea_ice_conc_raw).
    """
    if c == 1:
        return values
    if name == cube.RAW:
        valid = ~np.isnan(values)
        total = coarsen_sum(np.where(valid, values, 0), c)
        count = coarsen_sum(valid, c)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / count).astype(np.float32)
    if name in (cube.CONC, "filled", "anomaly"):
        count = coarsen_sum(ocean, c)
        total = coarsen_sum(values * ocean, c)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
    return (coarsen_sum(values.astype(np.float32), c) / (c * c)).astype(np.float32)


# --------------------------------------------------------------------------- making items


@dataclasses.dataclass
class Block:
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


def needs_land(plan: SamplePlan) -> bool:
    """Whether making the plan's items needs the land mask of its ROI."""
    return (plan.coarsen > 1 or plan.apply_land_mask or plan.return_mask
            or cube.LAND in (*plan.input_channels, *plan.target_channels))


class ChannelMaker:
    """The channels of one plan's items, from a cube's arrays, as float32 NumPy arrays.

    Holds the plan's static fields (land and nan_ratio over the ROI, read once), the day of
    year of every cube day and the scales; `read_block` reads and coarsens the time-varying
    channels of some frames over a region, `frames` cuts one item's channels from a block.
    """

    def __init__(self, plan: SamplePlan, land: np.ndarray, nan_ratio: np.ndarray | None = None):
        self.plan = plan
        c = plan.coarsen
        self.ocean = land == 0  # grid cells of the ROI
        # At output resolution; a coarsened block is land when it has no ocean cell.
        self.land_out = coarsen_sum(self.ocean, c) == 0 if c > 1 else ~self.ocean
        self.static = {cube.LAND: coarsen(cube.LAND, land, self.ocean, c)}
        if nan_ratio is not None:
            self.static[cube.NAN_RATIO] = coarsen(cube.NAN_RATIO, nan_ratio, self.ocean, c)
        days = day_dates(plan.day_ints)
        self.day_of_year = ((days - days.astype("datetime64[Y]")).astype(np.int64) + 1
                            ).astype(np.float32)
        self.scales = {name: (np.float32(mean), np.float32(std))
                       for name, (mean, std) in plan.normalize.items()}
        self.time_channels = plan.time_channels
        self.needs_climatology = "anomaly" in self.time_channels
        self._slots = None
        if plan.climatology is not None:
            from sicube.analysis.climatology import day_slot

            self._slots = day_slot(days)

    @classmethod
    def from_group(cls, group, plan: SamplePlan) -> ChannelMaker:
        """The maker of `plan`'s channels, its static fields read from the cube's `group`."""
        y0, y1, x0, x1 = plan.roi
        if needs_land(plan):
            land = np.asarray(group[cube.LAND][y0:y1, x0:x1])
        else:  # not read: no channel, mask or coarsening uses it
            land = np.zeros((y1 - y0, x1 - x0), np.uint8)
        nan_ratio = None
        if cube.NAN_RATIO in (*plan.input_channels, *plan.target_channels):
            nan_ratio = np.asarray(group[cube.NAN_RATIO][y0:y1, x0:x1], np.float32)
        return cls(plan, land, nan_ratio)

    def read_block(self, arrays, frames: np.ndarray, y: int, x: int, h: int, w: int,
                   climatology_mean=None) -> Block:
        """Read the time-varying channels of `frames` over an output-pixel region.

        `arrays` maps the cube's array names to Zarr arrays (a group will do);
        `climatology_mean` is the climatology's mean array, needed by the anomaly channel.
        """
        plan = self.plan
        c = plan.coarsen
        rows = slice(plan.roi[0] + y * c, plan.roi[0] + (y + h) * c)
        cols = slice(plan.roi[2] + x * c, plan.roi[2] + (x + w) * c)
        ocean = self.ocean[y * c:(y + h) * c, x * c:(x + w) * c]
        blocks: dict[str, np.ndarray] = {}
        flags = None
        for name in self.time_channels:
            if name in ("filled", cube.FLAG):
                if flags is None:
                    flags = read_frames(arrays[cube.FLAG], frames, rows, cols)
                values = (np.isin(flags, cube.NOT_OBSERVED_FLAGS).astype(np.float32)
                          if name == "filled" else flags.astype(np.float32))
            elif name == "anomaly":
                values = (read_frames(arrays[cube.CONC], frames, rows, cols)
                          - self._climatology_means(climatology_mean, frames, rows, cols)
                          ).astype(np.float32)
            else:
                values = read_frames(arrays[SOURCE[name]], frames, rows, cols)
            blocks[name] = coarsen(name, values, ocean, c)
        return Block(frames, y, x, blocks)

    def _climatology_means(self, mean, frames: np.ndarray, rows: slice,
                           cols: slice) -> np.ndarray:
        """The climatology's mean (NaN as 0) on each frame's day of year, over a region."""
        slots, back = np.unique(self._slots[frames], return_inverse=True)
        means = np.nan_to_num(mean.oindex[slots, rows, cols])
        return means[back]

    def frames(self, block: Block, channels: Sequence[str], frames: np.ndarray, y: int, x: int,
               out: np.ndarray | None = None) -> np.ndarray | None:
        """(T, C, h, w) float32 of `channels` on `frames` at patch origin (y, x).

        Returns the array (a view of the block where it can), or writes into `out` when given.
        """
        h, w = self.plan.patch_shape
        land = self.land_out[y:y + h, x:x + w] if self.plan.apply_land_mask else None
        result = None
        if out is None:
            if len(channels) == 1 and land is None and not self.scales:  # common: no copy
                data = block.take(channels[0], frames, y, x, h, w)
                return np.ascontiguousarray(data, np.float32)[:, None]
            result = out = np.empty((len(frames), len(channels), h, w), np.float32)
        for i, name in enumerate(channels):
            if name in SOURCE:
                out[:, i] = block.take(name, frames, y, x, h, w)
            elif name in STATIC:
                out[:, i] = self.static[name][y:y + h, x:x + w]
            else:
                doy = self.day_of_year[frames]
                value = {"day_of_year": doy / 366.0,
                         "day_of_year_sin": np.sin(2 * np.pi * doy / 365.25),
                         "day_of_year_cos": np.cos(2 * np.pi * doy / 365.25)}[name]
                out[:, i] = value.astype(np.float32)[:, None, None]
            if name in self.scales:
                mean, std = self.scales[name]
                out[:, i] -= mean
                out[:, i] /= std
            if land is not None and name != cube.LAND:
                out[:, i][:, land] = 0
        return result


def day_dates(day_ints: np.ndarray) -> np.ndarray:
    """YYYYMMDD integers as datetime64[D]."""
    day_ints = np.asarray(day_ints, np.int64)
    text = [f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}" for d in day_ints.tolist()]
    return np.array(text, "datetime64[D]")
