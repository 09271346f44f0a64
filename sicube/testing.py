"""Helpers for testing pipelines built on sicube: a small synthetic cube, and a fill check.

`synthetic_cube` writes a cube in sicube's exact layout (`sicube.datacube.cube.template`, its
attributes, chunks and codecs) and says it is complete the way the builder does, so that
every reader (`open_cube`, `SICDataset`, `sicube info`, ...) takes it as a built cube; its
content is random but under control (known missing days, land, a share of filled cells
that varies by day). `assert_matches_reference` checks a fill against the slow, obvious
implementation of the rule (`sicube.kernels.fill.reference_fill`). `serve_directory` serves a
folder (a cube) over HTTP on 127.0.0.1 with added latency, like a distant store;
`silent_server` accepts connections and never answers, like a host that hangs.

Example (in a pytest test)::

    from sicube.testing import synthetic_cube
    store = synthetic_cube(tmp_path / "cube.zarr", n_days=10, missing=(3,))
    ds = SICDataset(store, 20240401, 20240410, input_length=2, pred_length=1)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from sicube.dates import DateLike, parse_date, yyyymmdd

SYNTHETIC_START = dt.date(2024, 4, 1)
SYNTHETIC_CHUNKS = {"time": 4, "y": 16, "x": 16}  # several chunks on every axis


def synthetic_cube(path: str | os.PathLike, *, start: DateLike = SYNTHETIC_START,
                   n_days: int = 30, shape: tuple[int, int] = (48, 40),
                   missing: Iterable[int] = (5, 6, 17),
                   chunks: Mapping[str, int] | None = None, seed: int = 42,
                   epsg: int = 3411) -> Path:
    """Write a complete cube of `n_days` days from `start` on a `shape` grid at `path`.

    Days whose index is in `missing` have no source file (day_observed False, every ocean
    cell filled). On the other days each ocean cell is filled (fill_flag 1, a few 2) with
    a probability drawn per day in [0, 0.6). sea_ice_conc holds unique random fractions
    (0 on land and where no neighbour), sea_ice_conc_raw the observed ones in percent (NaN
    elsewhere); two blocks of land sit in opposite corners. Returns the path.
    """
    from sicube.archive import products
    from sicube.datacube import cube
    from sicube.datacube.record import CubeRecord
    from sicube.kernels.area import extent_area

    first = parse_date(start, "start")
    ny, nx = (int(v) for v in shape)
    missing = sorted({int(i) for i in missing})
    if n_days < 1 or ny < 4 or nx < 4 or any(not 0 <= i < n_days for i in missing):
        raise ValueError(f"synthetic_cube: need n_days >= 1, a grid of at least 4 x 4 and "
                         f"missing day indices in [0, {n_days}); got {n_days}, {shape}, "
                         f"{missing}")
    rng = np.random.default_rng(seed)
    days = [first + dt.timedelta(days=i) for i in range(n_days)]
    x, y = np.arange(nx) * 3125.0, np.arange(ny) * 3125.0
    observed = np.ones(n_days, bool)
    observed[missing] = False
    # What the builder writes when it finishes: the state and the per-day record.
    attrs = CubeRecord(
        status=cube.COMPLETE,
        source_files={str(yyyymmdd(d)): {"name": f"synthetic-{yyyymmdd(d)}.nc", "sha256": ""}
                      for d, seen in zip(days, observed, strict=True) if seen},
        missing_days=tuple(str(yyyymmdd(days[i])) for i in missing),
        failed_days={}, source_directory="", source_base_url="").to_attrs()
    ds = cube.template(days, x, y, epsg, chunks={**SYNTHETIC_CHUNKS, **(chunks or {})},
                       attrs=attrs)
    land = np.zeros((ny, nx), np.uint8)
    land[:ny // 4, :nx // 4] = 1  # a block of land in one corner
    land[5 * ny // 8:, 7 * nx // 10:] = 1  # and another, crossing chunk boundaries
    ocean = land == 0
    filled_share = rng.uniform(0.0, 0.6, n_days)
    filled_share[~observed] = 1.0
    draw = rng.random((n_days, ny, nx))
    flag = np.where(draw < filled_share[:, None, None], 1, 0).astype(np.uint8)
    flag[(draw < 0.03 * filled_share[:, None, None])] = 2
    flag[:, ~ocean] = 3
    conc = rng.random((n_days, ny, nx)).astype(np.float32)
    conc[:, ~ocean] = 0
    conc[flag == 2] = 0
    raw = np.where(flag == 0, conc * 100, np.nan).astype(np.float32)
    ds[cube.CONC].data = conc
    ds[cube.RAW].data = raw
    ds[cube.FLAG].data = flag
    ds[cube.OBSERVED].data = observed
    ds[cube.SENSOR].data = observed.astype(np.uint8) * products.SENSORS["amsr2"].code
    ds[cube.LAND].data = land
    ds[cube.NAN_RATIO].data = rng.random((ny, nx)).astype(np.float32)
    extent, ice = extent_area(conc, ds[cube.CELL_AREA].values, ocean)  # no pole hole here
    ds[cube.EXTENT].data, ds[cube.AREA].data = extent, ice
    path = Path(path)
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", zarr_format=3)
    return path


def assert_matches_reference(filled, raw, time_window: int, space_window: int, alpha: float,
                             sigma: float, *, atol: float = 1e-4,
                             where: np.ndarray | None = None) -> None:
    """Assert that `filled` is the fill of `raw` (time, y, x, percent) by sicube's fill rule.

    Compares with `sicube.kernels.fill.reference_fill` (the rule of docs/cube-format.md, "The fill",
    written out cell by cell: slow, keep arrays small): observed cells must equal `raw` bit
    for bit, the cells the reference fills must be filled and within `atol` of it, and the
    cells it leaves NaN must be NaN. A cell whose weight sum lies within float64 rounding of
    the threshold (`fill.WEIGHT_SUM_MIN`) may fall on either side. `where` (broadcast to the
    array) restricts the check, e.g. to ocean cells. Dask or xarray inputs are computed.
    Raises AssertionError saying how many cells differ and where the first one is.
    """
    from sicube.kernels.fill import WEIGHT_SUM_MIN, reference_weights

    got = np.asarray(getattr(filled, "values", filled))
    source = np.asarray(getattr(raw, "values", raw))
    if got.shape != source.shape or got.ndim != 3:
        raise AssertionError(f"filled has shape {got.shape}, raw {source.shape}: expected "
                             "the same (time, y, x) shape")
    want, weight_sum = reference_weights(source, time_window, space_window, alpha, sigma)
    check = (np.ones(got.shape, bool) if where is None
             else np.broadcast_to(np.asarray(where, bool), got.shape))
    # Float64 sums in another order differ by ~1e-16 relatively: a cell whose weight sum
    # lies that close to the threshold may land on either side of it, no other cell may.
    on_edge = np.isclose(weight_sum, WEIGHT_SUM_MIN, rtol=1e-9, atol=0.0)
    got_nan, want_nan = np.isnan(got), np.isnan(want)
    observed = ~np.isnan(source) & check
    changed = observed & (got != source)
    if changed.any():
        raise AssertionError(f"{changed.sum()} observed cells changed by the fill, first at "
                             f"{tuple(np.argwhere(changed)[0])}")
    mismatch = (got_nan != want_nan) & ~on_edge & check
    if mismatch.any():
        first = tuple(np.argwhere(mismatch)[0])
        raise AssertionError(f"{mismatch.sum()} cells filled where the reference leaves NaN "
                             f"or the reverse, first at {first}")
    both = ~got_nan & ~want_nan & check
    error = np.abs(got[both].astype(np.float64) - want[both])
    if error.size and error.max() > atol:
        first = tuple(np.argwhere(both)[np.argmax(error)])
        raise AssertionError(f"{(error > atol).sum()} filled cells differ from the reference "
                             f"by more than {atol}; worst {error.max():.3g} at {first}")


@dataclasses.dataclass
class ServedDirectory:
    """A folder being served: its base URL, requests per path and the peak of concurrent ones."""

    url: str
    requests: collections.Counter
    in_flight: int = 0
    peak: int = 0


def _latency(served: ServedDirectory, latency: float):
    """aiohttp middleware: count the request, then answer `latency` seconds later."""
    from aiohttp import web

    @web.middleware
    async def delay(request, handler):
        served.requests[request.path] += 1
        served.in_flight += 1
        served.peak = max(served.peak, served.in_flight)
        try:
            if latency > 0:
                await asyncio.sleep(latency)
            return await handler(request)
        finally:
            served.in_flight -= 1

    return delay


def wait_for_port(port: int, process=None, timeout: float = 30.0, what: str = "server") -> None:
    """Return once something listens on 127.0.0.1:`port`; RuntimeError after `timeout`
    seconds, or as soon as `process` (a Popen, when given) has exited."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or (process is not None and process.poll() is not None):
                raise RuntimeError(f"{what} did not start on port {port}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def _running(app) -> Iterator[str]:
    """Run aiohttp `app` on 127.0.0.1 (a free port), on an event loop in a thread of this
    process; its base URL."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="sicube-test-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@contextlib.contextmanager
def serve_directory(root: str | os.PathLike, latency: float = 0.0) -> Iterator[ServedDirectory]:
    """Serve folder `root` over HTTP on 127.0.0.1, `latency` seconds added to every answer.

    A stand-in for a distant object store or web server (a cube at ``root/cube.zarr`` is
    read from ``served.url + "/cube.zarr"``); `requests` and `peak` (the most requests
    answered at once) update live. The server runs on an event loop in a thread of this
    process; the delay is an `asyncio.sleep`, so concurrent requests wait together, as on
    a network.
    """
    from aiohttp import web

    served = ServedDirectory("", collections.Counter())
    app = web.Application(middlewares=[_latency(served, latency)])
    app.router.add_static("/data", Path(root))
    with _running(app) as url:
        served.url = f"{url}/data"
        yield served


@contextlib.contextmanager
def delay_proxy(target: str, latency: float = 0.0) -> Iterator[ServedDirectory]:
    """A reverse proxy on 127.0.0.1 to the HTTP server at `target`, `latency` seconds added
    to every answer: a distant object store made of an S3-compatible server on loopback
    (moto's, MinIO) behind it. Requests pass unchanged, Host header included, so signed S3
    requests stay valid; `served.url` is the endpoint to give the client."""
    import aiohttp
    import yarl
    from aiohttp import web

    served = ServedDirectory("", collections.Counter())
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "content-length"}

    async def forward(request):
        session = request.app["session"]
        # the path exactly as sent (encoded=True: no re-quoting), or a signature breaks
        url = yarl.URL(target + request.raw_path, encoded=True)
        async with session.request(request.method, url,
                                   headers=request.headers, data=await request.read(),
                                   allow_redirects=False) as reply:
            body = await reply.read()
            headers = {k: v for k, v in reply.headers.items() if k.lower() not in hop_by_hop}
            if request.method == "HEAD":  # no body: the object's size is the answer
                headers["Content-Length"] = reply.headers.get("Content-Length", "0")
                return web.Response(status=reply.status, headers=headers)
            return web.Response(status=reply.status, body=body, headers=headers)

    async def open_session(app):
        app["session"] = aiohttp.ClientSession(auto_decompress=False)

    async def close_session(app):
        await app["session"].close()

    app = web.Application(middlewares=[_latency(served, latency)], client_max_size=2**31)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{path:.*}", forward)
    with _running(app) as url:
        served.url = url
        yield served


@dataclasses.dataclass
class SilentServer:
    """A host that accepts connections and never answers: its base URL and how many
    connections it accepted so far."""

    url: str
    connections: int = 0


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    """Listen on 127.0.0.1 (a free port), accept every connection, never send a byte.

    A client sees a host that hangs: its connection succeeds and its request times out.
    `connections` counts the connections accepted (one per attempt of a client that does
    not reuse them). Every socket is closed on exit.
    """
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # so that the accepting thread notices the end
    server = SilentServer(f"http://127.0.0.1:{listener.getsockname()[1]}")
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(connection)  # kept open, unread and unanswered
            server.connections += 1

    thread = threading.Thread(target=accept, daemon=True, name="sicube-silent-server")
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in accepted:
            connection.close()
