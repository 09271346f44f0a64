"""Parsing of user-supplied dates and the calendar day axis."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np

from sicube.errors import BadInput

DateLike = int | str | dt.date | dt.datetime | np.datetime64


def parse_date(value: DateLike, name: str = "date") -> dt.date:
    """Return the calendar day of `value`: a YYYYMMDD int or string, an ISO date, or a date object.

    Raises BadInput naming `name` when the value is not a real calendar day.
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, np.datetime64):
        return parse_date(str(value.astype("datetime64[D]")), name)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = str(int(value))
    if isinstance(value, str):
        text = value.strip().split("T")[0]
        layout = "%Y%m%d" if len(text) == 8 and text.isdigit() else "%Y-%m-%d"
        try:
            return dt.datetime.strptime(text, layout).date()
        except ValueError:
            pass
    raise BadInput(f"{name}: cannot read {value!r} as a date (use YYYYMMDD or YYYY-MM-DD)")


def parse_span(start: DateLike, end: DateLike) -> tuple[dt.date, dt.date]:
    """Return (start, end) as dates, refusing an end before the start."""
    first, last = parse_date(start, "start"), parse_date(end, "end")
    if last < first:
        raise BadInput(f"end {last.isoformat()} is before start {first.isoformat()}")
    return first, last


def day_range(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Yield every calendar day from start to end, both included."""
    for offset in range((end - start).days + 1):
        yield start + dt.timedelta(days=offset)


def yyyymmdd(day: dt.date) -> int:
    """Return the day as the YYYYMMDD integer the original toolbox used."""
    return day.year * 10000 + day.month * 100 + day.day


def to_datetime64(days: list[dt.date]) -> np.ndarray:
    """Return the days as a datetime64[ns] array (xarray's native time unit)."""
    return np.array([np.datetime64(d, "D") for d in days]).astype("datetime64[ns]")


def count_text(n: int, noun: str) -> str:
    """`n` and `noun`, plural unless `n` is 1: "1 day", "3 days", "0 files"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def day_list_text(days: list[dt.date], limit: int = 12) -> str:
    """The first `limit` days as "YYYYMMDD, YYYYMMDD" in order, then how many more there are."""
    shown = ", ".join(f"{d:%Y%m%d}" for d in sorted(days)[:limit])
    return shown + (f" (+{len(days) - limit} more)" if len(days) > limit else "")
