"""Checking what a download or a probe is asked for, before any request (BadInput, one line).

Also the summary lines `download` and `check` share.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from sicube.archive import products
from sicube.dates import DateLike, parse_date
from sicube.errors import BadInput
from sicube.params import DEFAULT_GRID

BaseURLs = str | Sequence[str]


def check_base_url(base_url: str) -> str:
    """Return `base_url` without a trailing slash; BadInput unless it is an http(s) URL."""
    if not isinstance(base_url, str):
        raise BadInput(f"base URL {base_url!r}: must be a string")
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"base URL {base_url!r}: must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise BadInput(f"base URL {base_url!r}: malformed port") from None
    return base_url.strip().rstrip("/")


def check_base_urls(base_url: BaseURLs | None) -> tuple[str, ...]:
    """The hosts to try, in order: one URL or several (None: Bremen's primary and older host);
    BadInput unless each is an http(s) URL."""
    if base_url is None:
        return products.DEFAULT_BASE_URLS
    urls = (base_url,) if isinstance(base_url, str) else tuple(base_url)
    if not urls:
        raise BadInput("base URL: give at least one")
    checked = tuple(dict.fromkeys(check_base_url(url) for url in urls))  # once each, in order
    return checked


def check_grid(base_urls: Sequence[str], grid: str | None) -> str:
    """The grid to fetch: `grid`, else the one a grid-folder base URL names, else n3125;
    BadInput when a base URL is the folder of another grid."""
    if grid is not None and grid not in products.GRIDS:
        raise BadInput(f"grid: unknown grid {grid!r}; choose from {', '.join(products.GRIDS)}")
    named = {url: products.url_grid(url) for url in base_urls}
    wanted = grid or next((g for g in named.values() if g), None) or DEFAULT_GRID
    for url, folder in named.items():
        if folder is not None and folder != wanted:
            raise BadInput(f"base URL {url}: is the folder of grid {folder}, not {wanted}; "
                           "give the tree above it to reach other grids")
    return wanted


def check_span(first: dt.date, last: dt.date, grid: str, sensor: str) -> None:
    """BadInput (one line naming the first day) for a span the sensors do not reach."""
    try:
        products.check_sensor(sensor)
    except ValueError as err:
        raise BadInput(str(err)) from None
    problem = products.span_problem(first, last, grid, sensor)
    if problem:
        raise BadInput(problem)


def check_days(days: Iterable[DateLike], grid: str, sensor: str) -> list[dt.date]:
    """The days, sorted and unique; days before the sensors' first day are refused (any host:
    the record begins there, whoever serves it)."""
    checked = sorted({parse_date(day, "day") for day in days})
    if checked:
        check_span(checked[0], checked[-1], grid, sensor)
    return checked


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create `out_dir` if needed and prove it writable (root ignores permission bits)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise BadInput(f"output folder {os.fspath(out_dir)!r} is not writable "
                       f"({err.strerror or err})") from None
    return out


def n_days(n: int) -> str:
    """A summary table's count column: "     1 day ", "    12 days" (aligned)."""
    return f"{n:>6} {'day ' if n == 1 else 'days'}"


def default_grid_note(grid: str) -> str:
    """A summary's line when every day is missing on a grid nobody asked for."""
    others = ", ".join(g for g in products.GRIDS if g != grid)
    return (f"  every day is missing on grid {grid}, the default (no --grid, and the base URL "
            f"names none): for another grid give --grid ({others})")
