"""Fetch the daily files of a date span: concurrent, retried, validated, never half-written.

What the original `download.py` got wrong and this module fixes: downloads ran one at a
time, were never retried and were written in place, so an interrupted run left a truncated
file that the next run skipped as present. Here

- up to `concurrency` files transfer at once (asyncio + fsspec's aiohttp HTTP file system);
- 5xx answers, timeouts, dropped connections, short bodies and files that do not validate
  (an HTML page, a truncated netCDF) are retried with exponential backoff and jitter;
- each file streams into a hidden ``.{name}.part`` beside its target and is renamed into
  place (`os.replace`, atomic) only after it validated, so a final name always holds a
  complete, valid file; a killed run leaves at most a ``.part`` that the next run replaces;
- several hosts may serve the same tree (`base_url` a list; the default: Bremen's primary
  host, then its older host): each file is tried on them in order, a host that keeps failing
  gives way to the next, and the URL that served the file is recorded; a host that times out
  or refuses a connection is demoted for the run (`_Hosts`): the files in flight then move
  on after one attempt, later files ask it last and once, and one file asks it first again
  after `HOST_RETRY_AFTER` seconds; the summary says which host served and which was skipped;
- a base URL that names no grid folder and has no file in its tree is tried as a plain
  folder of files (``{YYYY}/{name}``, what `download` writes), and a 404 names the URLs asked;
- a 404 from every host that answers marks the day *missing* (the server has no file), not
  failed; a host that cannot be reached at all does not hold a missing day up (the hosts
  serve the same tree), one that answers but fails (5xx after retries) makes the day failed;
  a day's v5.4 file absent everywhere is looked for in the listed fallback versions
  (`products.VERSIONS`: v5), and the version found is recorded;
- each day is fetched from its sensor's tree with its sensor's file name
  (`products.sensor_for`: AMSR-E up to 2011-10-04 on the 6.25 km grids, AMSR2 from
  2012-07-02); days before the first day of the sensors asked for are refused up front, days
  no sensor holds (between the two records) are missing without a request;
- a file already present is reused without decoding only when the folder's record says it
  came from this same URL with the same size and sha256; a file the record does not vouch
  for (no record, another server) is decoded in full and kept only if it validates, and a
  file that changed since this URL delivered it is fetched again;
- every file must lie on the grid of the first valid file (or `expected_grid`);
- a JSON manifest (``manifest.json`` in the output folder) records each day's status,
  URL, the URL its bytes came from (``source``), bytes, sha256, attempts and error; both
  `download` and `iter_downloads` keep it current, written atomically from the consumer's
  thread (a lost or stale record only costs a full check, never trust: reuse needs the hash).

`default_raw_dir(base_url)` is the cache folder for one server's files, so two servers never
share files of the same name; `latest_available(base_url, before=...)` finds the last day a
server has with HEAD requests, and `check(start, end)` probes every day's file (HEAD) and
reports present, missing and failing days and the bytes a download would fetch.

Files land under ``out_dir/{YYYY}/{file name}``, the server's own layout, so the output
folder is itself a valid archive for `sources.find_day_files` and `mirror`.

Two ways to consume results as they arrive (the cube builder ingests each day while the
next ones download): `iter_downloads(...)` is a generator yielding each finished
`DayRecord` in completion order, and `download(..., on_day=callback)` calls `callback(record)`
in the caller's thread. In both, the transfers run on an asyncio loop in a background thread.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sicube._version import __version__
from sicube.archive import products
from sicube.archive.sources import GridCoords, check_day_file, sha256_file
from sicube.cache import cache_dir
from sicube.dates import (
    DateLike,
    count_text,
    day_list_text,
    day_range,
    parse_date,
    parse_span,
    yyyymmdd,
)
from sicube.errors import BadInput, BadSourceFile, SourceUnavailable
from sicube.params import DEFAULT_GRID, FAILED, MISSING, OK, DownloadOptions

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = products.DEFAULT_BASE_URL
DEFAULT_BASE_URLS = products.DEFAULT_BASE_URLS
BaseURLs = str | Sequence[str]
MANIFEST_NAME = "manifest.json"
# How often iter_downloads rewrites the manifest while records arrive (and once at the end):
# rewriting a decade's manifest (~1 MB) after every day would cost O(days^2) writes.
MANIFEST_INTERVAL = 5.0
_BLOCK = 1 << 20  # bytes per streamed write: large enough to be cheap, small enough to be lean


@dataclass
class DayRecord:
    """The outcome of one day: status ``ok``, ``missing`` (404) or ``failed``.

    `path` is the final file of an ok day; `skipped` is True when a valid file was
    already there and nothing was transferred. `source` is the URL the file's bytes came
    from: `url` when fetched now, the folder's record when a present file was kept, None
    when a present file was kept that no record vouches for (its origin is unknown).
    `attempts` counts the requests made for the day, on every host and version tried.
    """

    day: dt.date
    status: str
    url: str
    path: Path | None = None
    bytes: int = 0
    sha256: str | None = None
    attempts: int = 0
    error: str | None = None
    skipped: bool = False
    source: str | None = None
    version: str | None = None  # of the file used (v5.4, or a fallback version)
    sensor: str | None = None  # amsr2 or amsre: whose tree and naming

    def to_json(self, root: Path) -> dict:
        """The manifest entry: paths relative to the output folder."""
        return {
            "status": self.status,
            "url": self.url,
            "source": self.source,
            "file": self.path.relative_to(root).as_posix() if self.path else None,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "attempts": self.attempts,
            "error": self.error,
            "skipped": self.skipped,
            "version": self.version,
            "sensor": self.sensor,
        }


@dataclass
class DownloadReport:
    """What `download` did, day by day, with the grid of the files and the manifest path."""

    days: list[DayRecord]
    base_url: str
    manifest_path: Path | None = None
    grid: GridCoords | None = None
    elapsed: float = 0.0
    # With several hosts: the files each host served now, and why a host was skipped (it
    # timed out or refused, so later files asked it last; `retry_after` s later, again).
    served: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    retry_after: float = 0.0
    grid_name: str = ""  # the grid asked for (n3125, ...)
    grid_chosen: bool = True  # False: the default grid, neither asked for nor in a base URL

    def _with(self, status: str) -> list[DayRecord]:
        return [r for r in self.days if r.status == status]

    @property
    def ok(self) -> list[DayRecord]:
        """Days whose valid file is in place (downloaded now or already present)."""
        return self._with(OK)

    @property
    def missing(self) -> list[DayRecord]:
        """Days the server has no file for (404)."""
        return self._with(MISSING)

    @property
    def failed(self) -> list[DayRecord]:
        """Days that could not be fetched as a valid file after every retry."""
        return self._with(FAILED)

    @property
    def files(self) -> dict[dt.date, Path]:
        """The final file of every ok day."""
        return {r.day: r.path for r in self.ok}

    def summary(self) -> str:
        """A one-screen table of the outcome."""
        ok = self.ok
        skipped = sum(r.skipped for r in ok)
        fetched = sum(r.bytes for r in ok if not r.skipped)
        first = min((r.day for r in self.days), default=None)
        last = max((r.day for r in self.days), default=None)
        rate = fetched / self.elapsed / 1e6 if self.elapsed > 0 else 0.0
        lines = [
            f"download {first} .. {last} from {self.base_url}",
            f"  {'ok':<8}{_n_days(len(ok))}  ({len(ok) - skipped} fetched, {skipped} already "
            f"present and valid; {fetched / 1e6:.1f} MB in {self.elapsed:.1f} s, "
            f"{rate:.1f} MB/s)",
            f"  {'missing':<8}{_n_days(len(self.missing))}  {_days(self.missing)}",
            f"  {'failed':<8}{_n_days(len(self.failed))}  {_days(self.failed)}",
        ]
        for record in self.failed:
            lines.append(f"    {yyyymmdd(record.day)}: {record.error} "
                         f"({record.attempts} attempts)")
        for host, n in self.served.items():
            lines.append(f"  {host}: served {count_text(n, 'file')}")
        lines += _skipped_lines(self.skipped, self.retry_after)
        if self.missing and len(self.missing) == len(self.days) and not self.grid_chosen:
            lines.append(_default_grid_note(self.grid_name))
        if self.manifest_path:
            lines.append(f"  manifest: {self.manifest_path}")
        return "\n".join(lines)


def _days(records: list[DayRecord]) -> str:
    return day_list_text([record.day for record in records])


def _skipped_lines(skipped: dict[str, str], retry_after: float) -> list[str]:
    """A summary's lines on the hosts demoted for not answering (`_Hosts`)."""
    return [f"  {host}: skipped, {reason}; asked last, and again after {retry_after:g} s"
            for host, reason in skipped.items()]


