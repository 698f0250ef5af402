"""The preview gateway end to end: a real worker (local provider, bubblewrap where installed),
a real `qai-jobs gateway`, real dev servers and real HTTP and WebSocket traffic."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from qai_jobs.client import WorkspaceClient
from tests.conftest import settings_for
from tests.integration.gateway_support import (
    ECHO,
    HELLO,
    WAIT,
    Gateway,
    destroy_quietly,
    dev_pid,
    files_of,
    free_gateway_port,
    gateway_env,
    kinds,
    running_gateway,
)
from tests.support.procs import Proc, start_worker

PREVIEW = r"^http://[0-9a-f]{32}\.preview\.localhost:\d+/$"


@pytest.fixture(scope="module")
def port() -> int:
    return free_gateway_port()


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str], port: int) -> dict[str, str]:
    # A short activity interval, so the rate-limit test sees several flushes.
    return gateway_env(isolated_env, port, WORKSPACE_GATEWAY_ACTIVITY_SECONDS="1")


@pytest.fixture(scope="module")
def worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir, concurrency=2, name="gateway-worker")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(env: dict[str, str], log_dir: Path, port: int, worker: Proc) -> Iterator[Gateway]:
    yield from running_gateway(env, log_dir, port)


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> WorkspaceClient:
    return WorkspaceClient(settings_for(env))


@pytest.fixture
def project(client: WorkspaceClient) -> Iterator[str]:
    name = f"Gw_{uuid.uuid4().hex[:8]}.Proj"  # capitals, '_' and '.': not DNS-safe as it is
    yield name
    destroy_quietly(client, name)


def test_the_gateway_url_serves_the_app_and_survives_sleep(
    gateway: Gateway, client: WorkspaceClient, project: str
) -> None:
    result = client.ensure(project, files=files_of(HELLO)).wait(WAIT)
    url = result["preview_url"]
    assert url is not None
    assert re.match(PREVIEW, url), url
    workspace = client.get_workspace(project)
    assert workspace["preview_url"] == url
    assert workspace["upstream_url"].startswith("http://127.0.0.1:")
    assert project.lower() not in url and workspace["preview_id"] in url

    page = gateway.get(url)
    assert page.status_code == 200 and "Hello from qai-jobs" in page.text

    client.sleep(project).wait(WAIT)
    assert client.get_workspace(project)["status"] == "sleeping"
    before = kinds(client, project)
    # A burst of plain GETs: each gets the page, and together they cause one wake.
    with ThreadPoolExecutor(6) as pool:
        pages = list(pool.map(lambda _: gateway.get(url), range(6)))
    assert [p.status_code for p in pages] == [200] * 6, [p.text for p in pages]
    assert all("Hello from qai-jobs" in p.text for p in pages)
    assert kinds(client, project)[len(before) :] == ["wake"]
    woken = client.get_workspace(project)
    assert woken["status"] == "ready" and woken["preview_url"] == url
    assert gateway.metric("qai_gateway_wakes_total", kind="wake", outcome="succeeded") >= 1


def test_destroyed_answers_410_unknown_404_and_neither_enqueues(
    gateway: Gateway, client: WorkspaceClient, project: str
) -> None:
    url = client.ensure(project, files=files_of(HELLO)).wait(WAIT)["preview_url"]
    assert gateway.get(url).status_code == 200
    client.destroy(project).wait(WAIT)
    before = client.list_actions(project)
    for _ in range(3):
        assert gateway.get(url).status_code == 410
    unknown = "http://" + "0" * 32 + f".preview.localhost:{gateway.port}/"
    assert gateway.get(unknown).status_code == 404
    time.sleep(1)  # anything enqueued would be recorded by now
    assert client.list_actions(project) == before
    assert client.get_workspace(project)["status"] == "destroyed"
    # A workspace that comes back is a new one: the old URL does not reach it.
    again = client.ensure(project, files=files_of(HELLO)).wait(WAIT)["preview_url"]
    assert again != url
    assert gateway.get(url).status_code == 404
    assert gateway.get(again).status_code == 200


def test_a_dead_dev_server_is_restarted_through_the_preview_action(
    gateway: Gateway, client: WorkspaceClient, project: str
) -> None:
    url = client.ensure(project, files=files_of(HELLO)).wait(WAIT)["preview_url"]
    assert gateway.get(url).status_code == 200
    errors = gateway.metric("qai_gateway_upstream_errors_total", reason="connect")
    os.killpg(os.getpgid(dev_pid(client, project)), signal.SIGKILL)  # the whole dev server
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until its port is really closed
        try:
            httpx.get(client.get_workspace(project)["upstream_url"], timeout=1)
        except httpx.HTTPError:
            break
        time.sleep(0.05)
    page = gateway.get(url)
    assert page.status_code == 200 and "Hello from qai-jobs" in page.text
    assert kinds(client, project)[-1] == "preview"
    assert gateway.metric("qai_gateway_upstream_errors_total", reason="connect") > errors


def test_headers_bodies_and_websockets_pass_through(
    gateway: Gateway, client: WorkspaceClient, project: str
) -> None:
    url = client.ensure(project, files=files_of(ECHO), dev_command="node server.js --port {port}")
    url = url.wait(WAIT)["preview_url"]
    seen = gateway.get(url, "/headers", headers={"X-Forwarded-For": "203.0.113.7"}).json()
    host = url.split("/")[2]
    assert seen["headers"]["x-forwarded-host"] == host
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"

    target, headers = gateway.target(url, "/echo")
    body = os.urandom(3 * 1024 * 1024)  # several MiB each way, streamed

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    echoed = httpx.post(target, headers=headers, content=chunks(), timeout=60)
    assert echoed.status_code == 200 and echoed.content == body
    big = gateway.get(url, "/big?bytes=5000000")
    assert big.status_code == 200 and len(big.content) == 5_000_000

    async def talk() -> list[Any]:
        ws_url, ws_headers = gateway.target(url, "/socket")
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url, headers=ws_headers, protocols=["echo.v1"]) as ws,
        ):
            got: list[Any] = [ws.protocol]
            await ws.send_str("hello through the gateway")
            got.append((await ws.receive(timeout=10)).data)
            await ws.send_bytes(b"\x00\x01" * 40_000)
            got.append((await ws.receive(timeout=10)).data)
            got.append(datetime.now(UTC))
            for _ in range(12):  # messages alone, no HTTP request, for a few seconds
                await asyncio.sleep(0.25)
                await ws.send_str("still here")
                await ws.receive(timeout=10)
            return got

    protocol, text, data, opened = asyncio.run(talk())
    time.sleep(1.5)  # a flush interval
    touched = datetime.fromisoformat(client.get_workspace(project)["last_activity_at"])
    assert touched > opened + timedelta(seconds=1.5)  # the socket's messages kept it active
    assert protocol == "echo.v1"
    assert text == "hello through the gateway"
    assert data == b"\x00\x01" * 40_000
    assert gateway.metric("qai_gateway_requests_total", kind="websocket", status="101") >= 1


def test_traffic_counts_as_activity_with_few_writes(
    gateway: Gateway, client: WorkspaceClient, project: str
) -> None:
    url = client.ensure(project, files=files_of(HELLO)).wait(WAIT)["preview_url"]
    time.sleep(1.5)  # the ensure's own activity is now in the past
    start = client.get_workspace(project)["last_activity_at"]
    flushes = gateway.metric("qai_gateway_activity_writes_total")
    began = time.monotonic()
    with httpx.Client(timeout=30) as http:
        target, headers = gateway.target(url)
        for _ in range(300):
            assert http.get(target, headers=headers).status_code == 200
    elapsed = time.monotonic() - began
    time.sleep(1.5)  # one more flush interval
    assert client.get_workspace(project)["last_activity_at"] > start
    writes = gateway.metric("qai_gateway_activity_writes_total") - flushes
    # One UPDATE per interval (1 s here) for every active workspace, not one per request.
    assert 1 <= writes <= elapsed / 1.0 + 3, (writes, elapsed)
    assert "GET / 200" in gateway.proc.log()
