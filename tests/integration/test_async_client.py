"""AsyncHttpWorkspaceClient against a real `qai-jobs api` and worker: the same surface as the
blocking clients, live events through the SSE route, local validation, retries that honour
Retry-After under one idempotency key, and an API that comes up late."""
# ruff: noqa: F811 - the api fixture is imported from api_helpers

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.client import AsyncActionHandle, AsyncHttpWorkspaceClient, WorkspaceClient
from qai_jobs.errors import (
    ActionFailed,
    ApiUnavailable,
    Conflict,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from tests.integration.api_helpers import TOKEN, Api, api, api_env, free_port, start_api  # noqa: F401
from tests.integration.test_api_client import _Flaky
from tests.support.procs import Proc


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def test_same_surface_as_the_blocking_client(api: Api, project: str) -> None:
    async def scenario() -> list[str]:
        async with AsyncHttpWorkspaceClient(api.url, TOKEN, timeout=10) as c:
            ensured = await (await c.ensure(project, files={"app.js": "1"})).wait(30)
            assert ensured["created"] is True and ensured["preview_url"]
            written = await (await c.write(project, files={"b.bin": b"\x00\xffbee"})).wait(30)
            assert written["files_written"] == 1
            read = await (await c.read(project, paths=["b.bin"])).wait(30)
            assert read["files"][0]["encoding"] == "base64"
            ran = await (await c.command(project, "echo hello")).wait(30)
            assert ran["stdout"] == "hello\n" and ran["exit_code"] == 0
            preview = await (await c.preview(project)).wait(30)
            assert preview["preview_url"] == ensured["preview_url"]
            assert "text" in await (await c.logs(project)).wait(30)
            snap = (await (await c.snapshot(project)).wait(30))["snapshot_id"]
            await (await c.sleep(project)).wait(30)
            assert (await c.get_workspace(project))["status"] == "sleeping"
            await (await c.wake(project)).wait(30)
            await (await c.restore(project, snap)).wait(30)
            with pytest.raises(ActionFailed) as failed:
                await (await c.restore(project, "no-such-snapshot")).wait(30)
            assert failed.value.error["code"]
            destroy = await c.destroy(project)
            assert isinstance(destroy, AsyncActionHandle) and destroy.kind == "destroy"
            await destroy.wait(30)
            assert (await destroy.get())["status"] == "succeeded"
            actions = await c.list_actions(project)
            assert (await c.get_action(actions[0]["id"]))["kind"] == "ensure"
            assert len(await c.list_actions(project, limit=2, status="succeeded")) == 2
            return [a["kind"] for a in actions]

    assert run(scenario()) == [
        "ensure",
        "write",
        "read",
        "command",
        "preview",
        "logs",
        "snapshot",
        "sleep",
        "wake",
        "restore",
        "restore",
        "destroy",
    ]


def test_wait_on_event_follows_the_events_stream(
    api: Api, client: WorkspaceClient, project: str
) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with AsyncHttpWorkspaceClient(api.url, TOKEN, timeout=10) as c:
            # Each command waits behind a slow one, so its stream opens before it starts.
            await c.command(project, "sleep 0.5")
            plain: list[dict[str, Any]] = []
            handle = await c.command(project, "echo via-async-sse")
            result = await handle.wait(30, on_event=plain.append)
            assert result["stdout"] == "via-async-sse\n"
            # A coroutine callback is awaited before the next event is read.
            awaited: list[dict[str, Any]] = []

            async def slow_consumer(event: dict[str, Any]) -> None:
                await asyncio.sleep(0.01)
                awaited.append(event)

            await c.command(project, "sleep 0.5")
            await (await c.command(project, "echo again")).wait(30, on_event=slow_consumer)
            return plain, awaited

    plain, awaited = run(scenario())
    assert {"type": "output", "stream": "stdout", "offset": 0, "data": "via-async-sse\n"} in plain
    assert any(e["type"] == "progress" for e in plain)
    assert {"type": "output", "stream": "stdout", "offset": 0, "data": "again\n"} in awaited
    # What the direct client's wait shows, the async one shows too.
    direct: list[dict[str, Any]] = []
    client.command(project, "sleep 0.5")
    client.command(project, "echo via-async-sse").wait(timeout=30, on_event=direct.append)
    assert [e["type"] for e in direct if e["type"] == "output"] == [
        e["type"] for e in plain if e["type"] == "output"
    ]


def test_timeout_cancel_errors_and_idempotency(
    api: Api, client: WorkspaceClient, project: str
) -> None:
    async def scenario() -> None:
        async with AsyncHttpWorkspaceClient(api.url, TOKEN, timeout=10) as c:
            slow = await c.command(project, "sleep 2")
            queued = await c.command(project, "echo later")
            with pytest.raises(TimeoutError):
                await slow.wait(timeout=0.3)
            with pytest.raises(TimeoutError):
                await slow.wait(timeout=0.3, on_event=lambda e: None)
            assert (await c.cancel(queued.id))["status"] == "cancelled"
            with pytest.raises(ActionFailed) as cancelled:
                await queued.wait(5)
            assert cancelled.value.error["code"] == "cancelled"
            with pytest.raises(Conflict):
                await c.cancel(queued.id)
            with pytest.raises(NotFound):
                await c.get_action(uuid.uuid4())
            assert (await slow.wait(30))["exit_code"] == 0
            first = await c.ensure(project, idempotency_key="same-async")
            assert (await c.ensure(project, idempotency_key="same-async")).id == first.id
        # Validation happens before any request: even a client with a wrong token gets it.
        async with AsyncHttpWorkspaceClient(api.url, "wrong") as bad:
            with pytest.raises(ValidationFailed) as invalid:
                await bad.write(project, files={"../x": "y"})
            assert invalid.value.field == "files[0].path"
            assert isinstance(invalid.value, ValueError)
            with pytest.raises(Unauthorized):
                await bad.ensure(project)

    run(scenario())
    assert [a["kind"] for a in client.list_actions(project)] == ["command", "command", "ensure"]


def test_many_concurrent_waits_share_one_loop(api: Api, project: str) -> None:
    async def scenario() -> list[str]:
        async with AsyncHttpWorkspaceClient(api.url, TOKEN, timeout=10) as c:
            handles = await asyncio.gather(
                *(c.command(f"{project}-{i}", f"echo n{i}") for i in range(12))
            )
            results = await asyncio.gather(*(h.wait(60) for h in handles))
            return [r["stdout"] for r in results]

    assert run(scenario()) == [f"n{i}\n" for i in range(12)]


def test_retries_honour_retry_after_and_keep_the_idempotency_key() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Flaky.seen = []

    async def scenario() -> str:
        url = f"http://127.0.0.1:{server.server_port}"
        async with AsyncHttpWorkspaceClient(url, backoff_initial=0.05) as c:
            return (await c.ensure("p-retry")).id

    try:
        action_id = run(scenario())
    finally:
        server.shutdown()
        server.server_close()
    assert action_id == "a-1"
    assert len(_Flaky.seen) == 3
    keys = {key for _, key in _Flaky.seen}
    assert len(keys) == 1 and None not in keys
    assert _Flaky.seen[1][0] - _Flaky.seen[0][0] >= 0.9  # waited as told, not its own 50 ms


def test_an_api_that_comes_up_late_and_one_that_never_does(
    base_env: dict[str, str], log_dir: Path, shared_worker: Proc, project: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[Api] = []

    def start_later() -> None:
        time.sleep(1.0)
        started.append(start_api(api_env(base_env), log_dir, port))

    async def scenario() -> dict[str, Any]:
        async with AsyncHttpWorkspaceClient(url, TOKEN, max_retries=60, backoff_max=0.5) as c:
            handle = await c.command(project, "echo late")  # refused until the API listens
            result: dict[str, Any] = await handle.wait(30)
            return result

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        assert run(scenario())["stdout"] == "late\n"
    finally:
        starter.join()
        for a in started:
            a.proc.stop()

    async def never() -> None:
        async with AsyncHttpWorkspaceClient(url, TOKEN, max_retries=2, backoff_max=0.05) as c:
            await c.get_workspace(project)

    with pytest.raises(ApiUnavailable):
        run(never())


def test_sync_sends_only_what_changed(api: Api, project: str) -> None:
    async def scenario() -> None:
        async with AsyncHttpWorkspaceClient(api.url, TOKEN, timeout=10) as c:
            files = {f"src/f{i}.txt": f"{i}\n" for i in range(30)}
            assert (await c.sync(project, files, timeout=30))["files_written"] == 30
            files["src/f3.txt"] = "three\n"
            again = await c.sync(project, files, timeout=30)
            assert again["files_written"] == 1 and again["files_unchanged"] == 29
            del files["src/f4.txt"]
            await c.sync(project, files, timeout=30)
            manifest = await c.get_manifest(project)
            assert "src/f4.txt" not in manifest["files"] and len(manifest["files"]) == 29
            with pytest.raises(ValidationFailed):
                await c.get_manifest("../nope")

    run(scenario())