def _default_grid_note(grid: str) -> str:
    """A summary's line when every day is missing on a grid nobody asked for."""
    others = ", ".join(g for g in products.GRIDS if g != grid)
    return (f"  every day is missing on grid {grid}, the default (no --grid, and the base URL "
            f"names none): for another grid give --grid ({others})")


def _n_days(n: int) -> str:
    """A summary table's count column: "     1 day ", "    12 days" (aligned)."""
    return f"{n:>6} {'day ' if n == 1 else 'days'}"


class _Retryable(Exception):
    """A failure that another attempt may cure (5xx, short body, invalid content)."""


class _NotOnServer(Exception):
    """The server answered 404: the day is missing (a local FileNotFoundError is not this)."""


class _Permanent(Exception):
    """A failure no retry cures (a 4xx other than 404, a file on another grid)."""


# How one host's tries at one file ended, besides OK and MISSING.
_DOWN, _FAILED, _LOCAL = "down", "host failed", "local"


# --- checking the request ----------------------------------------------------------------------


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
        return DEFAULT_BASE_URLS
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


def _check_out_dir(out_dir: str | os.PathLike) -> Path:
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


DEFAULT_CONCURRENCY = DownloadOptions.concurrency
DEFAULT_RETRIES = DownloadOptions.retries
DEFAULT_TIMEOUT = DownloadOptions.timeout
# Probes of `latest_available` go newest first and stop at the first day found: a small
# window spends fewer requests past it than the download's concurrency would.
PROBE_CONCURRENCY = 4


def _check_days(days: Iterable[DateLike], grid: str, sensor: str) -> list[dt.date]:
    """The days, sorted and unique; days before the sensors' first day are refused (any host:
    the record begins there, whoever serves it)."""
    checked = sorted({parse_date(day, "day") for day in days})
    if checked:
        check_span(checked[0], checked[-1], grid, sensor)
    return checked


# --- the transfers -----------------------------------------------------------------------------


@dataclass
class _Retry:
    """How hard one request is tried (`DownloadOptions`), with its own jitter source."""

    options: DownloadOptions
    _random: random.Random = field(default_factory=random.Random)

    @property
    def retries(self) -> int:
        return self.options.retries

    @property
    def timeout(self) -> float:
        return self.options.timeout

    def delay(self, attempt: int) -> float:
        # Exponential backoff with jitter so that many clients do not retry in lockstep.
        o = self.options
        return min(o.backoff_max, o.backoff * 2 ** (attempt - 1)) * self._random.uniform(0.5, 1.0)

    async def session(self):
        """(fsspec HTTP file system, its aiohttp session); the caller closes the session."""
        import aiohttp
        from fsspec.implementations.http import HTTPFileSystem

        # sock_read bounds a stalled transfer without capping a long healthy one.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                        sock_read=self.timeout)
        fs = HTTPFileSystem(asynchronous=True, skip_instance_cache=True,
                            client_kwargs={"timeout": timeout, "auto_decompress": False})
        # fsspec owns the aiohttp session; requests are issued on it directly because we
        # need the status and Content-Length before streaming, and fsspec's open_async would
        # spend an extra HEAD request per file.
        return fs, await fs.set_session()


# How long a host that timed out or refused a connection is asked last (after the hosts that
# answer); then one file asks it first again, so a host back from an outage is used again
# and a dead one costs one attempt per period, not one per file.
HOST_RETRY_AFTER = 300.0


