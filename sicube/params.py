"""The parameters and shared facts of a build, with no heavy dependency.

This module imports only the standard library (and `sicube.errors`), so the build plan
(`pipeline.plan`), the CLI's argument parsing and a user's script can use the parameter objects
without loading numba, Dask, Zarr or xarray. Each default and each shared constant has its
one home here; the modules that use them import them from here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from sicube.errors import BadInput

DEFAULT_GRID = "n3125"  # the grid a download, a build or a sample uses unless told otherwise

# How looking for a day's source file ended (a download's records, an ingest's arrivals and
# the build state's day lists).
OK, MISSING, FAILED = "ok", "missing", "failed"

# What the mask and the fill do with a suspicious day (`sicube.pipeline.quality`): treat it as a
# missing day (the default, first), or keep it as data.
SUSPICIOUS_AS_MISSING, SUSPICIOUS_KEEP = "missing", "keep"
SUSPICIOUS_POLICIES = (SUSPICIOUS_AS_MISSING, SUSPICIOUS_KEEP)

MASK_THRESHOLD = 0.85  # share of observed days a cell must be missing on to count as land

# A cell counts toward the sea-ice extent from this concentration (the NSIDC rule): one
# number, as a fraction (the cube's sea_ice_conc) and in percent (raw fields).
EXTENT_THRESHOLD = 0.15
EXTENT_THRESHOLD_PERCENT = 100 * EXTENT_THRESHOLD  # exactly 15.0


# --- the Gaussian fill ----------------------------------------------------------------------------


def check_window(value: Any, name: str) -> int:
    """`value` as an int when it is a non-negative integer (a window, a gap); BadInput naming
    `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise BadInput(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_real(value: Any, name: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise BadInput(f"{name} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise BadInput(f"{name} must be >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FillParams:
    """The Gaussian fill's four parameters (SPEC 4), checked once: the one home of their
    defaults, used by `gaussian_fill`, the builder (serialised in its state), the CLI and
    `sicube.analysis.evaluate`.

    A bad value raises BadInput naming it; values are normalised to int (windows) and float.
    """

    time_window: int = 3
    space_window: int = 7
    alpha: float = 15.0
    sigma: float = 7.0

    def __post_init__(self) -> None:
        checked = {
            "time_window": check_window(self.time_window, "time_window"),
            "space_window": check_window(self.space_window, "space_window"),
            "alpha": _check_real(self.alpha, "alpha", positive=False),
            "sigma": _check_real(self.sigma, "sigma", positive=True),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """The parameters as a JSON-ready dict (the build state's and the cube's record)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FillParams:
        """The parameters from `to_dict`'s output; an unknown key is BadInput."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise BadInput(f"fill parameters: unknown parameter {sorted(unknown)[0]!r}")
        return cls(**data)


# --- the suspicious-day rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class QualityRules:
    """Thresholds of the suspicious-day rules (`sicube.pipeline.quality`'s docstring); checked once
    here."""

    window: int = 15  # days of the centred rolling median (odd: the day and 7 either side)
    k: float = 5.0  # robust deviations (1.4826 MAD) beyond which a share is far off
    min_neighbours: int = 4  # observed days in the window needed to judge a share
    min_obs_deviation: float = 0.05  # an obs_fraction off by less is never flagged
    extent_jump: float = 0.2  # share of the neighbours' extent a reverting jump must exceed
    min_extent_jump: float = 0.01  # ... and this share of the ocean area
    min_out_of_range: float = 0.001  # share of ocean cells out of range never flagged below

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"quality window: an odd number of days >= 3, got {self.window!r}")
        if not isinstance(self.min_neighbours, int) or self.min_neighbours < 1:
            raise ValueError(f"quality min_neighbours: at least 1, got {self.min_neighbours!r}")
        for name in ("k", "min_obs_deviation", "extent_jump", "min_extent_jump",
                     "min_out_of_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"quality {name}: a number >= 0, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> QualityRules:
        """Rules from `to_dict`'s output; missing keys (older records) take the defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


def quality_rules(k: float, window: int) -> QualityRules:
    """QualityRules from the `--suspicious-k/--suspicious-window` options; BadInput if invalid."""
    from sicube.errors import BadInput

    try:
        return QualityRules(window=window, k=k)
    except ValueError as err:
        raise BadInput(f"--suspicious-k/--suspicious-window: {err}") from None


# --- the downloader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadOptions:
    """How hard the downloader tries (the retry policy): the one home of these defaults,
    used by `download`, `iter_downloads`, `check`, `latest_available` and the CLI.

    concurrency : transfers (or probes) at once.
    retries : further attempts after a failed one (5xx, timeout, dropped connection, short
        or invalid file), waiting `backoff` seconds doubled per retry, jittered, at most
        `backoff_max`.
    timeout : seconds without any data before an attempt is abandoned.

    A bad value raises BadInput naming it.
    """

    # 16: a month of small files at 200 ms per request takes 2 rounds of requests, not 4;
    # with 8 in flight 60 such files need 8 rounds, at best ~8x a one-at-a-time loop
    # however little else is done (benchmarks/bench_download.py, RESULTS.md "Download").
    concurrency: int = 16
    retries: int = 4
    timeout: float = 60.0
    backoff: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value)

        if not integer(self.concurrency) or self.concurrency < 1:
            raise BadInput(f"concurrency: must be a positive integer, got {self.concurrency!r}")
        if not integer(self.retries) or self.retries < 0:
            raise BadInput(f"retries: must be a non-negative integer, got {self.retries!r}")
        if not number(self.timeout) or self.timeout <= 0:
            raise BadInput(f"timeout: must be a positive number of seconds, got {self.timeout!r}")
        for name in ("backoff", "backoff_max"):
            if not number(getattr(self, name)) or getattr(self, name) < 0:
                raise BadInput(f"{name}: must be a non-negative number of seconds, "
                               f"got {getattr(self, name)!r}")


__all__ = ["DEFAULT_GRID", "EXTENT_THRESHOLD", "EXTENT_THRESHOLD_PERCENT", "FAILED",
           "MASK_THRESHOLD", "MISSING", "OK", "SUSPICIOUS_AS_MISSING", "SUSPICIOUS_KEEP",
           "SUSPICIOUS_POLICIES",
           "DownloadOptions", "FillParams", "QualityRules", "check_window"]
