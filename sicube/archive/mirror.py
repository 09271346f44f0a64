"""A loopback copy of the Bremen server, with faults on demand, for tests and the demo.

  `Mirror(root)`serves an archive folder (``root/{YYYY}/{file name}``, as
  `synthetic.write_archive` writes it) under the real URL layout of both sensors' trees:
AMSR2's files (``asi-AMSR2-{grid}-{YYYYMMDD}-v5.4.nc``) at
``http://127.0.0.1:PORT/amsr2/asi_daygrid_swath/{grid}/netcdf/{YYYY}/{file name}`` and
AMSR-E's (``asi-{grid}-{YYYYMMDD}-v5.4.nc``) at ``.../amsre/asi_daygrid_swath/...``; one
folder may hold both namings. So `products.file_url(mirror.base_url, day)` and
  `products.grid_from_url`work unchanged. It answers GET, HEAD and Range requests and 404 for
absent days and for a file in the other sensor's tree. It binds 127.0.0.1 only.

Fault plan: `FAULT_PLAN_HELP` (shown by ``sicube mirror --help`` too).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from sicube.archive import products
from sicube.errors import BadInput
from sicube.params import DEFAULT_GRID

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
BASE_PATH = "/amsr2/asi_daygrid_swath/{grid}/netcdf"
TREE_PATH = "/{sensor}/asi_daygrid_swath/{grid}/netcdf"

_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service temporarily unavailable</title></head>\n"
    b"<body><h1>Maintenance</h1><p>The data server is under maintenance.</p></body></html>\n"
)
_TRICKLE_PIECES = 20

FaultPlan = Mapping[str, "str | list[str]"]


FAULT_PLAN_HELP = """\
A dict (or a JSON file with one object) mapping a file name, a day `YYYYMMDD` or `"*"`
(every file) to the faults of that file's successive GET requests. The most specific
key wins: file name, then day, then `"*"`. A value is either

- a list, applied to the 1st, 2nd, ... GET of that file; once it is used up the file is
  served normally, or
- a single string, applied to every GET of that file ("always").

Faults:

  `ok`          serve the file normally
  `500`, ...    answer with that HTTP status (any code 400-599, e.g. `503`)
  `drop`        close the connection without answering
  `truncate`    send the full `Content-Length` but only half of the body, then close
  `html`        status 200 with an HTML error page (`text/html`) instead of the file
  `slow:S`      wait S seconds before answering, then serve normally (client timeouts)
  `trickle:S`   serve normally but spread the body over S seconds (slow transfers)

Example: `{"20240402": ["503", "drop", "ok"], "20240403": ["truncate", "html"],
"20240404": ["slow:2.0"], "20240407": "500"}`. HEAD requests never consume faults, unless
the mirror is made with `head_faults=True`: then a HEAD takes the next fault like a GET
(`truncate`, `html` and `trickle` answer a HEAD normally), for probes (`sicube check`).
  `latency`     adds a fixed delay before every answer, like a distant server.
