"""A real headless Chromium (Debian ``chromium``) driven over the DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
    "--remote-debugging-port=0",
]


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("Debian's chromium is required (apt-get install chromium)")
    return found


class Browser:
    """One Chromium process with a fresh profile and one page, for ``async with``."""

    def __init__(self, log: Path):
        self.profile = Path(tempfile.mkdtemp(prefix="qai-chromium-"))
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ids = 0
        self.events: list[dict[str, Any]] = []  # what arrived while waiting for answers

    async def __aenter__(self) -> Browser:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as listing:
            pages = [t for t in await listing.json() if t["type"] == "page"]
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        await self.call("Network.enable")
        return self

    async def __aexit__(self, *exc: object | TracebackType | None) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self.ids += 1
        mine = self.ids
        await self.ws.send_str(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive(timeout=60)).data)
            if message.get("id") == mine:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        got = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return got.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout}s")
            await asyncio.sleep(0.25)

    async def websocket_opened(self, url_part: str, timeout: float) -> dict[str, Any]:
        """The page's WebSocket whose URL holds ``url_part``, once its handshake answered 101:
        ``{"url", "status"}``."""
        deadline = time.monotonic() + timeout
        while True:
            urls = {
                e["params"]["requestId"]: e["params"]["url"]
                for e in self.events
                if e["method"] == "Network.webSocketCreated"
            }
            for e in self.events:
                if e["method"] == "Network.webSocketHandshakeResponseReceived":
                    url = urls.get(e["params"]["requestId"], "")
                    if url_part in url and e["params"]["response"]["status"] == 101:
                        return {"url": url, "status": 101}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no WebSocket to *{url_part}* opened in {timeout}s")
            await self.evaluate("1")  # lets the events of the meantime arrive
            await asyncio.sleep(0.25)

    async def screenshot(self) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])