class _Hosts:
    """Which host each file asks first, shared by every file of a run, and what each served.

    A host that times out or refuses a connection is demoted for `retry_after` seconds: the
    files that start meanwhile ask it last, once, and only when the hosts before it failed.
    When the time is up one file asks it first again (the others keep it demoted until that
    file's answer comes). One asyncio loop drives every file, so no lock is needed.
    """

    def __init__(self, hosts: tuple[str, ...], retry_after: float | None = None):
        self.hosts = hosts
        self.retry_after = HOST_RETRY_AFTER if retry_after is None else retry_after
        self._until: dict[str, float] = {}  # demoted host -> when one file may ask it first
        self.skipped: dict[str, str] = {}  # host -> why it was last demoted
        self.served: collections.Counter[str] = collections.Counter()
        # host -> True for a plain folder of files (`products.file_url(flat=True)`), False
        # for a tree; unknown until a file was found on it.
        self.flat: dict[str, bool] = {}

    def url(self, host: str, day: dt.date, grid: str, sensor: products.Sensor,
            version: str) -> str:
        """The file's URL on `host`, in the host's layout (a tree until one is known)."""
        return products.file_url(host, day, grid, sensor, version, self.flat.get(host, False))

    def may_be_flat(self, host: str) -> bool:
        """True when a 404 from `host`'s tree may mean it is a plain folder of files: a base
        URL that names no grid folder, not known to be a tree (known to be a folder counts:
        another file may have found it so after this one asked the tree)."""
        return self.flat.get(host) is not False and products.url_grid(host) is None

    def order(self) -> list[tuple[str, bool]]:
        """The hosts for the next file, (host, demoted): the others in the given order first."""
        now = time.monotonic()
        ahead, behind = [], []
        for host in self.hosts:
            until = self._until.get(host)
            if until is not None and now >= until:
                self._until[host] = now + self.retry_after  # this file probes it, alone
                until = None
            if until is None:
                ahead.append((host, False))
            else:
                behind.append((host, True))
        return ahead + behind

    def demote(self, host: str, reason: str) -> None:
        self._until[host] = time.monotonic() + self.retry_after
        self.skipped[host] = reason

    def answered(self, host: str) -> None:
        """`host` answered (a file, a 404, an HTTP error): it is not silent any more."""
        self._until.pop(host, None)