"""
"""The fault-plan format of `load_faults` and ``sicube mirror --faults``."""


def _check_fault(fault: str) -> str:
    """Return `fault` when it is one the mirror knows; raise BadInput otherwise."""
    name, _, arg = fault.partition(":")
    if name in ("ok", "drop", "truncate", "html") and not arg:
        return fault
    if name in ("slow", "trickle"):
        try:
            if float(arg) >= 0:
                return fault
        except ValueError:
            pass
    if name.isdigit() and 400 <= int(name) <= 599 and not arg:
        return fault
    raise BadInput(f"fault plan: unknown fault {fault!r} (use ok, 500, 503, drop, truncate, "
                   "html, slow:SECONDS or trickle:SECONDS)")


def load_fault_plan(plan: FaultPlan | str | os.PathLike | None) -> dict[str, str | list[str]]:
    """Return a checked fault plan from a dict or a JSON file (see the module docstring)."""
    if plan is None:
        return {}
    if isinstance(plan, (str, os.PathLike)):
        try:
            plan = json.loads(Path(plan).read_text())
        except (OSError, ValueError) as err:
            raise BadInput(f"fault plan {os.fspath(plan)!r}: cannot be read as JSON ({err})") \
                from None
    if not isinstance(plan, Mapping):
        raise BadInput("fault plan: must be an object mapping file names or days to faults")
    checked: dict[str, str | list[str]] = {}
    for key, faults in plan.items():
        if isinstance(faults, str):
            checked[str(key)] = _check_fault(faults)
        elif isinstance(faults, list) and all(isinstance(f, str) for f in faults):
            checked[str(key)] = [_check_fault(f) for f in faults]
        else:
            raise BadInput(f"fault plan: {key!r} must map to a fault or a list of faults")
    return checked


class _Faults:
    """Which fault the next GET of each file gets (thread-safe: tests change plans live)."""

    def __init__(self, plan: FaultPlan | None):
        self._lock = threading.Lock()
        self.set(plan)

    def set(self, plan: FaultPlan | None) -> None:
        with self._lock:
            self._plan = load_fault_plan(plan)
            self._queues: dict[str, collections.deque[str]] = {
                key: collections.deque(faults)
                for key, faults in self._plan.items()
                if isinstance(faults, list)
            }

    def next(self, name: str) -> str:
        """The fault of the next request of file `name` (consumes a listed one)."""
        parsed = products.parse_file_name(name)
        keys = [name, f"{parsed[1]:%Y%m%d}" if parsed else None, "*"]
        with self._lock:
            for key in keys:
                if key in self._queues:
                    queue = self._queues[key]
                    return queue.popleft() if queue else "ok"
                if key in self._plan:
                    return self._plan[key]  # the "always" form
        return "ok"


class Mirror:
    """A loopback AMSR2 server over an archive folder, running in a background thread.

    Use it as a context manager::

        with Mirror(archive_root, faults={"20240402": ["503"]}, latency=0.2) as mirror:
            sicube.download("20240401", "20240430", "data", base_url=mirror.base_url)

    Parameters
    ----------
    root : archive folder with ``{YYYY}/`` sub-folders.
    faults : fault plan (dict or JSON file), see the module docstring.
    latency : seconds added before every answer.
    port : TCP port on 127.0.0.1; 0 picks a free one.
    grid : the grid name in the served URL path.
    head_faults : HEAD requests take faults too (see the module docstring).

    Attributes
    ----------
    base_url : the URL to pass as ``base_url`` (known once started).
    requests : Counter of requests per served path below the base URL (``"2024/asi-…nc"``).
    log : list of (method, path, fault or status) for every request, in order.
    """

    def __init__(self, root: str | os.PathLike, faults: FaultPlan | str | os.PathLike | None = None,
                 latency: float = 0.0, port: int = 0, grid: str = DEFAULT_GRID,
                 head_faults: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise BadInput(f"mirror root {os.fspath(root)!r} is not a folder")
        if grid not in products.GRIDS:
            raise BadInput(f"grid: unknown grid {grid!r}")
        self.grid = grid
        self.head_faults = bool(head_faults)
        self.latency = float(latency)
        self.port = int(port)
        self._faults = _Faults(faults)
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """Base URL of the served archive, e.g. http://127.0.0.1:PORT/amsr2/…/n3125/netcdf."""
        return f"http://{HOST}:{self.port}{BASE_PATH.format(grid=self.grid)}"

    @property
    def tree_url(self) -> str:
        """Base URL of the AMSR2 tree (every grid below it; AMSR-E's beside it)."""
        return f"http://{HOST}:{self.port}/amsr2/asi_daygrid_swath"

    def set_faults(self, plan: FaultPlan | str | os.PathLike | None) -> None:
        """Replace the fault plan (its request counters start afresh)."""
        self._faults.set(plan)

    # --- serving -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        for sensor in products.SENSORS:
            app.router.add_get(TREE_PATH.format(sensor=sensor, grid=self.grid)
                               + "/{year}/{name}",  # also answers HEAD
                               functools.partial(self._serve, sensor=sensor))
        return app

    async def _serve(self, request: web.Request, sensor: str) -> web.StreamResponse:
        year, name = request.match_info["year"], request.match_info["name"]
        rel = f"{year}/{name}"
        self.requests[rel] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        parts = products.file_name_parts(name)
        path = self.root / year / name
        if (parts is None or f"{parts.day:%Y}" != year or parts.sensor != sensor
                or parts.grid != self.grid or not path.is_file()):
            self.log.append((request.method, rel, "404"))
            raise web.HTTPNotFound(text=f"404: {name} not found\n")
        head = request.method == "HEAD"
        fault = "ok" if head and not self.head_faults else self._faults.next(name)
        self.log.append((request.method, rel, fault))
        kind, _, arg = fault.partition(":")
        if head and kind in ("truncate", "html", "trickle"):
            kind = "ok"  # faults of a body: a HEAD has none
        if kind.isdigit():
            return web.Response(status=int(kind), text=f"{kind}: injected fault\n")
        if kind == "drop":
            request.transport.close()  # the client sees the connection go away unanswered
            return web.Response(status=500)  # never reaches the client
        if kind == "html":
            return web.Response(body=_HTML_PAGE, content_type="text/html")
        if kind == "slow":
            await asyncio.sleep(float(arg))
        if kind in ("truncate", "trickle"):
            return await self._stream(request, path, kind, float(arg or 0))
        return web.FileResponse(path)  # handles Range, HEAD and conditional requests

    async def _stream(self, request: web.Request, path: Path, kind: str,
                      seconds: float) -> web.StreamResponse:
        body = path.read_bytes()
        response = web.StreamResponse(headers={"Content-Type": "application/x-netcdf"})
        response.content_length = len(body)
        await response.prepare(request)
        if kind == "truncate":
            await response.write(body[: len(body) // 2])
            await asyncio.sleep(0.01)  # let the half body leave before the connection closes
            request.transport.close()
            return response
        piece = -(-len(body) // _TRICKLE_PIECES)
        for start in range(0, len(body), piece):
            await response.write(body[start:start + piece])
            await asyncio.sleep(seconds / _TRICKLE_PIECES)
        await response.write_eof()
        return response

    # --- lifecycle -----------------------------------------------------------------------------

    async def _start(self, sock: socket.socket) -> None:
        # short: handlers still sleeping in a slow: fault must not hold up stop()
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self.port))
        except OSError as err:
            sock.close()
            raise BadInput(f"port {self.port}: cannot listen on {HOST} ({err.strerror})") from None
        self.port = sock.getsockname()[1]
        return sock

    def start(self) -> Mirror:
        """Start serving in a background thread; return self once the port accepts requests."""
        sock = self._bind()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start(sock))
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="sicube-mirror", daemon=True)
        self._thread.start()
        started.wait()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(root: str | os.PathLike, port: int = 8000,
                  faults: FaultPlan | str | os.PathLike | None = None,
                  latency: float = 0.0, grid: str = DEFAULT_GRID) -> None:
    """Serve `root` on 127.0.0.1 until interrupted, printing the base URL first (the CLI)."""
    with Mirror(root, faults=faults, latency=latency, port=port, grid=grid) as mirror:
        print(mirror.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
