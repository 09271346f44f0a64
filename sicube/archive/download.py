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
  or refuses a connection is demoted for the run (`hosts.Hosts`): the files in flight then move
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

The parts, one module each: `request` checks the arguments, `hosts` decides which host is
asked and how often (for downloads and probes alike), `fetch` transfers, validates and
renames one day's file, `probe` asks without downloading (`check`, `latest_available`);
this module is the API, the folder's manifest and the report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sicube._version import __version__
from sicube.archive import products
from sicube.archive.fetch import DayRecord, Fetcher
from sicube.archive.hosts import HOST_RETRY_AFTER, skipped_lines
from sicube.archive.probe import PROBE_CONCURRENCY, CheckReport, Probe, check, latest_available
from sicube.archive.request import (
    BaseURLs,
    check_base_url,
    check_base_urls,
    check_days,
    check_grid,
    check_out_dir,
    check_span,
    default_grid_note,
    n_days,
)
from sicube.archive.sources import GridCoords
from sicube.cache import cache_dir
from sicube.dates import DateLike, count_text, day_list_text, day_range, parse_span, yyyymmdd
from sicube.params import FAILED, MISSING, OK, DownloadOptions

# Also the download's API: the record of a day, the probes, the request checks.
__all__ = [
    "DEFAULT_BASE_URL", "DEFAULT_BASE_URLS", "DEFAULT_CONCURRENCY", "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT", "HOST_RETRY_AFTER", "MANIFEST_NAME", "PROBE_CONCURRENCY", "BaseURLs",
    "CheckReport", "DayRecord", "DownloadOptions", "DownloadReport", "Probe", "check",
    "check_base_url", "check_base_urls", "check_grid", "check_span", "default_raw_dir",
    "download", "iter_downloads", "latest_available", "write_manifest",
]

DEFAULT_BASE_URL = products.DEFAULT_BASE_URL
DEFAULT_BASE_URLS = products.DEFAULT_BASE_URLS
DEFAULT_CONCURRENCY = DownloadOptions.concurrency
DEFAULT_RETRIES = DownloadOptions.retries
DEFAULT_TIMEOUT = DownloadOptions.timeout
MANIFEST_NAME = "manifest.json"
# How often iter_downloads rewrites the manifest while records arrive (and once at the end):
# rewriting a decade's manifest (~1 MB) after every day would cost O(days^2) writes.
MANIFEST_INTERVAL = 5.0


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
            f"  {'ok':<8}{n_days(len(ok))}  ({len(ok) - skipped} fetched, {skipped} already "
            f"present and valid; {fetched / 1e6:.1f} MB in {self.elapsed:.1f} s, "
            f"{rate:.1f} MB/s)",
            f"  {'missing':<8}{n_days(len(self.missing))}  {_days(self.missing)}",
            f"  {'failed':<8}{n_days(len(self.failed))}  {_days(self.failed)}",
        ]
        for record in self.failed:
            lines.append(f"    {yyyymmdd(record.day)}: {record.error} "
                         f"({record.attempts} attempts)")
        for host, n in self.served.items():
            lines.append(f"  {host}: served {count_text(n, 'file')}")
        lines += skipped_lines(self.skipped, self.retry_after)
        if self.missing and len(self.missing) == len(self.days) and not self.grid_chosen:
            lines.append(default_grid_note(self.grid_name))
        if self.manifest_path:
            lines.append(f"  manifest: {self.manifest_path}")
        return "\n".join(lines)

    def failed_line(self) -> str:
        """The failed days in one line, by file name (the CLI's stderr line)."""
        names = ", ".join(r.url.rsplit("/", 1)[-1] for r in self.failed)
        return f"{count_text(len(self.failed), 'day')} failed: {names}"


def _days(records: list[DayRecord]) -> str:
    return day_list_text([record.day for record in records])


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
             **fetcher_args) -> tuple[Fetcher, list[dt.date], _Manifest]:
    """Check every argument (BadInput); return the fetcher, the days and the folder's record."""
    hosts = check_base_urls(base_url)
    grid = check_grid(hosts, grid)
    days = check_days(days, grid, sensor)
    out = check_out_dir(out_dir)
    manifest = _Manifest(out, list(hosts))
    fetcher = Fetcher(out, hosts, grid=grid, sensor=sensor, options=options,
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


def _drain(fetcher: Fetcher, days: list[dt.date]) -> Iterator[DayRecord]:
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