class _Fetcher:
    """Downloads days on one asyncio loop; validation and renames run in worker threads.

    `known` is the folder's record (manifest entries by ISO day) as it was before this run;
    it is only read here (the consumer's thread keeps the record current).
    """

    def __init__(self, out: Path, base_urls: tuple[str, ...], *, grid: str, sensor: str,
                 options: DownloadOptions, force: bool, expected_grid: GridCoords | None,
                 full_check: bool = True, known: dict[str, dict] | None = None):
        self.out = out
        self.full_check = full_check
        self.hosts = base_urls
        self.base_url = ", ".join(base_urls)  # for reports
        self.grid_name = grid
        self.sensor = sensor
        # Hosts whose connection failed on every attempt of a file (or that timed out or
        # refused while another host could serve): later files try them once, not `retries`
        # times, until they answer again.
        self._down: set[str] = set()
        self.host_use = _Hosts(base_urls)  # which host goes first; who served, who was skipped
        self.concurrency = options.concurrency
        self.retry = _Retry(options)
        self.force = force
        self.known = known or {}
        self.grid = expected_grid
        self._grid_lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()

    # grid bookkeeping: the first valid file defines the grid unless one was given

    def _match_grid(self, found: GridCoords, name: str) -> None:
        with self._grid_lock:
            if self.grid is None:
                self.grid = found
                return
            expected = self.grid
        if not found.same_as(expected):
            raise _Permanent(
                f"{name}: grid {found.shape[0]} x {found.shape[1]} does not match the grid of "
                f"the other files ({expected.shape[0]} x {expected.shape[1]} cells)")

    def _validate(self, path: Path, name: str, full: bool = True) -> None:
        """Raise BadSourceFile (retry) or _Permanent (grid) unless `path` is a usable file."""
        self._match_grid(check_day_file(path, full=full), name)

    def _keep_present(self, target: Path, urls: list[str],
                      entry: dict | None) -> tuple[int, str, str | None] | None:
        """(bytes, sha256, source URL) of a usable file already at `target`, or None to fetch.

        Reused without decoding only when the record `entry` says this very URL delivered
        these bytes (same size, same sha256): on a full n3125 file (10 MB, row chunks,
        deflate 1) hashing took 19 ms and the structure and grid check 12 ms, a full decode
        420 ms, so a rerun over a decade costs a read of the files, not a decode. A file
        the record does not vouch for (no record, another server) is decoded in full as its
        history is unknown; a file that changed since this URL delivered it is not ours any
        more and is fetched again. `urls` are the file's URLs on every host: any of them
        vouches (the hosts serve the same tree).
        """
        url = urls[0]
        size = target.stat().st_size
        rel = target.relative_to(self.out).as_posix()
        entry = entry if entry and entry.get("status") == OK and entry.get("file") == rel \
            else None
        if entry is not None and entry.get("source") in urls:
            url = entry["source"]
            sha = sha256_file(target) if entry.get("bytes") == size else None
            if sha is None or sha != entry.get("sha256"):
                log.warning("%s changed since it was downloaded from %s; fetching it again",
                            target, url)
                return None
            try:
                self._validate(target, target.name, full=False)  # the grid still has to match
            except (BadSourceFile, _Permanent) as err:
                log.warning("%s is present but unusable (%s); fetching it again", target, err)
                return None
            return size, sha, url
        try:
            self._validate(target, target.name)  # in full: nothing vouches for its history
        except (BadSourceFile, _Permanent) as err:
            log.warning("%s is present but unusable (%s); fetching it again", target, err)
            return None
        sha = sha256_file(target)
        vouched = entry is not None and entry.get("bytes") == size and \
            entry.get("sha256") == sha
        source = entry.get("source") if vouched else None
        if source not in urls:
            log.info("%s: kept a valid file that came from %s, not from %s", target.name,
                     source or "an unknown source", url)
        return size, sha, source

    def _accept(self, part: Path, target: Path) -> None:
        """Validate the finished `.part`, make it durable, then move it to its final name."""
        self._validate(part, target.name, full=self.full_check)
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, target)

    async def _fetch(self, session, fs, url: str, part: Path) -> tuple[int, str]:
        """Stream `url` into `part`; return (bytes, sha256). 404 -> _NotOnServer."""
        # identity: a compressed transfer would make Content-Length disagree with the bytes
        async with session.get(fs.encode_url(url),
                               headers={"Accept-Encoding": "identity"}) as response:
            if response.status == 404:
                raise _NotOnServer(url)
            if response.status >= 500 or response.status in (408, 429):
                raise _Retryable(f"HTTP {response.status} {response.reason}")
            if response.status != 200:
                raise _Permanent(f"HTTP {response.status} {response.reason}")
            expected = response.content_length
            digest = hashlib.sha256()
            size = 0
            with open(part, "wb") as fh:
                async for block in response.content.iter_chunked(_BLOCK):
                    fh.write(block)
                    digest.update(block)
                    size += len(block)
        if expected is not None and size != expected:
            raise _Retryable(f"got {size} of {expected} bytes")
        return size, digest.hexdigest()

    async def _day(self, session, fs, day: dt.date) -> DayRecord:
        """Fetch one day: a present file kept, else each version on each host in order."""
        grid = self.grid_name
        sensor = products.sensor_for(day, grid, self.sensor)
        if sensor is None:  # between the sensors' records: nothing to ask for
            return DayRecord(day=day, status=MISSING, url=products.file_url(self.hosts[0], day,
                                                                            grid),
                             error=f"no sensor's record holds {day} on {grid}")
        urls = {version: [self.host_use.url(host, day, grid, sensor, version)
                          for host in self.hosts] for version in sensor.versions}
        record = DayRecord(day=day, status=FAILED, url=urls[sensor.versions[0]][0],
                           sensor=sensor.name)
        targets = {version: self.out / products.relative_path(day, grid, sensor, version)
                   for version in sensor.versions}
        if not self.force:
            for version, target in targets.items():
                if not target.exists():
                    continue
                # any URL of the file vouches, a plain folder's too (its layout may be unknown)
                vouching = urls[version] + [
                    products.file_url(host, day, grid, sensor, version, True)
                    for host in self.hosts if self.host_use.may_be_flat(host)]
                kept = await asyncio.to_thread(self._keep_present, target, vouching,
                                               self.known.get(day.isoformat()))
                if kept is not None:
                    record.status, record.path, record.skipped = OK, target, True
                    record.bytes, record.sha256, record.source = kept
                    record.version = version
                    return record
        errors: list[str] = []  # from hosts that answered but failed
        unreachable: list[str] = []  # from hosts that could not be reached at all
        absent: list[str] = []  # the URLs that answered 404
        order = self.host_use.order()  # a host that timed out or refused lately goes last
        for version, target in targets.items():
            not_found = False
            for at, (host, demoted) in enumerate(order):
                if demoted and not_found:
                    continue  # a host that answers said 404; a silent one would cost a timeout
                flat = self.host_use.flat.get(host, False)  # the layout found so far
                url = products.file_url(host, day, grid, sensor, version, flat)
                # Move on at the first timeout or refused connection when another host may
                # serve the file (or one already said 404), instead of retrying here.
                give_way = not_found or any(not later for _, later in order[at + 1:])
                once = host in self._down or (demoted and len(self.hosts) > 1)
                outcome = await self._from_host(session, fs, url, target, record, host,
                                                tries=1 if once else None, give_way=give_way)
                if outcome == MISSING and not flat and self.host_use.may_be_flat(host):
                    absent.append(url)
                    # not in a tree: maybe a plain folder of files (`download --out`'s)
                    flat, url = True, products.file_url(host, day, grid, sensor, version, True)
                    outcome = await self._from_host(session, fs, url, target, record, host,
                                                    tries=1 if once else None,
                                                    give_way=give_way)
                if outcome == MISSING:
                    absent.append(url)
                if outcome == OK:
                    self.host_use.flat[host] = flat
                    self._down.discard(host)
                    self.host_use.served[host] += 1
                    record.version = version
                    return record
                if outcome == MISSING:
                    self._down.discard(host)
                    not_found = True
                    continue
                if outcome == _LOCAL:
                    return record  # our disk, not a host: no other host helps
                text = f"{host}: {record.error}" if len(self.hosts) > 1 else str(record.error)
                if outcome == _DOWN:
                    self._down.add(host)
                    unreachable.append(text)
                else:
                    errors.append(text)
            if not not_found or errors:
                # No host said the file is absent, or one that answered failed: a fallback
                # version or a missing day would be a guess.
                break
        if not errors and not (unreachable and not not_found):
            # 404 from every host that answered; a host that cannot be reached at all does
            # not hold a missing day up (the hosts serve the same tree).
            record.status = MISSING
            record.error = "404 not found at " + ", ".join(absent[:4]) + (
                f" and {len(absent) - 4} other URLs" if len(absent) > 4 else "")
        else:
            record.status, record.error = FAILED, "; ".join(errors + unreachable)
        return record

    async def _from_host(self, session, fs, url: str, target: Path, record: DayRecord,
                         host: str, tries: int | None = None, give_way: bool = False) -> str:
        """Fetch `url` into `target` with retries, filling `record`; the outcome: OK, MISSING
        (404), _DOWN (the connection failed every time, or `give_way` and the host timed out
        or refused once: `host` is then demoted), _FAILED or _LOCAL (our disk)."""
        import aiohttp

        part = target.with_name(f".{target.name}.part")
        target.parent.mkdir(parents=True, exist_ok=True)
        part.unlink(missing_ok=True)  # left by an interrupted run
        tries = tries or self.retry.retries + 1
        connection_failed = True
        for attempt in range(1, tries + 1):
            record.attempts += 1
            try:
                size, sha = await self._fetch(session, fs, url, part)
                await asyncio.to_thread(self._accept, part, target)
            except _NotOnServer:
                self.host_use.answered(host)
                return MISSING
            except _Permanent as err:
                self.host_use.answered(host)
                record.error = str(err)
                return _FAILED
            except (_Retryable, BadSourceFile) as err:
                self.host_use.answered(host)
                record.error = str(err)
                connection_failed = False
            except asyncio.TimeoutError:  # before ClientError: aiohttp's timeouts are both
                record.error = f"timed out (no data for {self.retry.timeout:g} s)"
                self.host_use.demote(host, record.error)
                if give_way:
                    return _DOWN
                connection_failed = False
            except aiohttp.ClientConnectorError as err:  # refused, unknown host
                record.error = f"{type(err).__name__}: {err}".rstrip(": ")
                self.host_use.demote(host, record.error)
                if give_way:
                    return _DOWN
            except aiohttp.ClientError as err:  # dropped, short body, ...
                record.error = f"{type(err).__name__}: {err}".rstrip(": ")
                connection_failed = False
            except OSError as err:  # a local disk problem: retrying will not help
                record.error = f"cannot write {part}: {err}"
                return _LOCAL
            else:
                self.host_use.answered(host)
                record.status, record.path, record.bytes, record.sha256 = OK, target, size, sha
                record.source, record.error = url, None
                return OK
            finally:
                part.unlink(missing_ok=True)
            if attempt < tries:
                log.info("%s: attempt %d failed (%s); retrying", url, attempt, record.error)
                await asyncio.sleep(self.retry.delay(attempt))
        return _DOWN if connection_failed else _FAILED

    async def run(self, days: list[dt.date], emit: Callable[[DayRecord], None]) -> None:
        """Fetch every day with at most `concurrency` transfers at once; emit each record."""
        fs, session = await self.retry.session()
        pending = iter(days)

        async def worker() -> None:
            for day in pending:  # one shared iterator: each day goes to exactly one worker
                emit(await self._day(session, fs, day))

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(days)))))
        finally:
            await session.close()

    def run_in_thread(self, days: list[dt.date], results: queue.Queue) -> None:
        """Thread target: run the loop, put each record, then None (or the exception)."""
        self._loop = asyncio.new_event_loop()
        try:
            self._task = self._loop.create_task(self.run(days, results.put))
            if self._stop.is_set():  # cancelled before the task existed
                self._task.cancel()
            self._loop.run_until_complete(self._task)
            results.put(None)
        except asyncio.CancelledError:
            results.put(None)
        except BaseException as err:  # handed to the consumer thread, re-raised there
            results.put(err)
        finally:
            self._loop.close()

    def cancel(self) -> None:
        """Stop the transfers from another thread (their `.part` files are removed)."""
        self._stop.set()  # first: either run_in_thread sees it, or we see its task
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass


