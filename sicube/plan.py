"""What a build or update must do, as a pure function of the cube's state and the request.

No I/O, no Dask, no Zarr: the builder (`sicube.build`) reads the store's state, asks this
module what to fetch, ingest, mask and fill, executes that, and records each finished step
in the state. Property tests (`tests/test_plan.py`) check the rules on every shape.

Days are indexes on the cube's calendar axis (0 = its first day). The rules:

- A run looks in the source for every day of the span that is not observed yet (never
  ingested, missing (404) or failed): late files are found, observed days are never read
  from a source again.
- A time chunk is (re)written only when a day of it arrives; its days already observed
  are copied from the cube's own `sea_ice_conc_raw`, so no observed day ever turns missing.
- The fill works in batches of `FILL_BATCH_CHUNKS` time chunks. A batch's output depends on
  the raw days within `time_window` of its days, so a batch is filled again exactly when
  one of those days changed (or it gained days at the end of the span).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from sicube.dates import day_range, parse_date

FILL_BATCH_CHUNKS = 2  # time chunks filled per resumable step


def n_chunks(n: int, chunk: int) -> int:
    """Chunks of size `chunk` needed for `n` items."""
    return -(-n // chunk)


@dataclass(frozen=True)
class FillBatch:
    """One resumable fill step: days [start, stop) written, days [read_start, read_stop) read.

    Every batch reads the same number of days (the window shifts inwards at the span's
    ends rather than shrinking), so its graph and memory do not depend on where it lies.
    """

    index: int  # first time chunk of the batch
    start: int
    stop: int
    read_start: int
    read_stop: int


def fill_batches(n_days: int, chunk: int, time_window: int) -> list[FillBatch]:
    """Every fill batch of a cube of `n_days` days with time chunks of `chunk` days."""
    window = FILL_BATCH_CHUNKS * chunk + 2 * time_window
    batches = []
    for c in range(0, n_chunks(n_days, chunk), FILL_BATCH_CHUNKS):
        start, stop = c * chunk, min(n_days, (c + FILL_BATCH_CHUNKS) * chunk)
        read_start = max(0, min(start - time_window, n_days - window))
        batches.append(FillBatch(c, start, stop, read_start, min(n_days, read_start + window)))
    return batches


def batches_depending_on(days: Iterable[int], n_days: int, chunk: int,
                         time_window: int) -> set[int]:
    """Indexes of the batches whose output depends on the raw data of any of `days`."""
    affected = set()
    for batch in fill_batches(n_days, chunk, time_window):
        low, high = batch.start - time_window, batch.stop - 1 + time_window
        if any(low <= d <= high for d in days):
            affected.add(batch.index)
    return affected


def batches_containing(days: Iterable[int], n_days: int, chunk: int,
                       time_window: int) -> set[int]:
    """Indexes of the batches that write any of `days`."""
    return {b.index for b in fill_batches(n_days, chunk, time_window)
            if any(b.start <= d < b.stop for d in days)}


def chunks_of(days: Iterable[int], chunk: int) -> list[int]:
    """The sorted time chunks holding `days`."""
    return sorted({d // chunk for d in days})


# --- the build's state ---------------------------------------------------------------------------


@dataclass
class BuildArgs:
    """What a cube was built with; a rerun must match them (or restart the fill)."""

    start: str
    end: str
    fill: dict
    mask_threshold: float
    mask: str | None = None  # a given mask (file or cube) instead of the NaN frequency


@dataclass
class BuildState:
    """The cube's progress record, saved in its group attributes after every step.

    Day keys are YYYYMMDD. A day is in at most one of `observed`, `missing` and `failed`;
    a day in none of them has not been looked for yet.
    """

    args: BuildArgs
    observed: dict[str, dict] = field(default_factory=dict)  # day -> provenance
    missing: set[str] = field(default_factory=set)  # no file (404 / not in the folder)
    failed: dict[str, str] = field(default_factory=dict)  # day -> reason
    filled: set[int] = field(default_factory=set)  # batches whose fill is current
    flag_counts: dict[int, list[int]] = field(default_factory=dict)  # batch -> cells per flag
    mask_days: set[str] = field(default_factory=set)  # observed days counted in the mask
    mask_done: bool = False  # land_mask and nan_ratio are current
    mask_frozen: bool = False  # the mask is kept as it is (given, or kept by an update)
    mask_span: str = ""  # the days the mask was computed from, for provenance
    complete_through: str | None = None  # readers may trust the cube up to this day
    updating_from: str | None = None  # an update from this (old last) day is under way
    rewrite: set[int] = field(default_factory=set)  # time chunks a killed run was writing

    # --- derived facts -------------------------------------------------------------------------

    @property
    def days(self) -> list[dt.date]:
        """Every calendar day of the cube."""
        return list(day_range(parse_date(self.args.start), parse_date(self.args.end)))

    def unobserved(self) -> list[int]:
        """Indexes of the days to look for in the source: every day not observed yet."""
        return [i for i, day in enumerate(self.days) if f"{day:%Y%m%d}" not in self.observed]

    def is_complete(self, chunk: int) -> bool:
        """Every day looked for, the mask current and every batch filled."""
        every_batch = {b.index for b in fill_batches(len(self.days), chunk,
                                                     self.args.fill["time_window"])}
        looked = set(self.observed) | self.missing | set(self.failed)
        return (self.mask_done and every_batch <= self.filled
                and all(f"{d:%Y%m%d}" in looked for d in self.days))

    # --- transitions -----------------------------------------------------------------------------

    def record_day(self, key: str, status: str, detail) -> None:
        """Put a day under `observed` (detail = provenance), `missing` or `failed` (reason)."""
        self.observed.pop(key, None)
        self.missing.discard(key)
        self.failed.pop(key, None)
        if status == "ok":
            self.observed[key] = detail
        elif status == "missing":
            self.missing.add(key)
        else:
            self.failed[key] = detail

    def invalidate(self, changed: Iterable[int], chunk: int) -> None:
        """Forget the fills (and a NaN-frequency mask) that days `changed` feed."""
        changed = list(changed)
        if not changed:
            return
        stale = batches_depending_on(changed, len(self.days), chunk,
                                     self.args.fill["time_window"])
        self.filled -= stale
        for index in stale:
            self.flag_counts.pop(index, None)
        if not self.mask_frozen:
            self.mask_done = False

    def extend(self, new_end: dt.date, chunk: int) -> None:
        """Grow the span to `new_end`: the batches that gain days must be filled again."""
        old_n = len(self.days)
        self.updating_from = self.args.end
        self.args.end = f"{new_end}"
        self.complete_through = self.complete_through or self.updating_from
        new = range(old_n, len(self.days))
        stale = batches_containing(new, len(self.days), chunk, self.args.fill["time_window"])
        self.filled -= stale
        for index in stale:
            self.flag_counts.pop(index, None)

    # --- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> str:
        data = asdict(self)
        data["missing"] = sorted(self.missing)
        data["mask_days"] = sorted(self.mask_days)
        data["filled"] = sorted(self.filled)
        data["rewrite"] = sorted(self.rewrite)
        data["flag_counts"] = {str(k): v for k, v in sorted(self.flag_counts.items())}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildState:
        data = json.loads(text)
        data["args"] = BuildArgs(**data["args"])
        data["missing"] = set(data["missing"])
        data["mask_days"] = set(data["mask_days"])
        data["filled"] = set(data["filled"])
        data["rewrite"] = set(data["rewrite"])
        data["flag_counts"] = {int(k): v for k, v in data["flag_counts"].items()}
        return cls(**data)


__all__ = ["FILL_BATCH_CHUNKS", "BuildArgs", "BuildState", "FillBatch", "batches_containing",
           "batches_depending_on", "chunks_of", "fill_batches", "n_chunks"]
