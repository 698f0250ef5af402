"""GET /v1/actions/{id}/events against a real `qai-jobs api` and worker: live events, one `done`
with the action, reconnects with Last-Event-ID, heartbeats, auth and 404; and
HttpWorkspaceClient.wait(on_event=...) fed by the stream."""
# ruff: noqa: F811 - the api fixture is imported from api_helpers

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import ServerSentEvent, connect_sse

from qai_jobs.client import HttpActionHandle, HttpWorkspaceClient, WorkspaceClient
from qai_jobs.errors import ActionFailed, NotFound, Unauthorized
from qai_jobs.notify import channel
from tests.conftest import isolated, settings_for
from tests.integration.api_helpers import TOKEN, Api, api, api_env, http, start_api  # noqa: F401
from tests.integration.ops_support import isolated_env
from tests.support.procs import Proc, start_worker


def _events(
    http: httpx.Client, action_id: str, headers: dict[str, str] | None = None, **params: Any
) -> Iterator[ServerSentEvent]:
    with connect_sse(
        http, "GET", f"/v1/actions/{action_id}/events", headers=headers or {}, params=params
    ) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        yield from source.iter_sse()


def _enqueue(http: httpx.Client, project: str, **body: Any) -> str:
    response = http.post(f"/v1/projects/{project}/actions", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["action_id"])