# --- public API --------------------------------------------------------------------------------


def default_raw_dir(base_url: BaseURLs | None = None) -> Path:
    """The cache folder for the files of one server: ``$XDG_CACHE_HOME/sicube/raw/HOST/PATH``.

    Keyed by the whole base URL, so servers (another host, port, path or scheme) never
    share a folder: files of the same name from two servers hold different data. The host
    and path keep it readable; a short hash of the normalized URL keeps it unique (two
    paths that read alike once slashes become dashes still differ). Not created here.
    Given several hosts (fallbacks serving the same tree), the folder is the first's: the
    list names one archive, so a file served by a fallback while the primary was down is
    reused when the primary is back, and the default list keeps one cache
    (None: the default hosts).
    """
    parts = urlsplit(check_base_urls(base_url)[0])
    host = parts.hostname or ""
    port = parts.port
    path = parts.path.rstrip("/")
    normal = f"{parts.scheme.lower()}://{host}:{port or ''}{path}"
    digest = hashlib.sha256(normal.encode()).hexdigest()[:10]
    where = _safe_name(host + (f"_{port}" if port else ""))
    slug = _safe_name("-".join(p for p in path.split("/") if p))[:80] or "root"
    return cache_dir("raw", where, f"{slug}-{digest}")


def _safe_name(text: str) -> str:
    """`text` with every character a file name might not take replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


class _Manifest:
    """A folder's record of what was downloaded, kept current from the consumer's thread.

    Written atomically (temp file, then `os.replace`), every `MANIFEST_INTERVAL` seconds
    while records arrive and once at the end. A record lost to a crash or a concurrent
    writer costs the next run a full check of those files, never a wrongly trusted file.
    """

    def __init__(self, out: Path, base_url: str | list[str]):
        self.out = out
        self.base_url = base_url
        self.path = out / MANIFEST_NAME
        self.entries: dict[str, dict] = {}
        try:
            previous = json.loads(self.path.read_text())
            days = previous.get("days", {}) if isinstance(previous, dict) else {}
            self.entries = {k: v for k, v in days.items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError):
            pass  # no manifest yet, or a damaged one: start afresh
        self._written = time.monotonic()

    def add(self, record: DayRecord) -> None:
        self.entries[record.day.isoformat()] = record.to_json(self.out)
        if time.monotonic() - self._written >= MANIFEST_INTERVAL:
            self.write()

    def write(self) -> Path:
        hosts = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        manifest = {
            "sicube_version": __version__,
            "base_url": hosts[0],
            "base_urls": hosts,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "days": dict(sorted(self.entries.items())),
        }
        fd, part = tempfile.mkstemp(dir=self.out, prefix=f".{MANIFEST_NAME}.", suffix=".part")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(manifest, indent=1) + "\n")
            os.replace(part, self.path)
        finally:
            Path(part).unlink(missing_ok=True)
        self._written = time.monotonic()
        return self.path


def _prepare(days: Iterable[DateLike], out_dir: str | os.PathLike, base_url: BaseURLs | None,
             grid: str | None, sensor: str, options: DownloadOptions,
             **fetcher_args) -> tuple[_Fetcher, list[dt.date], _Manifest]:
    """Check every argument (BadInput); return the fetcher, the days and the folder's record."""
    hosts = check_base_urls(base_url)
    grid = check_grid(hosts, grid)
    days = _check_days(days, grid, sensor)
    out = _check_out_dir(out_dir)
    manifest = _Manifest(out, list(hosts))
    fetcher = _Fetcher(out, hosts, grid=grid, sensor=sensor, options=options,
                       known=dict(manifest.entries), **fetcher_args)
    return fetcher, days, manifest


def _recorded(records: Iterator[DayRecord], manifest: _Manifest) -> Iterator[DayRecord]:
    """Pass `records` through, entering each in `manifest` before its consumer sees it."""
    try:
        for record in records:
            manifest.add(record)
            yield record
    finally:
        records.close()
        manifest.write()


