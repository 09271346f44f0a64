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
- A suspicious day (`sicube.pipeline.quality`) under the policy "missing" stays observed (its raw
  data are kept) but is left out of the mask and the fill like a missing day; when a day
  turns suspicious or stops being so, the fills that depend on it are redone (`judge`).
- The fill is recorded per time chunk and runs in batches of up to `FILL_BATCH_CHUNKS`
  chunks. A day's fill depends on the raw days within `time_window` of it, so a day is
  filled again exactly when one of those days changed, and a day added at the end of the
  span is filled: a filled chunk keeps its other days (`BuildState.refill`), so a daily
  update fills the new day and the `time_window` days before it, not a whole chunk.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

from sicube.dates import day_range, parse_date
from sicube.params import (
    MISSING,
    OK,
    SUSPICIOUS_AS_MISSING,
    SUSPICIOUS_POLICIES,
    FillParams,
    QualityRules,
)

FILL_BATCH_CHUNKS = 2  # time chunks filled per resumable step


@dataclass(frozen=True)
class FillBatch:
    """One resumable fill step: days [start, stop), in time chunks `chunks`, written from the
    days [read_start, read_stop) read.

    A batch reads its days and `time_window` days either side. A whole batch
    (`FILL_BATCH_CHUNKS` whole chunks) shifts its window inwards at the span's ends rather
    than shrinks, so every whole batch reads as many days wherever it lies (a build's graphs
    and memory do not depend on the span); a smaller one (an update's refill of a few days)
    reads only what it needs. A batch that covers a chunk only in part keeps the chunk's
    other days as they are in the store.
    """

    chunks: tuple[int, ...]
    start: int
    stop: int
    read_start: int
    read_stop: int


def fill_batches(n_days: int, chunk: int, time_window: int,
                 stale: Iterable[int] | None = None) -> list[FillBatch]:
    """The fill batches covering the days `stale` (default: every day).

    Runs of consecutive stale days are cut every `FILL_BATCH_CHUNKS` chunks, counted from the
    start of the axis, so a whole build fills chunks (0, 1), (2, 3), ...; neighbouring pieces
    of one run are merged again while they are no longer than a whole batch, so an update's
    refill across a chunk boundary (the days before the new day and the new day) is one batch.
    """
    size = FILL_BATCH_CHUNKS * chunk
    todo = sorted(set(range(n_days)) if stale is None else set(stale) & set(range(n_days)))
    pieces: list[list[int]] = []  # [start, stop) of runs, cut at every `size` days
    for d in todo:
        if pieces and pieces[-1][1] == d and d % size:
            pieces[-1][1] = d + 1
        else:
            pieces.append([d, d + 1])
    merged: list[list[int]] = []
    for start, stop in pieces:
        if merged and merged[-1][1] == start and stop - merged[-1][0] <= size:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return [_batch(start, stop, n_days, chunk, time_window) for start, stop in merged]


