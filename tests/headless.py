"""A real headless Chromium, driven over the DevTools protocol with aiohttp's websocket client.

`load_page` opens a local HTML file with the network cut off (every host name resolves to
nothing), and gives back what a user's browser would have shown: the console errors and
uncaught exceptions, every request that left the machine's files (a CDN script, a web
font), and a screenshot. `find_chromium` says where the browser is, or None; without one
a browser test skips, or fails under CI (the CI variable set).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
SKIP_REASON = ("no Chromium found (set SICUBE_CHROMIUM, or on Debian/Ubuntu as root: "
               "apt-get install chromium; .ci/run installs it, or fails saying why)")


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) binary: $SICUBE_CHROMIUM, else the first on PATH."""
    given = os.environ.get("SICUBE_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def under_ci() -> bool:
    """Whether CI runs the tests (it sets the CI variable): there no browser test may skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_chromium() -> str:
    """The Chromium for a browser test. Without one the test skips, saying why; under CI it
    fails instead, so that CI never passes without having loaded the pages."""
    found = find_chromium()
    if found is None:
        if under_ci():
            pytest.fail(f"CI is set: {SKIP_REASON}", pytrace=False)
        pytest.skip(SKIP_REASON)
    return found


@dataclass
class PageLoad:
    """What loading a page gave: console errors and exceptions, requests that left the
    local files, and a PNG screenshot."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""

    def pixels(self) -> np.ndarray:
        """The screenshot as an (h, w, 3) uint8 array."""
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.screenshot)).convert("RGB"))

    def non_white_share(self) -> float:
        """Share of the screenshot's pixels that are not (near) white or the page background."""
        rgb = self.pixels().astype(int)
        return float((rgb.min(axis=2) < 235).mean())

    def spread(self) -> float:
        """Standard deviation of the screenshot's grey levels (0 for a blank page)."""
        return float(self.pixels().mean(axis=2).std())


class _Session:
    """One DevTools websocket: commands by id, events kept in order."""

    def __init__(self, ws) -> None:
        self.ws, self.next_id, self.pending = ws, 0, {}
        self.events: list[dict] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = message.json()
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self.events.append(data)
                if data.get("method") == "Page.loadEventFired":
                    self.loaded.set()

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"DevTools {method}: {reply['error']}")
        return reply.get("result", {})


def _read_events(events: list[dict]) -> PageLoad:
    found = PageLoad()
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.errors.append("console.error: " + " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.errors.append("exception: " + str(
                details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            found.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES):
                found.requests.append(url)
    return found


async def _drive(port: int, url: str, ready: str | None, timeout: float,
                 settle: float) -> PageLoad:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
            targets = await reply.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            session = _Session(ws)
            for domain in ("Runtime", "Log", "Network", "Page"):
                await session.send(f"{domain}.enable")
            await session.send("Page.navigate", url=url)
            await asyncio.wait_for(session.loaded.wait(), timeout)
            deadline = time.monotonic() + timeout
            while ready is not None and time.monotonic() < deadline:
                result = await session.send("Runtime.evaluate", expression=ready,
                                            returnByValue=True)
                if result.get("result", {}).get("value") is True:
                    break
                await asyncio.sleep(0.25)
            else:
                if ready is not None:
                    raise TimeoutError(f"page never became ready ({ready})")
            await asyncio.sleep(settle)
            shot = await session.send("Page.captureScreenshot", format="png")
            found = _read_events(session.events)
            found.screenshot = base64.b64decode(shot["data"])
            session.reader.cancel()
            return found


def load_page(path: str | os.PathLike, *, width: int = 1200, height: int = 1600,
              ready: str | None = None, timeout: float = 60.0, settle: float = 0.5,
              chromium: str | None = None) -> PageLoad:
    """Load the local file `path` in a headless Chromium with no network; after its load
    event, wait until the JavaScript expression `ready` is true (when given), then `settle`
    seconds, and screenshot a `width` x `height` window."""
    binary = chromium or require_chromium()
    with tempfile.TemporaryDirectory(prefix="sicube-chromium-") as profile:
        command = [binary, "--headless", "--disable-gpu", "--no-sandbox",
                   "--remote-debugging-port=0", "--remote-allow-origins=*",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                   "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--hide-scrollbars",
                   # Offline: no host name resolves, so a page that needs the internet shows it.
                   "--host-resolver-rules=MAP * ~NOTFOUND", "about:blank"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} did not start (exit code {process.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            url = Path(path).resolve().as_uri()
            return asyncio.run(_drive(port, url, ready, timeout, settle))
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """End Chromium and every helper process it started (its own session, so one process
    group), and wait until none is left writing into the profile folder."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # helpers that outlived the browser
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return  # the group is gone
        time.sleep(0.05)