def test_live_events_then_one_done_with_the_action(
    api: Api, http: httpx.Client, project: str
) -> None:
    action_id = _enqueue(http, project, kind="command", cmd="echo hello-events")
    seen = list(_events(http, action_id))
    kinds = [e.event for e in seen]
    assert kinds[-1] == "done" and kinds.count("done") == 1, kinds
    assert "progress" in kinds and "output" in kinds, kinds
    output = [json.loads(e.data) for e in seen if e.event == "output"]
    assert output == [{"stream": "stdout", "offset": 0, "data": "hello-events\n"}]
    progress = json.loads(next(e.data for e in seen if e.event == "progress"))
    assert set(progress) == {"stage", "done", "total"}
    done = json.loads(seen[-1].data)
    assert done == http.get(f"/v1/actions/{action_id}").json()
    assert done["status"] == "succeeded" and done["result"]["stdout"] == "hello-events\n"
    ids = [int(e.id) for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert seen[0].retry is not None  # tells EventSource how soon to reconnect


def test_a_finished_action_answers_done_at_once(api: Api, http: httpx.Client, project: str) -> None:
    action_id = _enqueue(http, project, kind="command", cmd="true")
    assert http.get(f"/v1/actions/{action_id}", params={"wait": 30}).json()["status"] == (
        "succeeded"
    )
    started = time.monotonic()
    seen = list(_events(http, action_id))
    assert time.monotonic() - started < 1.5
    assert [e.event for e in seen] == ["done"]
    assert json.loads(seen[0].data)["id"] == action_id
    # Also for a failed and a cancelled one: the done carries the error.
    blocker = _enqueue(http, project, kind="command", cmd="sleep 1")
    queued = _enqueue(http, project, kind="command", cmd="echo never")
    assert http.post(f"/v1/actions/{queued}/cancel").status_code == 200
    (cancelled,) = list(_events(http, queued))
    assert json.loads(cancelled.data)["status"] == "cancelled"
    list(_events(http, blocker))


def test_reconnect_with_last_event_id_still_gets_the_done(
    api: Api, http: httpx.Client, project: str
) -> None:
    action_id = _enqueue(http, project, kind="command", cmd="sleep 1.5")
    first: ServerSentEvent | None = None
    for event in _events(http, action_id):
        first = event
        break  # drop the connection after the first event
    assert first is not None and first.event == "progress"
    resumed = list(_events(http, action_id, headers={"Last-Event-ID": first.id}))
    assert resumed[-1].event == "done"
    assert json.loads(resumed[-1].data)["status"] == "succeeded"
    assert all(int(e.id) > int(first.id) for e in resumed)
    # Reconnecting after the end (an EventSource does) answers the done again, at once.
    again = list(_events(http, action_id, headers={"Last-Event-ID": resumed[-1].id}))
    assert [e.event for e in again] == ["done"]


def test_timeout_ends_the_stream_without_a_done(api: Api, http: httpx.Client, project: str) -> None:
    action_id = _enqueue(http, project, kind="command", cmd="sleep 2")
    started = time.monotonic()
    seen = list(_events(http, action_id, timeout=0.5))
    assert time.monotonic() - started < 1.8
    assert "done" not in [e.event for e in seen]
    assert http.get(f"/v1/actions/{action_id}", params={"wait": 30}).json()["status"] == (
        "succeeded"
    )


def test_auth_404_and_bad_parameters(api: Api, http: httpx.Client, project: str) -> None:
    action_id = _enqueue(http, project, kind="command", cmd="true")
    with api.http(token=None) as anonymous:
        assert anonymous.get(f"/v1/actions/{action_id}/events").status_code == 401
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        response = http.get(f"/v1/actions/{unknown}/events")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    response = http.get(f"/v1/actions/{action_id}/events", params={"timeout": -1})
    assert response.status_code == 422


def test_heartbeats_keep_an_idle_stream_alive(
    base_env: dict[str, str], log_dir: Path, shared_worker: Proc, project: str
) -> None:
    fast = start_api(api_env(base_env, WORKSPACE_EVENTS_HEARTBEAT_SECONDS="0.2"), log_dir)
    try:
        with fast.http() as http:
            action_id = _enqueue(http, project, kind="command", cmd="sleep 1.2")
            comments = 0
            with http.stream("GET", f"/v1/actions/{action_id}/events") as response:
                for line in response.iter_lines():
                    comments += line.startswith(":")
                    if line.startswith("event: done"):
                        break
            assert comments >= 3, comments
    finally:
        fast.proc.stop()


def test_http_client_wait_on_event(api: Api, project: str) -> None:
    with HttpWorkspaceClient(api.url, TOKEN, timeout=10) as hc:
        # What the events are, compared with the direct client's, is the next test's (it can
        # hold the worker until the stream is subscribed); here the waits' other outcomes.
        events: list[dict[str, Any]] = []
        result = hc.command(project, "echo via-sse").wait(timeout=30, on_event=events.append)
        assert result["stdout"] == "via-sse\n"
        with pytest.raises(ActionFailed) as failed:
            hc.restore(project, "no-such-snapshot").wait(timeout=30, on_event=events.append)
        assert failed.value.error["code"]
        slow = hc.command(project, "sleep 2")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            slow.wait(timeout=0.4, on_event=events.append)
        assert time.monotonic() - started < 1.5
        assert slow.wait(timeout=30, on_event=events.append)["exit_code"] == 0
        with pytest.raises(NotFound):
            hc.get_action(str(uuid.uuid4()))
        known = slow.id
    with HttpWorkspaceClient(api.url, "wrong") as bad, pytest.raises(Unauthorized):
        HttpActionHandle(bad, known, project, "command").wait(5, on_event=print)


@dataclass
class HeldApi:
    api: Api
    worker: Proc
    client: WorkspaceClient  # the direct client of the same deployment

    @contextlib.contextmanager
    def worker_held(self) -> Iterator[None]:
        """The worker and its pool stopped (SIGSTOP): nothing enqueued meanwhile can start."""
        os.killpg(self.worker.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.worker.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def held_api(
    base_env: dict[str, str], log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HeldApi]:
    """An API and a worker on a database and Redis DB of their own, so that holding the worker
    holds no other test's action."""
    with isolated(tmp_path_factory, base_env) as env:
        worker = start_worker(env, log_dir, concurrency=1, name="events-held")
        started = start_api(api_env(env), log_dir)
        try:
            yield HeldApi(started, worker, WorkspaceClient(settings_for(env)))
        finally:
            started.proc.stop()
            worker.stop()


class _LateStream(httpx.HTTPTransport):
    """Connects to an events stream late, as a loaded API or client can make it: later than a
    short action takes to run, and later than the one-second command the compared actions
    once waited behind. Events published before a watcher subscribes reach no one (they are
    live notifications, for the direct client as for the stream), so a comparison that trusts
    time to have both watchers subscribed first fails here every time, not one run in two."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            time.sleep(1.5)
        return super().handle_request(request)


def _until_subscribed(redis_url: str, action_id: str, watchers: int, timeout: float = 30) -> None:
    admin = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while (count := admin.pubsub_numsub(channel(action_id))[0][1]) < watchers:
        assert time.monotonic() < deadline, f"{count} of {watchers} watchers subscribed"
        time.sleep(0.01)


def test_http_client_wait_on_event_sees_what_the_direct_client_sees(
    held_api: HeldApi, project: str
) -> None:
    """Both watchers are subscribed before the action can start (the worker is held until
    Redis counts them), so each sees every event, however late the stream connects."""
    direct: list[dict[str, Any]] = []
    over_http: list[dict[str, Any]] = []
    with (
        HttpWorkspaceClient(held_api.api.url, TOKEN, timeout=10, transport=_LateStream()) as hc,
        ThreadPoolExecutor(2) as pool,
    ):
        with held_api.worker_held():
            action = hc.command(project, "echo via-sse")
            direct_wait = pool.submit(held_api.client.wait_for, action.id, 30, direct.append)
            http_wait = pool.submit(action.wait, 30, over_http.append)
            _until_subscribed(held_api.api.env["REDIS_URL"], action.id, watchers=2)
        assert direct_wait.result(timeout=60)["result"]["stdout"] == "via-sse\n"
        assert http_wait.result(timeout=60)["stdout"] == "via-sse\n"
    assert {"type": "output", "stream": "stdout", "offset": 0, "data": "via-sse\n"} in over_http
    assert over_http[0]["type"] == "progress"
    # Subscribed while the action was queued, the stream has no stage of its own to repeat.
    assert over_http == direct


@pytest.fixture(scope="module")
def local_api(
    base_env: dict[str, str], log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """An API and a worker on the local provider (real output, as much as a command prints),
    on a database and queue of their own so the session's fake worker takes none of it."""
    root = tmp_path_factory.mktemp("events-local-workspaces")
    for env in isolated_env(base_env):
        local = {
            **env,
            "WORKSPACE_RUNTIME": "local",
            "WORKSPACE_ROOT": str(root),
            "WORKSPACE_MAX_OUTPUT_BYTES": str(16 * 1024 * 1024),
        }
        worker = start_worker(local, log_dir, concurrency=1, name="events-local")
        started = start_api(api_env(local), log_dir)
        try:
            yield started
        finally:
            started.proc.stop()
            worker.stop()


def _raw_events(api: Api, action_id: str, pause: float) -> bytes:
    """Ask for the stream on a socket with a tiny receive window, read nothing for ``pause``
    seconds (a client that cannot keep up), then read it all."""
    host, port = api.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect((host, int(port)))
    request = (
        f"GET /v1/actions/{action_id}/events HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(request.encode())
    time.sleep(pause)
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return bytes(received)


def test_a_slow_client_costs_it_output_not_api_memory(local_api: Api, project: str) -> None:
    # More than the kernel's socket buffers hold on loopback (a few MiB), so what the client
    # misses can only have been dropped by the API.
    size = 9_000_000
    with local_api.http() as http:
        ensured = http.post(
            f"/v1/projects/{project}/actions",
            params={"wait": 60},
            json={"kind": "ensure", "start_dev_server": False},
        )
        assert ensured.status_code == 200, ensured.text
        # Printed in several chunks, while the client reads nothing.
        cmd = f"for i in 1 2 3; do head -c {size // 3} /dev/zero | tr '\\0' a; sleep 0.2; done"
        action_id = _enqueue(http, project, kind="command", cmd=cmd)
    raw = _raw_events(local_api, action_id, pause=5.0)
    _, _, body = raw.partition(b"\r\n\r\n")
    # The body is chunked; the events' own framing survives it, so scan for data lines.
    text = body.decode(errors="replace")
    outputs = [
        json.loads(line[6:]) for line in text.splitlines() if line.startswith('data: {"data"')
    ]
    done = [line for line in text.splitlines() if line.startswith('data: {"id"')]
    assert done, text[-2000:]
    final = json.loads(done[-1][6:])
    assert final["status"] == "succeeded" and len(final["result"]["stdout"]) == size
    streamed = sum(len(o["data"]) for o in outputs)
    assert streamed < size, "a client that read nothing was sent everything: nothing bounded"
    assert any(
        b["offset"] > a["offset"] + len(a["data"]) for a, b in itertools.pairwise(outputs)
    ) or (outputs and outputs[0]["offset"] > 0), "the offsets show where output was left out"
