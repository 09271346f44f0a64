"""What the server has, without downloading: `check` (HEAD every day's file of a span) and
`latest_available` (the last day a server has).

The days, hosts, versions and retries are those `download` would use: the hosts are asked as
`hosts.ask_hosts` says, with HEAD requests instead of GETs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sicube.archive import products
from sicube.archive.hosts import DOWN, HOST_FAILED, Hosts, RetryPolicy, ask_hosts, skipped_lines
from sicube.archive.request import (
    BaseURLs,
    check_base_urls,
    check_days,
    check_grid,
    default_grid_note,
    n_days,
)
from sicube.dates import (
    DateLike,
    count_text,
    day_list_text,
    day_range,
    parse_date,
    parse_span,
    yyyymmdd,
)
from sicube.errors import BadInput, SourceUnavailable
from sicube.params import MISSING, OK, DownloadOptions

PRESENT, FAILING = "present", "failing"
# Probes of `latest_available` go newest first and stop at the first day found: a small
# window spends fewer requests past it than the download's concurrency would.
PROBE_CONCURRENCY = 4


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


async def _head(session, fs, url: str, retry: RetryPolicy, tries: int, use: Hosts, host: str,
                give_way: bool = False) -> tuple[str, int | None, str]:
    """HEAD `url` on `host` with up to `tries` attempts: (OK, Content-Length, ""), (MISSING,
    None, ""), (DOWN, None, reason) when no attempt could connect (or, with `give_way`, at the
    first timeout or refused connection: `host` is then demoted in `use`), or (HOST_FAILED,
    None, reason) (5xx, 408, 429, timeouts and connection errors are retried; another 4xx
    is not)."""
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
                    return OK, response.content_length, ""
                connection_failed = False
                reason = f"HTTP {response.status} {response.reason}"
                if response.status < 500 and response.status not in (408, 429):
                    return HOST_FAILED, None, f"refuses it: {reason}"
        except asyncio.TimeoutError:  # before ClientError: aiohttp's timeouts are both
            reason = f"timed out (no answer for {retry.timeout:g} s)"
            use.demote(host, reason)
            if give_way:
                return DOWN, None, reason
            connection_failed = False
        except aiohttp.ClientError as err:  # refused, dropped, ...
            reason = f"{type(err).__name__}: {err}".rstrip(": ")
            refused = isinstance(err, aiohttp.ClientConnectorError)
            if refused:
                use.demote(host, reason)
                if give_way:
                    return DOWN, None, reason
            connection_failed &= refused
        if attempt < tries:
            await asyncio.sleep(retry.delay(attempt))
    return DOWN if connection_failed else HOST_FAILED, None, f"{reason} ({tries} attempts)"


async def _probe_day(session, fs, day: dt.date, grid: str, sensor: str, retry: RetryPolicy,
                     use: Hosts) -> Probe:
    """Ask the hosts for `day`'s file as the downloader would fetch it (`hosts.ask_hosts`),
    with HEAD requests."""
    hosts = use.hosts
    chosen = products.sensor_for(day, grid, sensor)
    if chosen is None:
        return Probe(day, MISSING, products.file_url(hosts[0], day, grid),
                     error=f"no sensor's record holds {day} on {grid}")
    probe = Probe(day, FAILING, products.file_url(hosts[0], day, grid, chosen),
                  sensor=chosen.name)

    async def ask(host: str, version: str, url: str, tries: int,
                  give_way: bool) -> tuple[str, str]:
        outcome, probe.bytes, reason = await _head(session, fs, url, retry, tries, use, host,
                                                   give_way)
        return outcome, reason

    verdict = await ask_hosts(
        use, chosen.versions,
        lambda host, version, flat: products.file_url(host, day, grid, chosen, version, flat),
        ask, retry.retries)
    if verdict.status == OK:
        probe.status, probe.url, probe.version = PRESENT, verdict.url, verdict.version
    elif verdict.status == MISSING:
        probe.status, probe.bytes = MISSING, None
    else:
        probe.error = verdict.error
    return probe


async def _probe_all(days: list[dt.date], grid: str, sensor: str, concurrency: int,
                     retry: RetryPolicy, progress: bool, use: Hosts) -> list[Probe]:
    from tqdm import tqdm

    fs, session = await retry.session()
    pending = iter(days)
    probes: list[Probe] = []
    bar = tqdm(total=len(days), desc="check", unit="day", disable=not progress)

    async def worker() -> None:
        for day in pending:
            probes.append(await _probe_day(session, fs, day, grid, sensor, retry, use))
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
            f"  {'present':<8}{n_days(len(self.present))}  {self.total_bytes / 1e6:,.1f} MB"
            + (f" ({unsized} without Content-Length)" if unsized else ""),
            f"  {'missing':<8}{n_days(len(self.missing))}  "
            f"{day_list_text([p.day for p in self.missing])}",
            f"  {'failing':<8}{n_days(len(self.failing))}  "
            f"{day_list_text([p.day for p in self.failing])}",
        ]
        if len(self.base_urls) > 1:
            lines += [f"  served by {host}: {count_text(n, 'day')}" for host, n in served.items()]
        lines += skipped_lines(self.skipped, self.retry_after)
        if fallback:
            lines.append("  fallback version: " + ", ".join(
                f"{p.day:%Y%m%d} ({p.version})" for p in fallback[:8])
                + (f" and {len(fallback) - 8} more" if len(fallback) > 8 else ""))
        for probe in self.failing[:12]:
            lines.append(f"    {yyyymmdd(probe.day)}: {probe.error}")
        if self.missing and not self.present and not self.failing and not self.grid_chosen:
            lines.append(default_grid_note(self.grid))
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
    days = check_days(day_range(first, last), grid, sensor)
    retry = RetryPolicy(DownloadOptions(concurrency, retries, timeout, backoff, backoff_max))
    began = time.perf_counter()
    use = Hosts(hosts)
    with ThreadPoolExecutor(1, thread_name_prefix="sicube-check") as pool:
        probes = pool.submit(asyncio.run, _probe_all(days, grid, sensor, concurrency, retry,
                                                     progress, use)).result()
    return CheckReport(probes, hosts, grid, time.perf_counter() - began, grid_chosen=chosen,
                       skipped=dict(use.skipped) if len(hosts) > 1 else {},
                       retry_after=use.retry_after)


async def _latest(hosts: tuple[str, ...], grid: str, sensor: str, days: list[dt.date],
                  concurrency: int, retry: RetryPolicy) -> dt.date | None:
    fs, session = await retry.session()
    use = Hosts(hosts)
    try:
        for at in range(0, len(days), concurrency):
            window = days[at:at + concurrency]  # newest first
            probes = await asyncio.gather(*(_probe_day(session, fs, day, grid, sensor, retry,
                                                       use) for day in window))
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
    retry = RetryPolicy(DownloadOptions(concurrency, retries, timeout, backoff, backoff_max))
    days = [last - dt.timedelta(days=back) for back in range(limit)]
    # On a thread of its own: asyncio.run cannot run inside a caller's loop (e.g. Jupyter).
    with ThreadPoolExecutor(1, thread_name_prefix="sicube-probe") as pool:
        return pool.submit(asyncio.run, _latest(hosts, grid, sensor, days, concurrency,
                                                retry)).result()
