"""A real Next.js dev app in a real local sandbox, loaded by a real headless Chromium through
the gateway: the page renders, the hot-reload WebSocket connects through the gateway, an edit
shows up without a reload, and the screenshot shows the page."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from qai_jobs.client import WorkspaceClient
from tests.conftest import settings_for
from tests.integration.gateway_support import (
    Gateway,
    destroy_quietly,
    free_gateway_port,
    gateway_env,
    running_gateway,
)
from tests.support.chromium import Browser
from tests.support.procs import Proc, start_worker

NEXT_APP = Path(__file__).parent / "assets" / "nextjs"
BACKGROUND = (0x1D, 0x35, 0x57)  # app/layout.js


@pytest.fixture(scope="module")
def port() -> int:
    return free_gateway_port()


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str], port: int) -> dict[str, str]:
    # The first compile of a Next.js page takes a while on two shared CPUs.
    return gateway_env(
        isolated_env,
        port,
        WORKSPACE_DEV_SERVER_TIMEOUT_SECONDS="180",
        NEXT_TELEMETRY_DISABLED="1",
    )


@pytest.fixture(scope="module")
def gateway(env: dict[str, str], log_dir: Path, port: int) -> Iterator[Gateway]:
    worker: Proc = start_worker(env, log_dir, concurrency=1, name="gateway-next-worker")
    try:
        yield from running_gateway(env, log_dir, port)
    finally:
        worker.stop()


def _app_files() -> dict[str, str]:
    return {str(p.relative_to(NEXT_APP)): p.read_text() for p in NEXT_APP.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_chromium_loads_a_nextjs_dev_app_through_the_gateway_with_hot_reload(
    gateway: Gateway, env: dict[str, str], log_dir: Path
) -> None:
    client = WorkspaceClient(settings_for(env))
    project = f"next-{uuid.uuid4().hex[:8]}"
    # A real `npm install` of next, react and react-dom in the sandbox, then `next dev`.
    url = client.ensure(project, files=_app_files()).wait(600)["preview_url"]
    assert url.startswith("http://") and f".preview.localhost:{gateway.port}/" in url
    shot_path = log_dir / f"{project}.png"

    async def browse() -> bytes:
        async with Browser(log_dir / f"chromium-{project}.log") as browser:
            await browser.call("Page.navigate", url=url)  # *.localhost is loopback to Chromium
            await browser.wait_for(
                "document.body && document.body.innerText.includes('Next.js through the gateway')",
                timeout=180,
            )
            hmr = await browser.websocket_opened("/_next/webpack-hmr", timeout=60)
            assert hmr["url"].startswith(url.replace("http://", "ws://"))  # via the gateway
            await asyncio.sleep(2)  # let the dev server finish what the first load compiled
            await browser.evaluate("window.__qaiSamePage = 42")
            # Hot reload: the edit reaches the page over the dev server's WebSocket.
            edited = (
                (NEXT_APP / "app" / "page.js").read_text().replace("first version", "hot reloaded")
            )
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: client.write(project, files={"app/page.js": edited}).wait(120)
            )
            await browser.wait_for(
                "document.getElementById('marker')?.innerText === 'hot reloaded'", timeout=120
            )
            assert await browser.evaluate("window.__qaiSamePage") == 42  # not a reload
            return await browser.screenshot()

    try:
        png = asyncio.run(browse())
    finally:
        destroy_quietly(client, project)
    shot_path.write_bytes(png)
    # A WebSocket's access line is written when it closes (the browser just did).
    gateway.proc.wait_for_log("GET /_next/webpack-hmr 101 ", timeout=15)
    assert gateway.metric("qai_gateway_requests_total", kind="websocket", status="101") >= 1
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width == 1280 and image.height > 400, image.size
    colors = image.getcolors(maxcolors=1 << 20) or []
    dominant = max(colors)[1]
    assert all(abs(a - b) <= 8 for a, b in zip(dominant, BACKGROUND, strict=True)), dominant
    light = sum(n for n, (r, g, b) in colors if min(r, g, b) > 200)  # the text
    assert light > 2000, f"no text in the screenshot ({shot_path})"
