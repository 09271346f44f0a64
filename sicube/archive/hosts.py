"""Which host to ask for a file, how hard, and what the hosts' answers add up to.

Several hosts may serve the same tree (`products.DEFAULT_BASE_URLS`: Bremen's primary host,
then its older host). The downloader (`fetch`) and the probes (`probe`) ask them the same
way, written once here (`ask_hosts`):

- each file asks the hosts in order, each version of the file in turn (`products.VERSIONS`);
- a host that times out or refuses a connection is *silent*: for `HOST_RETRY_AFTER` seconds
  the files that start ask it last, once, and only when the hosts before it failed; then one
  file asks it first again, so a host back from an outage is used again and a dead one costs
  one attempt per period, not one per file. A host no attempt of a file could reach is asked
  once, not with retries, until it answers. Any answer (a file, a 404, an HTTP error) makes
  a host healthy again. `Hosts` keeps this state for every file of a run;
- a 404 from a host's tree may mean the host is a plain folder of files (``{YYYY}/{name}``,
  what `download` writes): the folder's URL is asked too, and the layout found is kept;
- the day is *missing* when every host that answered said 404 (a host that cannot be
  reached at all does not hold a missing day up: the hosts serve the same tree), *failed*
  when one that answered failed; a fallback version is asked only when no host failed.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sicube.archive import products
from sicube.params import FAILED, MISSING, OK, DownloadOptions

# How long a host that timed out or refused a connection is asked last (after the hosts that
# answer); then one file asks it first again.
HOST_RETRY_AFTER = 300.0

# How one host's tries at one file ended, besides OK and MISSING: it could not be reached
# (DOWN), it answered but failed (HOST_FAILED), or our own disk failed (LOCAL).
DOWN, HOST_FAILED, LOCAL = "down", "host failed", "local"


@dataclass
class RetryPolicy:
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
        """Seconds to wait before attempt `attempt` + 1."""
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


@dataclass
class _Silence:
    """A host that timed out or refused: asked last until `until`; asked once when no
    attempt of a file could reach it (`unreachable`)."""

    until: float
    unreachable: bool = False


class Hosts:
    """The hosts of a run, in order: which one each file asks first and how often, the layout
    each was found to have, what each served and why one was skipped.

    One asyncio loop drives every file, so no lock is needed.
    """

    def __init__(self, hosts: tuple[str, ...], retry_after: float | None = None):
        self.hosts = hosts
        self.retry_after = HOST_RETRY_AFTER if retry_after is None else retry_after
        self._silent: dict[str, _Silence] = {}
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
            silence = self._silent.get(host)
            if silence is not None and now >= silence.until:
                silence.until = now + self.retry_after  # this file asks it first, alone
                ahead.append((host, False))
            elif silence is not None:
                behind.append((host, True))
            else:
                ahead.append((host, False))
        return ahead + behind

    def tries(self, host: str, demoted: bool, retries: int) -> int:
        """Attempts for one file on `host`: one when no attempt could reach it lately, or
        when it is demoted and another host may serve; else 1 + `retries`."""
        silence = self._silent.get(host)
        once = silence is not None and (silence.unreachable or
                                        (demoted and len(self.hosts) > 1))
        return 1 if once else retries + 1

    def demote(self, host: str, reason: str) -> None:
        """`host` timed out or refused a connection: ask it last for `retry_after` s."""
        silence = self._silent.setdefault(host, _Silence(0.0))
        silence.until = time.monotonic() + self.retry_after
        self.skipped[host] = reason

    def unreachable(self, host: str) -> None:
        """No attempt of a file reached `host` (or it gave way at once): ask it once."""
        self._silent.setdefault(host, _Silence(time.monotonic() + self.retry_after))
        self._silent[host].unreachable = True

    def answered(self, host: str) -> None:
        """`host` answered (a file, a 404, an HTTP error): it is healthy again."""
        self._silent.pop(host, None)


def skipped_lines(skipped: dict[str, str], retry_after: float) -> list[str]:
    """A summary's lines on the hosts demoted for not answering (`Hosts`)."""
    return [f"  {host}: skipped, {reason}; asked last, and again after {retry_after:g} s"
            for host, reason in skipped.items()]


@dataclass
class Verdict:
    """What the hosts said of one file: OK (`url` and `version` have it), MISSING (404 from
    every host that answered), FAILED or LOCAL (our disk); `error` says why."""

    status: str
    url: str | None = None
    version: str | None = None
    error: str | None = None


# Ask one host for one version's URL: ask(host, version, url, tries, give_way) -> (outcome,
# error text), the outcome OK, MISSING, DOWN, HOST_FAILED or LOCAL. With `give_way` the first
# timeout or refused connection ends the tries (DOWN): another host may serve the file.
Ask = Callable[[str, str, str, int, bool], Awaitable[tuple[str, str]]]


async def ask_hosts(hosts: Hosts, versions: Sequence[str], url: Callable[[str, str, bool], str],
                    ask: Ask, retries: int) -> Verdict:
    """Ask the hosts for one file, each version in turn, as the module docstring says.

    `url(host, version, flat)` is the file's URL on a host (`flat`: a plain folder's);
    `ask` asks one host (`Ask`); `retries` further attempts on a host that answers badly.
    """
    errors: list[str] = []  # from hosts that answered but failed
    unreachable: list[str] = []  # from hosts that could not be reached at all
    absent: list[str] = []  # the URLs that answered 404
    several = len(hosts.hosts) > 1
    order = hosts.order()  # a host that timed out or refused lately goes last
    not_found = False
    for version in versions:
        not_found = False
        for at, (host, demoted) in enumerate(order):
            if demoted and not_found:
                continue  # a host that answers said 404; a silent one would cost a timeout
            # Move on at the first timeout or refused connection when another host may
            # serve the file (or one already said 404), instead of retrying here.
            give_way = not_found or any(not later for _, later in order[at + 1:])
            tries = hosts.tries(host, demoted, retries)
            flat = hosts.flat.get(host, False)  # the layout found so far
            where = url(host, version, flat)
            outcome, error = await ask(host, version, where, tries, give_way)
            if outcome == MISSING and not flat and hosts.may_be_flat(host):
                absent.append(where)
                # not in a tree: maybe a plain folder of files (`download --out`'s)
                flat, where = True, url(host, version, True)
                outcome, error = await ask(host, version, where, tries, give_way)
            if outcome == OK:
                hosts.flat[host] = flat
                hosts.served[host] += 1
                return Verdict(OK, where, version)
            if outcome == MISSING:
                absent.append(where)
                not_found = True
                continue
            if outcome == LOCAL:
                return Verdict(LOCAL, error=error)  # our disk, not a host: no other host helps
            text = f"{host}: {error}" if several else error
            if outcome == DOWN:
                hosts.unreachable(host)
                unreachable.append(text)
            else:
                errors.append(text)
        if not not_found or errors:
            # No host said the file is absent, or one that answered failed: a fallback
            # version or a missing day would be a guess.
            break
    if errors or (unreachable and not not_found):
        return Verdict(FAILED, error="; ".join(errors + unreachable))
    return Verdict(MISSING, error="404 not found at " + ", ".join(absent[:4]) + (
        f" and {len(absent) - 4} other URLs" if len(absent) > 4 else ""))
