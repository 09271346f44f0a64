"""Fetch one day's file from the hosts: streamed, retried, validated, never half-written.

`Fetcher` runs the transfers of a download on one asyncio loop (`download` drives it from a
background thread). Each file streams into a hidden ``.{name}.part`` beside its target, is
validated (`sources.check_day_file`) in a worker thread and renamed into place
(`os.replace`, atomic) only then, so a final name always holds a complete, valid file.
5xx answers, timeouts, dropped connections, short bodies and files that do not validate
are retried with exponential backoff and jitter (`hosts.RetryPolicy`); which host is asked,
and how often, is `hosts.ask_hosts`'s policy. A file already present is reused as the
folder's record (`download`'s manifest) allows (`Fetcher._keep_present`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sicube.archive import products
from sicube.archive.hosts import (
    DOWN,
    HOST_FAILED,
    LOCAL,
    Hosts,
    RetryPolicy,
    ask_hosts,
)
from sicube.archive.sources import GridCoords, check_day_file, sha256_file
from sicube.errors import BadSourceFile
from sicube.params import FAILED, MISSING, OK, DownloadOptions

log = logging.getLogger(__name__)

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


class _Retryable(Exception):
    """A failure that another attempt may cure (5xx, short body, invalid content)."""


class _NotOnServer(Exception):
    """The server answered 404: the day is missing (a local FileNotFoundError is not this)."""


class _Permanent(Exception):
    """A failure no retry cures (a 4xx other than 404, a file on another grid)."""


class _Slot:
    """A day's turn to transfer, one of `concurrency`: taken before its hosts are chosen,
    given back while its file validates (a retry takes it again) and when the day is done.

    Validation (a full decode) costs more than a small file's transfer: holding the turn
    through it kept the next transfers waiting, so at 200 ms latency the pace was set by the
    validations, not by the requests in flight (`benchmarks/bench_download.py`).
    """

    def __init__(self, turns: asyncio.Semaphore):
        self._turns = turns
        self._held = False

    async def take(self) -> None:
        if not self._held:
            await self._turns.acquire()
            self._held = True

    def give_back(self) -> None:
        if self._held:
            self._turns.release()
            self._held = False


class Fetcher:
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
        self.host_use = Hosts(base_urls)  # which host goes first; who served, who was skipped
        self.concurrency = options.concurrency
        self.retry = RetryPolicy(options)
        self.force = force
        self.known = known or {}
        self.grid = expected_grid
        self._grid_lock = threading.Lock()
        self._turns: asyncio.Semaphore | None = None  # the transfer slots of `run`
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

        slot = _Slot(self._turns)

        async def ask(host: str, version: str, url: str, tries: int,
                      give_way: bool) -> tuple[str, str]:
            outcome = await self._from_host(session, fs, url, targets[version], record, host,
                                            tries, give_way, slot)
            return outcome, str(record.error)

        await slot.take()  # before the hosts' order: it reflects the answers so far
        try:
            verdict = await ask_hosts(
                self.host_use, sensor.versions,
                lambda host, version, flat: products.file_url(host, day, grid, sensor,
                                                              version, flat),
                ask, self.retry.retries)
        finally:
            slot.give_back()
        if verdict.status == OK:
            record.version = verdict.version
        elif verdict.status != LOCAL:  # LOCAL: `_from_host` said what failed on our disk
            record.status, record.error = verdict.status, verdict.error
        return record

    async def _from_host(self, session, fs, url: str, target: Path, record: DayRecord,
                         host: str, tries: int, give_way: bool, slot: _Slot) -> str:
        """Fetch `url` into `target` with up to `tries` attempts, filling `record`; the
        outcome: OK, MISSING (404), DOWN (the connection failed every time, or `give_way` and
        the host timed out or refused once: `host` is then demoted), HOST_FAILED or LOCAL
        (our disk). Transfers in `slot`, which is given back while the file validates."""
        import aiohttp

        part = target.with_name(f".{target.name}.part")
        target.parent.mkdir(parents=True, exist_ok=True)
        part.unlink(missing_ok=True)  # left by an interrupted run
        connection_failed = True
        for attempt in range(1, tries + 1):
            record.attempts += 1
            try:
                await slot.take()
                size, sha = await self._fetch(session, fs, url, part)
                slot.give_back()
                await asyncio.to_thread(self._accept, part, target)
            except _NotOnServer:
                self.host_use.answered(host)
                return MISSING
            except _Permanent as err:
                self.host_use.answered(host)
                record.error = str(err)
                return HOST_FAILED
            except (_Retryable, BadSourceFile) as err:
                self.host_use.answered(host)
                record.error = str(err)
                connection_failed = False
            except asyncio.TimeoutError:  # before ClientError: aiohttp's timeouts are both
                record.error = f"timed out (no data for {self.retry.timeout:g} s)"
                self.host_use.demote(host, record.error)
                if give_way:
                    return DOWN
                connection_failed = False
            except aiohttp.ClientConnectorError as err:  # refused, unknown host
                record.error = f"{type(err).__name__}: {err}".rstrip(": ")
                self.host_use.demote(host, record.error)
                if give_way:
                    return DOWN
            except aiohttp.ClientError as err:  # dropped, short body, ...
                record.error = f"{type(err).__name__}: {err}".rstrip(": ")
                connection_failed = False
            except OSError as err:  # a local disk problem: retrying will not help
                record.error = f"cannot write {part}: {err}"
                return LOCAL
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
        return DOWN if connection_failed else HOST_FAILED

    async def run(self, days: list[dt.date], emit: Callable[[DayRecord], None]) -> None:
        """Fetch every day with at most `concurrency` transfers at once; emit each record."""
        fs, session = await self.retry.session()
        pending = iter(days)
        self._turns = asyncio.Semaphore(self.concurrency)

        async def worker() -> None:
            for day in pending:  # one shared iterator: each day goes to exactly one worker
                emit(await self._day(session, fs, day))

        # Twice as many days as transfers: while a day's file validates, another transfers.
        workers = min(2 * self.concurrency, len(days))
        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
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
