"""What a build or update did: `BuildSummary`, the one-screen summary a command prints, and
the stage timer and day lists that fill it from the build's state."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sicube.datacube import cube
from sicube.datacube.cube import FillFlag
from sicube.dates import count_text, day_list_text
from sicube.params import SUSPICIOUS_AS_MISSING
from sicube.pipeline.plan import BuildState


@dataclass
class BuildSummary:
    """What a build or update did, for the one-screen summary."""

    store: str
    span: tuple[dt.date, dt.date]
    shape: tuple[int, int, int] = (0, 0, 0)
    observed: list[dt.date] = field(default_factory=list)
    missing: list[dt.date] = field(default_factory=list)
    failed: dict[dt.date, str] = field(default_factory=dict)
    suspicious: dict[dt.date, str] = field(default_factory=dict)  # day -> why
    suspicious_policy: str = SUSPICIOUS_AS_MISSING
    retried: dict[dt.date, int] = field(default_factory=dict)  # day -> download attempts
    recovered: list[dt.date] = field(default_factory=list)  # missing/failed before, now observed
    recovered_after_failure: list[dt.date] = field(default_factory=list)  # of those: failed
    looked_again: int = 0  # days looked for again on a cube that had them missing or failed
    source: str = ""
    other_grids: str = ""  # a source folder's files of other grids, not read
    cells_filled: int = 0
    cells_unfilled: int = 0
    cells_pole_hole: int = 0  # cell-days of the north pole hole set from its ring (flag 4)
    days_filled: int = 0  # days this run filled (an update: its new days and their neighbours)
    seconds: dict[str, float] = field(default_factory=dict)
    store_bytes: int = 0
    nothing_to_do: bool = False
    fill_in_flight: int = 0  # on a cluster: fill tasks submitted at once
    no_cube: bool = False  # every download failed: nothing could be written
    dashboard: str | None = None

    @property
    def exit_code(self) -> int:
        """0 when every day is observed or missing, 1 when some day failed."""
        return 1 if self.failed else 0

    def text(self) -> str:
        """The one-screen summary printed at the end of a command."""
        first, last = self.span
        if self.no_cube:
            lines = [f"{self.store}: no cube written: no day of {first} .. {last} could be "
                     f"fetched from {self.source}"]
            lines += [f"FAILED    {d:%Y%m%d}: {e}" for d, e in sorted(self.failed.items())[:12]]
            if len(self.failed) > 12:
                lines.append(f"FAILED    ... and {count_text(len(self.failed) - 12, 'more day')}")
            lines.append("rerun the same command when the source is reachable")
            return "\n".join(lines)
        if self.nothing_to_do:
            text = f"{self.store}: already complete for {first} .. {last}; nothing to do"
            if self.looked_again:
                text += (f" (looked again for {self.looked_again} missing or failed "
                         f"day{'' if self.looked_again == 1 else 's'}: none has arrived)")
            return text
        nt, ny, nx = self.shape
        lines = [
            f"cube      {self.store}",
            f"span      {first} .. {last}  ({count_text(nt, 'day')}, grid {ny} x {nx})",
            f"source    {self.source}",
            f"days      {len(self.observed)} observed, {len(self.missing)} missing, "
            f"{len(self.failed)} failed",
        ]
        if self.other_grids:
            lines.append(f"ignored   the folder's files of other grids: {self.other_grids}")
        # A day missing before (404) was published late; one that failed (a server error,
        # a bad download) was there all along and is now read.
        late = [d for d in self.recovered if d not in self.recovered_after_failure]
        if late:
            lines.append("recovered " + day_list_text(late) + " (published late: now observed)")
        if self.recovered_after_failure:
            lines.append("recovered " + day_list_text(self.recovered_after_failure)
                         + " (failed before: now observed)")
        if self.missing:
            lines.append("missing   " + day_list_text(self.missing))
        if self.retried:
            lines.append(f"retried   {len(self.retried)} downloads succeeded after faults: "
                         + ", ".join(f"{d:%Y%m%d} ({n} attempts)"
                                     for d, n in sorted(self.retried.items())[:6]))
        for day, error in sorted(self.failed.items()):
            lines.append(f"FAILED    {day:%Y%m%d}: {error}")
        if self.suspicious:
            how = ("filled as missing days" if self.suspicious_policy == SUSPICIOUS_AS_MISSING
                   else "kept as data (--suspicious keep)")
            lines.append(f"suspect   {count_text(len(self.suspicious), 'day')} flagged, {how}:")
            lines += [f"suspect   {day:%Y%m%d}: {why}"
                      for day, why in sorted(self.suspicious.items())]
        lines.append(f"filled    {self.cells_filled:,} cells "
                     f"({self.cells_unfilled:,} with no observed neighbour, set to 0)"
                     + (f"; pole hole {self.cells_pole_hole:,} cells from its ring"
                        if self.cells_pole_hole else "")
                     + f"; this run filled {count_text(self.days_filled, 'day')}")
        lines.append("time      " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        lines.append(f"size      {self.store_bytes / 1e6:,.1f} MB on disk")
        if self.dashboard:
            lines.append(f"dashboard {self.dashboard}")
        return "\n".join(lines)


def count_flags(state: BuildState, summary: BuildSummary) -> None:
    """Cells filled and left without neighbour, from the per-batch counts in the state."""
    totals = np.zeros(len(cube.FLAG_MEANINGS), np.int64)
    for counts in state.flag_counts.values():
        totals[:len(counts)] += counts  # a cube from before flag 4 recorded four counts
    summary.cells_filled = int(totals[FillFlag.FILLED])
    summary.cells_unfilled = int(totals[FillFlag.NO_NEIGHBOUR])
    summary.cells_pole_hole = int(totals[FillFlag.POLE_HOLE])


def account(state: BuildState, summary: BuildSummary) -> None:
    """The summary's day lists over the whole span, from the state."""
    days = state.days
    summary.span = (days[0], days[-1])
    summary.observed = [d for d in days if f"{d:%Y%m%d}" in state.observed]
    summary.failed = {d: state.failed[f"{d:%Y%m%d}"] for d in days
                      if f"{d:%Y%m%d}" in state.failed}
    summary.missing = [d for d in days if f"{d:%Y%m%d}" in state.missing]
    summary.suspicious = {d: state.suspicious[f"{d:%Y%m%d}"] for d in days
                          if f"{d:%Y%m%d}" in state.suspicious}
    summary.suspicious_policy = state.args.suspicious


def progress_bar(progress: bool, **kwargs):
    """A tqdm bar of a stage, silent unless `progress`."""
    from tqdm import tqdm

    return tqdm(disable=not progress, **kwargs)


class StageTimer:
    """Adds the wall time of each stage to the summary."""

    def __init__(self, summary: BuildSummary):
        self.summary = summary

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - began
            self.summary.seconds[stage] = self.summary.seconds.get(stage, 0.0) + seconds
