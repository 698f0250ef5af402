"""A wake that takes longer than the gateway waits: 503 with Retry-After (a page that reloads
itself for a browser), one wake for the whole burst, and the page once the wake has run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qai_jobs.client import WorkspaceClient
from tests.conftest import settings_for
from tests.integration.gateway_support import (
    HELLO,
    WAIT,
    Gateway,
    destroy_quietly,
    files_of,
    free_gateway_port,
    gateway_env,
    kinds,
    running_gateway,
)
from tests.support.procs import start_worker


@pytest.fixture(scope="module")
def port() -> int:
    return free_gateway_port()


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str], port: int) -> dict[str, str]:
    return gateway_env(isolated_env, port, WORKSPACE_GATEWAY_WAKE_SECONDS="1.5")


@pytest.fixture(scope="module")
def gateway(env: dict[str, str], log_dir: Path, port: int) -> Iterator[Gateway]:
    yield from running_gateway(env, log_dir, port)


def test_a_slow_wake_answers_503_then_the_page(
    gateway: Gateway, env: dict[str, str], log_dir: Path
) -> None:
    client = WorkspaceClient(settings_for(env))
    project = f"slow-{uuid.uuid4().hex[:8]}"
    worker = start_worker(env, log_dir, concurrency=1, name="gateway-wake-worker")
    try:
        url = client.ensure(project, files=files_of(HELLO)).wait(WAIT)["preview_url"]
        client.sleep(project).wait(WAIT)
    finally:
        worker.stop()
    before = kinds(client, project)
    # No worker now: the wake waits in the queue longer than the gateway waits for it.
    plain = gateway.get(url)
    assert plain.status_code == 503 and int(plain.headers["retry-after"]) > 0
    browser = gateway.get(url, headers={"Accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 503 and browser.headers["retry-after"]
    assert '<meta http-equiv="refresh"' in browser.text
    assert kinds(client, project)[len(before) :] == ["wake"]  # one for the whole burst
    worker = start_worker(env, log_dir, concurrency=1, name="gateway-wake-worker-2")
    try:
        # As a browser would: follow Retry-After until the woken page answers (a loaded host
        # may take longer to wake than one gateway wait), never more than one wake.
        deadline = time.monotonic() + WAIT
        page = gateway.get(url)
        while page.status_code == 503 and time.monotonic() < deadline:
            time.sleep(min(float(page.headers.get("retry-after", "1")), 2.0))
            page = gateway.get(url)
        assert page.status_code == 200 and "Hello from qai-jobs" in page.text
        assert kinds(client, project)[len(before) :] == ["wake"]
    finally:
        destroy_quietly(client, project)
        worker.stop()