def iter_downloads(days: Iterable[DateLike], out_dir: str | os.PathLike, *,
                   base_url: BaseURLs | None = None, grid: str | None = None,
                   sensor: str = products.AUTO,
                   concurrency: int = DownloadOptions.concurrency,
                   retries: int = DownloadOptions.retries, force: bool = False,
                   progress: bool = False, timeout: float = DownloadOptions.timeout,
                   backoff: float = DownloadOptions.backoff,
                   backoff_max: float = DownloadOptions.backoff_max,
                   expected_grid: GridCoords | None = None,
                   full_check: bool = True) -> Iterator[DayRecord]:
    """Yield each day's `DayRecord` as soon as it is finished (completion order, not dates).

    `days` are any days (not necessarily contiguous, e.g. those a resumed build still
    lacks); the other arguments are those of `download`. `full_check=False` accepts a
    new file once its size matches Content-Length and its structure and grid check out,
    without decoding all its data: for a caller that decodes it next anyway (the cube
    builder), which halves the decoding work. Everything is checked before
    anything is fetched (BadInput). The transfers run on an asyncio loop in a background
    thread, so the caller may spend time on each record (e.g. ingest the file) while the
    next days download. Closing the generator early cancels the remaining transfers and
    removes their `.part` files. The folder's ``manifest.json`` is kept current (see
    `download`); a rerun reuses, without decoding, the files it vouches for.
    """
    options = DownloadOptions(concurrency, retries, timeout, backoff, backoff_max)
    fetcher, days, manifest = _prepare(days, out_dir, base_url, grid, sensor, options,
                                       force=force, expected_grid=expected_grid,
                                       full_check=full_check)
    return _recorded(_with_progress(_drain(fetcher, days), len(days), progress), manifest)


def _with_progress(records: Iterator[DayRecord], total: int,
                   enabled: bool) -> Iterator[DayRecord]:
    from tqdm import tqdm

    failed = 0
    with tqdm(total=total, desc="download", unit="day", disable=not enabled) as bar:
        try:
            for record in records:
                failed += record.status == FAILED
                bar.update()
                bar.set_postfix(failed=failed, refresh=False)
                yield record
        finally:
            records.close()  # cancel the transfers when our consumer stops early