def _batch(start: int, stop: int, n_days: int, chunk: int, time_window: int) -> FillBatch:
    chunks = tuple(range(start // chunk, (stop - 1) // chunk + 1))
    whole = (len(chunks) == FILL_BATCH_CHUNKS and start % chunk == 0
             and stop == min(n_days, (chunks[-1] + 1) * chunk))
    if not whole:  # read no more than it needs
        return FillBatch(chunks, start, stop, max(0, start - time_window),
                         min(n_days, stop + time_window))
    window = len(chunks) * chunk + 2 * time_window
    read_start = max(0, min(start - time_window, n_days - window))
    return FillBatch(chunks, start, stop, read_start, min(n_days, read_start + window))


def days_depending_on(days: Iterable[int], n_days: int, time_window: int) -> set[int]:
    """The days whose fill depends on the raw data of any of `days` (those within
    `time_window` days of one)."""
    return {t for d in days
            for t in range(max(0, d - time_window), min(n_days, d + time_window + 1))}


# --- the build's state ---------------------------------------------------------------------------


@dataclass
class BuildArgs:
    """What a cube was built with; a rerun must match them (or restart the fill)."""

    start: str
    end: str
    fill: FillParams
    mask_threshold: float
    mask: str | None = None  # a given mask (file or cube) instead of the NaN frequency
    suspicious: str = SUSPICIOUS_AS_MISSING  # SUSPICIOUS_POLICIES: as missing, or kept
    quality: QualityRules = field(default_factory=QualityRules)


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
    filled: set[int] = field(default_factory=set)  # time chunks filled (but for `refill`)
    flag_counts: dict[int, list[int]] = field(default_factory=dict)  # chunk -> cells per flag
    mask_days: set[str] = field(default_factory=set)  # observed days counted in the mask
    mask_done: bool = False  # land_mask and nan_ratio are current
    mask_frozen: bool = False  # the mask is kept as it is (given, or kept by an update)
    mask_span: str = ""  # the days the mask was computed from, for provenance
    complete_through: str | None = None  # readers may trust the cube up to this day
    updating_from: str | None = None  # an update from this (old last) day is under way
    rewrite: set[int] = field(default_factory=set)  # time chunks a killed run was writing
    suspicious: dict[str, str] = field(default_factory=dict)  # day -> why (observed days)
    refill: set[int] = field(default_factory=set)  # days of filled chunks to fill again

    # --- derived facts -------------------------------------------------------------------------

    @property
    def days(self) -> tuple[dt.date, ...]:
        """Every calendar day of the cube (the calendar made once per span and shared, not
        copied: callers index it in loops, and a decade's 3,653 days made anew on every
        access cost a one-day update over a second)."""
        return _calendar(self.args.start, self.args.end)

    def unobserved(self) -> list[int]:
        """Indexes of the days to look for in the source: every day not observed yet."""
        return [i for i, day in enumerate(self.days) if f"{day:%Y%m%d}" not in self.observed]

    def excluded(self) -> set[str]:
        """Observed days left out of the mask and the fill: the suspicious ones, unless the
        policy keeps them."""
        return set(self.suspicious) if self.args.suspicious == SUSPICIOUS_AS_MISSING else set()

    def stale_days(self, chunk: int) -> list[int]:
        """The days whose fill is not current: every day of a chunk not filled, and the days
        of filled chunks to fill again (`refill`)."""
        return [d for d in range(len(self.days)) if d // chunk not in self.filled
                or d in self.refill]

    def stale_chunks(self, chunk: int) -> set[int]:
        """The time chunks holding a day whose fill is not current."""
        return {d // chunk for d in self.stale_days(chunk)}

    def is_complete(self, chunk: int) -> bool:
        """Every day looked for, the mask current and every time chunk filled."""
        looked = set(self.observed) | self.missing | set(self.failed)
        return (self.mask_done and not self.stale_chunks(chunk)
                and all(f"{d:%Y%m%d}" in looked for d in self.days))

    # --- transitions -----------------------------------------------------------------------------

    def record_day(self, key: str, status: str, detail) -> bool:
        """Put a day under `observed` (status OK, detail = provenance), `missing` (MISSING) or
        `failed` (FAILED, detail = reason); whether that changed anything."""
        before = (self.observed.get(key), key in self.missing, self.failed.get(key))
        self.observed.pop(key, None)
        self.missing.discard(key)
        self.failed.pop(key, None)
        if status == OK:
            self.observed[key] = detail
        elif status == MISSING:
            self.missing.add(key)
        else:
            self.failed[key] = detail
        return before != (self.observed.get(key), key in self.missing, self.failed.get(key))

    def invalidate(self, changed: Iterable[int], chunk: int) -> None:
        """Forget the fills (and a NaN-frequency mask) that days `changed` feed."""
        changed = list(changed)
        if not changed:
            return
        self._forget_days(days_depending_on(changed, len(self.days), self.args.fill.time_window),
                          chunk)
        if not self.mask_frozen:
            self.mask_done = False

    def judge(self, suspicious: dict[str, str], chunk: int) -> list[int]:
        """Record the suspicious days found over the whole span; the indexes of the days that
        turned suspicious or stopped being so. Under the policy "missing" their fills (and a
        NaN-frequency mask) are forgotten, as when a day arrives."""
        changed = sorted(set(self.suspicious) ^ set(suspicious))
        self.suspicious = dict(suspicious)
        index = {f"{day:%Y%m%d}": i for i, day in enumerate(self.days)}
        changed_days = [index[k] for k in changed if k in index]
        if self.args.suspicious == SUSPICIOUS_AS_MISSING:
            self.invalidate(changed_days, chunk)
        return changed_days

    def _forget_days(self, days: Iterable[int], chunk: int) -> None:
        """Forget the fill of `days`: a filled chunk keeps its other days (and its flag
        counts, which its refill corrects); a chunk not filled is filled whole anyway."""
        self.refill |= {d for d in days if d // chunk in self.filled}

    def forget_every_fill(self) -> None:
        """Every day must be filled again (another mask, other fill parameters)."""
        self.filled.clear()
        self.refill.clear()
        self.flag_counts.clear()

    def record_fill(self, batch: FillBatch) -> None:
        """The days of `batch` are filled: its chunks are current but for other refills."""
        self.filled.update(batch.chunks)
        self.refill -= set(range(batch.start, batch.stop))

    def extend(self, new_end: dt.date, chunk: int) -> None:
        """Grow the span to `new_end`: the new days must be filled (a filled chunk that gains
        days keeps its old ones)."""
        old_n = len(self.days)
        self.updating_from = self.args.end
        self.args.end = f"{new_end}"
        self.complete_through = self.complete_through or self.updating_from
        self._forget_days(range(old_n, len(self.days)), chunk)

    # --- JSON ------------------------------------------------------------------------------------

    def to_data(self) -> dict:
        """The state as JSON-ready values. Shallow: the day records are the state's own (an
        asdict deep copy of them cost 17 ms per save on a 120-day cube, and grows with the
        span); whoever keeps the result encodes it at once."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["args"] = asdict(self.args)
        data["missing"] = sorted(self.missing)
        data["mask_days"] = sorted(self.mask_days)
        data["filled"] = sorted(self.filled)
        data["rewrite"] = sorted(self.rewrite)
        data["refill"] = sorted(self.refill)
        data["flag_counts"] = {str(k): v for k, v in sorted(self.flag_counts.items())}
        return data

    @classmethod
    def from_data(cls, data: dict) -> BuildState:
        """The state from `to_data`'s values as JSON gives them back (`data` is taken over)."""
        data["args"] = BuildArgs(**{**data["args"],
                                    "fill": FillParams.from_dict(data["args"]["fill"]),
                                    "quality": QualityRules.from_dict(
                                        data["args"].get("quality"))})
        data["missing"] = set(data["missing"])
        data["mask_days"] = set(data["mask_days"])
        data["filled"] = set(data["filled"])
        data["rewrite"] = set(data["rewrite"])
        data["refill"] = set(data.get("refill", ()))  # a cube from before partial refills
        data["flag_counts"] = {int(k): v for k, v in data["flag_counts"].items()}
        return cls(**data)


@functools.lru_cache(maxsize=4)
def _calendar(start: str, end: str) -> tuple[dt.date, ...]:
    """Every day from `start` to `end` (YYYY-MM-DD or YYYYMMDD)."""
    return tuple(day_range(parse_date(start), parse_date(end)))


__all__ = ["FILL_BATCH_CHUNKS", "SUSPICIOUS_POLICIES", "BuildArgs", "BuildState", "FillBatch",
           "days_depending_on", "fill_batches"]
