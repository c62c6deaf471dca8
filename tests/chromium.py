"""A headless Chromium driven over the Chrome DevTools protocol (websocket via aiohttp).

Enough for tests to load a page, wait on what its scripts drew, and take a screenshot. The
browser runs with a throwaway profile that is removed on close, and is stopped (killed if need
be) whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,900", "--hide-scrollbars")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class ChromiumError(Exception):
    pass


class Chromium:
    """One browser, one page. ``async with Chromium(binary) as browser``; one event loop."""

    def __init__(self, binary: str, *, start_timeout_s: float = 60.0) -> None:
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self._profile = ""
        self._proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()  # its chatter; read back only when it fails to start
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="letmesh-chromium-")
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        self._proc = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
                                      start_new_session=True)  # its own group: its helpers go with it
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout_s
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self._proc.poll() is not None:
                self._log.seek(0)
                raise ChromiumError(f"{self.binary} exited with {self._proc.returncode}: "
                                    f"{self._log.read().decode(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise ChromiumError(f"{self.binary} did not open its DevTools port within {self.start_timeout_s} s")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            raise ChromiumError(f"no page target among {targets}")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 << 20)

    async def send(self, method: str, **params: Any) -> dict:
        """One DevTools command and its result (events in between are skipped)."""
        assert self._ws is not None
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = await asyncio.wait_for(self._ws.receive(), 30.0)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ChromiumError(f"DevTools connection ended ({msg.type.name}) during {method}")
            reply = json.loads(msg.data)
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def goto(self, url: str, timeout_s: float = 30.0) -> None:
        """Load ``url`` and return once its document has loaded (its scripts have run once)."""
        await self.send("Page.enable")
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise ChromiumError(f"cannot load {url}: {result['errorText']}")
        # Navigate answers once the response is committed, while the new document may still be
        # parsing: a script evaluated then can find no <body> yet. (The browser starts on
        # about:blank, and a page may rewrite its own address, so any other address will do.)
        deadline = time.monotonic() + timeout_s
        state = None
        while True:
            try:
                state = await self.evaluate("[location.href, document.readyState]")
            except ChromiumError:  # the old document's context went away mid-call
                state = None
            if state and state[0] != "about:blank" and state[1] == "complete":
                return
            if time.monotonic() > deadline:
                raise ChromiumError(f"{url} did not finish loading within {timeout_s:g} s (last seen: {state})")
            await asyncio.sleep(0.05)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` evaluated in the page."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise ChromiumError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the window's height) as a PNG."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await asyncio.wait_for(self.send("Browser.close"), 5.0)
            except (ChromiumError, TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
            await self._ws.close()
            self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._proc is not None:
            try:
                await asyncio.to_thread(self._proc.wait, 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait, 10)
            try:  # helpers (renderer, zygote) left in its group
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc = None
        self._log.close()
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = ""