def _drain(fetcher: _Fetcher, days: list[dt.date]) -> Iterator[DayRecord]:
    results: queue.Queue = queue.Queue()
    thread = threading.Thread(target=fetcher.run_in_thread, args=(days, results),
                              name="sicube-download", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            item = results.get()
            if item is None:
                finished = True
                return
            if isinstance(item, BaseException):
                finished = True
                raise item
            yield item
    finally:
        if not finished:
            fetcher.cancel()
        thread.join()


def write_manifest(out_dir: str | os.PathLike, records: list[DayRecord],
                   base_url: str | list[str]) -> Path:
    """Write (atomically) `manifest.json` in `out_dir`, keeping entries of days not in `records`.

    Returns the manifest's path. Layout: ``{"sicube_version", "base_url" (the first host),
    "base_urls", "updated", "days": {"YYYY-MM-DD": {"status", "url", "source", "file",
    "bytes", "sha256", "attempts", "error", "skipped", "version", "sensor"}}}``; ``url`` is
    the file's URL on the first host, ``source`` the URL its bytes came from (null when a kept
    file's origin is unknown), ``attempts`` the requests made (every host and version).
    `download` and `iter_downloads` keep it current themselves.
    """
    manifest = _Manifest(Path(out_dir), base_url)
    for record in records:
        manifest.entries[record.day.isoformat()] = record.to_json(manifest.out)
    return manifest.write()


def download(start: DateLike, end: DateLike, out_dir: str | os.PathLike, *,
             base_url: BaseURLs | None = None, grid: str | None = None,
             sensor: str = products.AUTO, concurrency: int = DownloadOptions.concurrency,
             retries: int = DownloadOptions.retries, force: bool = False, progress: bool = True,
             timeout: float = DownloadOptions.timeout, backoff: float = DownloadOptions.backoff,
             backoff_max: float = DownloadOptions.backoff_max,
             expected_grid: GridCoords | None = None,
             on_day: Callable[[DayRecord], None] | None = None) -> DownloadReport:
    """Download every day of [start, end] into `out_dir/{YYYY}/` and write the manifest.

    Parameters
    ----------
    start, end : first and last day (YYYYMMDD or ISO); both included.
    out_dir : output folder, created if needed.
    base_url : server (or mirror) base URL, or several hosts serving the same tree, tried
        in order for each file (default: Bremen's primary and older host). A base URL is a
        sensor's tree or one grid's folder of it (`sicube.archive.products`).
    grid : n3125, n6250, s3125 or s6250; default: the grid a grid-folder base URL names,
        else n3125.
    sensor : amsr2, amsre, or auto (default): each day from the sensor whose record holds
        it on the grid. Days before the first day of the chosen sensors are refused.
    concurrency : transfers at once.
    retries : further attempts after a failed one (5xx, timeout, dropped connection,
        short or invalid file), with exponential backoff from `backoff` seconds, jittered,
        capped at `backoff_max`.
    force : fetch again even when a valid file is already present.
    progress : show a progress bar.
    timeout : seconds without any data before an attempt is abandoned.
    expected_grid : the grid every file must lie on; default: the first valid file's.
    on_day : called in the caller's thread with each finished `DayRecord` as it completes.

    Returns
    -------
    DownloadReport; `.failed` lists the days that failed every retry (a 404 day is
    missing, not failed). Raises BadInput for bad arguments before fetching anything.
    """
    first, last = parse_span(start, end)
    options = DownloadOptions(concurrency, retries, timeout, backoff, backoff_max)
    fetcher, days, manifest = _prepare(day_range(first, last), out_dir, base_url, grid, sensor,
                                       options, force=force, expected_grid=expected_grid)
    began = time.perf_counter()
    records: list[DayRecord] = []
    arriving = _recorded(_with_progress(_drain(fetcher, days), len(days), progress), manifest)
    try:
        for record in arriving:
            records.append(record)
            if on_day is not None:
                on_day(record)
    finally:
        arriving.close()  # now, not at garbage collection: the manifest is written here
    records.sort(key=lambda r: r.day)
    use = fetcher.host_use
    several = len(fetcher.hosts) > 1
    return DownloadReport(days=records, base_url=fetcher.base_url, manifest_path=manifest.path,
                          grid=fetcher.grid, elapsed=time.perf_counter() - began,
                          served={h: use.served[h] for h in fetcher.hosts if use.served[h]}
                          if several else {},
                          skipped=dict(use.skipped) if several else {},
                          retry_after=use.retry_after, grid_name=fetcher.grid_name,
                          grid_chosen=grid is not None or any(products.url_grid(h)
                                                              for h in fetcher.hosts))


# --- what the server has -----------------------------------------------------------------------

PRESENT, FAILING = "present", "failing"


@dataclass
class Probe:
    """What the hosts say of one day's file: ``present`` (with the URL that has it, its
    version and Content-Length), ``missing`` (404 on every host, every version) or
    ``failing`` (some host could not say, after retries; `error` says why)."""

    day: dt.date
    status: str
    url: str
    bytes: int | None = None
    version: str | None = None
    sensor: str | None = None
    error: str | None = None


async def _head(session, fs, url: str, retry: _Retry, tries: int, use: _Hosts, host: str,
                give_way: bool = False) -> tuple[str, int | None, str]:
    """HEAD `url` on `host` with retries: (PRESENT, Content-Length, ""), (MISSING, None, ""),
    (_DOWN, None, reason) when no attempt could connect (or, with `give_way`, at the first
    timeout or refused connection: `host` is then demoted in `use`), or (FAILING, None,
    reason) after `tries` attempts (5xx, 408, 429, timeouts and connection errors are
    retried; another 4xx is not)."""
    import aiohttp

    reason = ""
    connection_failed = True
    for attempt in range(1, tries + 1):
        try:
            async with session.head(fs.encode_url(url), allow_redirects=True,
                                    headers={"Accept-Encoding": "identity"}) as response:
                use.answered(host)
                if response.status == 404:
                    return MISSING, None, ""
                if 200 <= response.status < 300:
                    return PRESENT, response.content_length, ""
                connection_failed = False
                reason = f"HTTP {response.status} {response.reason}"
                if response.status < 500 and response.status not in (408, 429):
                    return FAILING, None, f"refuses it: {reason}"
        except asyncio.TimeoutError:  # before ClientError: aiohttp's timeouts are both
            reason = f"timed out (no answer for {retry.timeout:g} s)"
            use.demote(host, reason)
            if give_way:
                return _DOWN, None, reason
            connection_failed = False
        except aiohttp.ClientError as err:  # refused, dropped, ...
            reason = f"{type(err).__name__}: {err}".rstrip(": ")
            refused = isinstance(err, aiohttp.ClientConnectorError)
            if refused:
                use.demote(host, reason)
                if give_way:
                    return _DOWN, None, reason
            connection_failed &= refused
        if attempt < tries:
            await asyncio.sleep(retry.delay(attempt))
    return _DOWN if connection_failed else FAILING, None, f"{reason} ({tries} attempts)"


async def _probe_day(session, fs, day: dt.date, hosts: tuple[str, ...], grid: str, sensor: str,
                     retry: _Retry, down: set[str], use: _Hosts) -> Probe:
    """Ask the hosts for `day`'s file as the downloader would fetch it: each version in turn,
    each host in the order `use` gives (a host that timed out or refused lately goes last),
    a plain folder of files where a tree has none; a host that failed a probe before is
    tried once, not with retries."""
    chosen = products.sensor_for(day, grid, sensor)
    if chosen is None:
        return Probe(day, MISSING, products.file_url(hosts[0], day, grid),
                     error=f"no sensor's record holds {day} on {grid}")
    probe = Probe(day, FAILING, products.file_url(hosts[0], day, grid, chosen),
                  sensor=chosen.name)
    errors, unreachable = [], []
    order = use.order()
    for version in chosen.versions:
        not_found = False
        for at, (host, demoted) in enumerate(order):
            if demoted and not_found:
                continue  # as the downloader does (`_Fetcher._day`)
            give_way = not_found or any(not later for _, later in order[at + 1:])
            once = host in down or (demoted and len(hosts) > 1)
            tries = 1 if once else retry.retries + 1
            flat = use.flat.get(host, False)  # the layout found so far
            url = products.file_url(host, day, grid, chosen, version, flat)
            status, size, reason = await _head(session, fs, url, retry, tries, use, host,
                                               give_way)
            if status == MISSING and not flat and use.may_be_flat(host):
                folder_url = products.file_url(host, day, grid, chosen, version, True)
                found = await _head(session, fs, folder_url, retry, tries, use, host, give_way)
                if found[0] == PRESENT:
                    use.flat[host] = True
                    url, (status, size, reason) = folder_url, found
            if status == PRESENT:
                use.flat.setdefault(host, False)
                down.discard(host)
                probe.status, probe.url, probe.bytes, probe.version = PRESENT, url, size, version
                return probe
            if status == MISSING:
                down.discard(host)
                not_found = True
                continue
            down.add(host)
            text = f"{host}: {reason}" if len(hosts) > 1 else reason
            (unreachable if status == _DOWN else errors).append(text)
        if not not_found or errors:
            break
    if errors or (unreachable and not not_found):  # as the downloader decides (`_Fetcher._day`)
        probe.error = "; ".join(errors + unreachable)
    else:
        probe.status = MISSING
    return probe


async def _probe_all(hosts: tuple[str, ...], days: list[dt.date], grid: str, sensor: str,
                     concurrency: int, retry: _Retry, progress: bool,
                     use: _Hosts) -> list[Probe]:
    from tqdm import tqdm

    fs, session = await retry.session()
    down: set[str] = set()
    pending = iter(days)
    probes: list[Probe] = []
    bar = tqdm(total=len(days), desc="check", unit="day", disable=not progress)

    async def worker() -> None:
        for day in pending:
            probes.append(await _probe_day(session, fs, day, hosts, grid, sensor, retry, down,
                                           use))
            bar.update()

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(days)))))
    finally:
        bar.close()
        await session.close()
    return sorted(probes, key=lambda p: p.day)


@dataclass
class CheckReport:
    """What `check` found, day by day, and the bytes a download of the present days fetches."""

    days: list[Probe]
    base_urls: tuple[str, ...]
    grid: str
    elapsed: float = 0.0
    grid_chosen: bool = True  # False: the default grid, neither asked for nor in a base URL
    skipped: dict[str, str] = field(default_factory=dict)  # as in `DownloadReport`
    retry_after: float = 0.0

    def _with(self, status: str) -> list[Probe]:
        return [p for p in self.days if p.status == status]

    @property
    def present(self) -> list[Probe]:
        """Days a host has the file of."""
        return self._with(PRESENT)

    @property
    def missing(self) -> list[Probe]:
        """Days every host answers 404 for (or no sensor's record holds)."""
        return self._with(MISSING)

    @property
    def failing(self) -> list[Probe]:
        """Days some host could not answer for after every retry."""
        return self._with(FAILING)

    @property
    def total_bytes(self) -> int:
        """Sum of the present files' Content-Length (those that sent one)."""
        return sum(p.bytes or 0 for p in self.present)

    @property
    def exit_code(self) -> int:
        """0 when every day is present or missing, 1 when some failed."""
        return 1 if self.failing else 0

    def summary(self) -> str:
        """A one-screen table of the outcome."""
        first = self.days[0].day if self.days else None
        last = self.days[-1].day if self.days else None
        unsized = sum(p.bytes is None for p in self.present)
        served: dict[str, int] = {}
        for probe in self.present:
            host = next((h for h in self.base_urls
                         if urlsplit(probe.url).netloc == urlsplit(h).netloc), probe.url)
            served[host] = served.get(host, 0) + 1
        fallback = [p for p in self.present if p.version != products.VERSION]
        lines = [
            f"check {first} .. {last}, grid {self.grid}, on {', '.join(self.base_urls)}",
            f"  {'present':<8}{_n_days(len(self.present))}  {self.total_bytes / 1e6:,.1f} MB"
            + (f" ({unsized} without Content-Length)" if unsized else ""),
            f"  {'missing':<8}{_n_days(len(self.missing))}  "
            f"{day_list_text([p.day for p in self.missing])}",
            f"  {'failing':<8}{_n_days(len(self.failing))}  "
            f"{day_list_text([p.day for p in self.failing])}",
        ]
        if len(self.base_urls) > 1:
            lines += [f"  served by {host}: {count_text(n, 'day')}" for host, n in served.items()]
        lines += _skipped_lines(self.skipped, self.retry_after)
        if fallback:
            lines.append("  fallback version: " + ", ".join(
                f"{p.day:%Y%m%d} ({p.version})" for p in fallback[:8])
                + (f" and {len(fallback) - 8} more" if len(fallback) > 8 else ""))
        for probe in self.failing[:12]:
            lines.append(f"    {yyyymmdd(probe.day)}: {probe.error}")
        if self.missing and not self.present and not self.failing and not self.grid_chosen:
            lines.append(_default_grid_note(self.grid))
        lines.append(f"  {self.elapsed:.1f} s")
        return "\n".join(lines)


def check(start: DateLike, end: DateLike, *, base_url: BaseURLs | None = None,
          grid: str | None = None, sensor: str = products.AUTO,
          concurrency: int = DownloadOptions.concurrency, retries: int = DownloadOptions.retries,
          timeout: float = DownloadOptions.timeout, backoff: float = DownloadOptions.backoff,
          backoff_max: float = DownloadOptions.backoff_max,
          progress: bool = False) -> CheckReport:
    """Probe every day's file of [start, end] with HEAD requests, before a long build.

    The days, hosts, versions and retries are those `download` would use (same arguments);
    nothing is downloaded. Returns a CheckReport: present days (with the URL that has the
    file and its Content-Length), missing days (404 everywhere) and failing days.
    Bad arguments raise BadInput before any request.
    """
    first, last = parse_span(start, end)
    hosts = check_base_urls(base_url)
    chosen = grid is not None or any(products.url_grid(host) for host in hosts)
    grid = check_grid(hosts, grid)
    days = _check_days(day_range(first, last), grid, sensor)
    retry = _Retry(DownloadOptions(concurrency, retries, timeout, backoff, backoff_max))
    began = time.perf_counter()
    use = _Hosts(hosts)
    with ThreadPoolExecutor(1, thread_name_prefix="sicube-check") as pool:
        probes = pool.submit(asyncio.run, _probe_all(hosts, days, grid, sensor, concurrency,
                                                     retry, progress, use)).result()
    return CheckReport(probes, hosts, grid, time.perf_counter() - began, grid_chosen=chosen,
                       skipped=dict(use.skipped) if len(hosts) > 1 else {},
                       retry_after=use.retry_after)


async def _latest(hosts: tuple[str, ...], grid: str, sensor: str, days: list[dt.date],
                  concurrency: int, retry: _Retry) -> dt.date | None:
    fs, session = await retry.session()
    down: set[str] = set()
    use = _Hosts(hosts)
    try:
        for at in range(0, len(days), concurrency):
            window = days[at:at + concurrency]  # newest first
            probes = await asyncio.gather(*(_probe_day(session, fs, day, hosts, grid, sensor,
                                                       retry, down, use) for day in window))
            for probe in probes:
                if probe.status == FAILING:
                    # a later day is unknown: the answer would be a guess
                    raise SourceUnavailable(f"server {', '.join(hosts)} is unavailable for "
                                            f"{probe.day}: {probe.error}")
                if probe.status == PRESENT:
                    return probe.day
        return None
    finally:
        await session.close()


def latest_available(base_url: BaseURLs | None, *, before: DateLike, limit: int = 30,
                     grid: str | None = None, sensor: str = products.AUTO,
                     concurrency: int = PROBE_CONCURRENCY,
                     retries: int = DownloadOptions.retries,
                     timeout: float = DownloadOptions.timeout,
                     backoff: float = DownloadOptions.backoff,
                     backoff_max: float = DownloadOptions.backoff_max) -> dt.date | None:
    """The last day the server has a file for, on or before `before`; None within `limit` days.

    Probes `before`, the day before, ... with HEAD requests, `concurrency` days at a time,
    and stops at the newest day that exists (a 404 on every host is a day the server lacks).
    Requests are retried like downloads (`retries`, `timeout`, `backoff`, `backoff_max`);
    a server that stays unreachable or keeps failing raises SourceUnavailable naming it and
    the reason, rather than passing for a server with no data. Bad arguments raise BadInput.
    """
    hosts = check_base_urls(base_url)
    grid = check_grid(hosts, grid)
    last = parse_date(before, "before")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise BadInput(f"limit: must be a positive number of days, got {limit!r}")
    retry = _Retry(DownloadOptions(concurrency, retries, timeout, backoff, backoff_max))
    days = [last - dt.timedelta(days=back) for back in range(limit)]
    # On a thread of its own: asyncio.run cannot run inside a caller's loop (e.g. Jupyter).
    with ThreadPoolExecutor(1, thread_name_prefix="sicube-probe") as pool:
        return pool.submit(asyncio.run, _latest(hosts, grid, sensor, days, concurrency,
                                                retry)).result()
