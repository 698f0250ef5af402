"""The HTTP API (docs/http-api.md) against a real `qai-jobs api` process and a real worker."""
# ruff: noqa: F811 - the api/http fixtures are imported from api_helpers

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from qai_jobs.client import WorkspaceClient
from tests.integration.api_helpers import TOKEN, Api, api, free_port, http  # noqa: F401
from tests.support.procs import QAI


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def _enqueue(http: httpx.Client, project: str, kind: str, **payload: Any) -> dict[str, Any]:
    response = http.post(f"/v1/projects/{project}/actions", json={"kind": kind, **payload})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/actions/" + str(uuid.UUID(int=7)), "/docs", "/openapi.json", "/metrics"]
)
def test_every_route_but_healthz_needs_the_token(api: Api, path: str) -> None:
    with api.http(token=None) as anonymous:
        error = _error(anonymous.get(path), 401)
        assert error["code"] == "unauthorized"
    with api.http(token="wrong-" + TOKEN) as wrong:
        _error(wrong.get(path), 401)
    basic = httpx.get(api.url + path, headers={"Authorization": f"Basic {TOKEN}"})
    _error(basic, 401)
    with api.http() as right:
        assert right.get(path).status_code in (200, 404)


def test_healthz_is_open_and_reports_both_services(api: Api) -> None:
    response = httpx.get(api.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


def test_refuses_a_public_bind_without_a_token(base_env: dict[str, str]) -> None:
    env = {k: v for k, v in base_env.items() if k != "WORKSPACE_TOKEN"}
    done = subprocess.run(
        [*QAI, "api", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "WORKSPACE_TOKEN" in done.stderr and "0.0.0.0" in done.stderr


# --- enqueue, wait, inspect -------------------------------------------------------------------


def test_enqueue_answers_202_and_wait_returns_the_finished_action(
    http: httpx.Client, project: str
) -> None:
    accepted = _enqueue(http, project, "ensure", files={"a.txt": "hello"})
    assert accepted["status"] == "queued"
    uuid.UUID(accepted["action_id"])
    done = http.get(f"/v1/actions/{accepted['action_id']}", params={"wait": 20})
    assert done.status_code == 200
    assert done.json()["status"] == "succeeded"
    assert done.json()["result"]["files_written"] == 1

    finished = http.post(
        f"/v1/projects/{project}/actions",
        params={"wait": 20},
        json={"kind": "read", "paths": ["a.txt"]},
    )
    assert finished.status_code == 200, finished.text
    action = finished.json()
    assert action["status"] == "succeeded" and action["kind"] == "read"
    assert action["result"]["files"][0]["content"] == "hello"


def test_wait_gives_202_while_the_action_still_runs(http: httpx.Client, project: str) -> None:
    slow = http.post(
        f"/v1/projects/{project}/actions",
        params={"wait": 0.5},
        json={"kind": "command", "cmd": "sleep 3"},
    )
    assert slow.status_code == 202, slow.text
    assert slow.json()["status"] in ("queued", "running")
    still = http.get(f"/v1/actions/{slow.json()['action_id']}", params={"wait": 0.2})
    assert still.status_code == 200 and still.json()["status"] in ("queued", "running")
    done = http.get(f"/v1/actions/{slow.json()['action_id']}", params={"wait": 20}).json()
    assert done["status"] == "succeeded" and done["result"]["exit_code"] == 0


def test_cancel_a_queued_action_and_409_for_others(http: httpx.Client, project: str) -> None:
    running = _enqueue(http, project, "command", cmd="sleep 2")
    queued = _enqueue(http, project, "command", cmd="echo never")
    cancelled = http.post(f"/v1/actions/{queued['action_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert _error(http.post(f"/v1/actions/{queued['action_id']}/cancel"), 409)["code"] == "conflict"
    assert _error(http.post(f"/v1/actions/{running['action_id']}/cancel"), 409)
    _error(http.post(f"/v1/actions/{uuid.uuid4()}/cancel"), 404)
    assert (
        http.get(f"/v1/actions/{running['action_id']}", params={"wait": 20}).json()["status"]
        == "succeeded"
    )


def test_unknown_things_are_404(http: httpx.Client, project: str) -> None:
    assert _error(http.get(f"/v1/actions/{uuid.uuid4()}"), 404)["code"] == "not_found"
    _error(http.get("/v1/actions/not-a-uuid"), 404)
    _error(http.get(f"/v1/projects/{project}"), 404)
    _error(http.get("/v1/no/such/route"), 404)


def test_project_routes(http: httpx.Client, project: str) -> None:
    first = _enqueue(http, project, "ensure")
    second = _enqueue(http, project, "command", cmd="echo hi")
    http.get(f"/v1/actions/{second['action_id']}", params={"wait": 20})
    workspace = http.get(f"/v1/projects/{project}").json()
    assert workspace["project_id"] == project and workspace["status"] == "ready"
    assert workspace["sandbox_id"]
    listed = http.get(f"/v1/projects/{project}/actions").json()
    assert listed["project_id"] == project
    assert [a["id"] for a in listed["actions"]] == [first["action_id"], second["action_id"]]
    assert listed["actions"][1]["result"]["stdout"] == "hi\n"
    only = http.get(f"/v1/projects/{project}/actions", params={"status": "queued"}).json()
    assert only["actions"] == []


# --- errors: 422 and 413 enqueue nothing --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "explode"}, "kind"),
        ({"kind": {}, "snapshot_id": "0"}, "kind"),
        ({"kind": "restore", "snapshot_id": "a\u0000b"}, "snapshot_id"),
        ({"kind": "write", "files": {"a.txt": "nul\u0000"}}, "files.a.txt"),
        ({"files": {"a": "b"}}, "kind"),
        ({"kind": "write", "files": {"../escape": "x"}}, "files[0].path"),
        ({"kind": "write", "files": {"/etc/passwd": "x"}}, "files[0].path"),
        ({"kind": "write"}, "files"),
        ({"kind": "read", "paths": ["ok"], "surprise": 1}, "surprise"),
        ({"kind": "command", "cmd": "true", "timeout_s": 99999}, "timeout_s"),
        ({"kind": "command"}, "cmd"),
        ({"kind": "ensure", "env": {"BAD NAME": "s3cr3t-value"}}, "env"),
        ({"kind": "restore"}, "snapshot_id"),
    ],
)
def test_invalid_requests_are_422_naming_the_field(
    http: httpx.Client, client: WorkspaceClient, project: str, body: dict[str, Any], field: str
) -> None:
    error = _error(http.post(f"/v1/projects/{project}/actions", json=body), 422)
    assert error["details"]["field"] == field, error
    assert "s3cr3t-value" not in json.dumps(error)
    assert client.list_actions(project) == []


def test_other_422s(http: httpx.Client, client: WorkspaceClient, project: str) -> None:
    bad_project = _error(http.post("/v1/projects/-nope/actions", json={"kind": "sleep"}), 422)
    assert bad_project["details"]["field"] == "project_id"
    not_json = http.post(
        f"/v1/projects/{project}/actions",
        content=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert _error(not_json, 422)["details"]["field"] == "body"
    assert (
        _error(http.post(f"/v1/projects/{project}/actions", json=["kind"]), 422)["details"]["field"]
        == "body"
    )
    negative = http.post(
        f"/v1/projects/{project}/actions", params={"wait": -1}, json={"kind": "sleep"}
    )
    assert _error(negative, 422)["details"]["field"] == "wait"
    long_key = http.post(
        f"/v1/projects/{project}/actions",
        json={"kind": "sleep"},
        headers={"Idempotency-Key": "k" * 300},
    )
    assert _error(long_key, 422)["details"]["field"] == "Idempotency-Key"
    assert client.list_actions(project) == []


def test_too_large_is_413_before_and_after_parsing(
    http: httpx.Client, client: WorkspaceClient, project: str
) -> None:
    url = f"/v1/projects/{project}/actions"
    huge = json.dumps({"kind": "write", "files": {"big.txt": "x" * (3 * 1024 * 1024)}}).encode()
    declared = http.post(url, content=huge, headers={"Content-Type": "application/json"})
    assert _error(declared, 413)["code"] == "payload_too_large"

    def chunks() -> Any:
        yield b'{"kind": "write", "files": {"big.txt": "'
        for _ in range(48):
            yield b"y" * 65536
        yield b'"}}'

    streamed = http.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert _error(streamed, 413)["code"] == "payload_too_large"
    # Under the body cap but over the action's byte limit: refused by validation, naming files.
    files = {f"f{i}.txt": "z" * 40000 for i in range(2)}
    over = _error(http.post(url, json={"kind": "write", "files": files}), 413)
    assert over["details"]["field"] == "files"
    assert client.list_actions(project) == []


# --- idempotency --------------------------------------------------------------------------------


def test_idempotency_key_returns_the_same_action_per_project(
    http: httpx.Client, client: WorkspaceClient, project: str
) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    url = f"/v1/projects/{project}/actions"
    first = http.post(url, json={"kind": "ensure"}, headers=key)
    again = http.post(url, json={"kind": "ensure"}, headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json()["action_id"] == again.json()["action_id"]
    other = http.post(f"/v1/projects/{project}-other/actions", json={"kind": "ensure"}, headers=key)
    assert other.json()["action_id"] != first.json()["action_id"]
    assert len(client.list_actions(project)) == 1
    done = http.get(f"/v1/actions/{first.json()['action_id']}", params={"wait": 20}).json()
    late = http.post(url, json={"kind": "ensure"}, headers=key)
    assert late.json() == {"action_id": done["id"], "status": "succeeded"}


# --- metrics, docs ------------------------------------------------------------------------------


def test_metrics_docs_and_openapi(http: httpx.Client) -> None:
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = http.get("/openapi.json").json()
    for path in (
        "/v1/projects/{project_id}/actions",
        "/v1/actions/{action_id}",
        "/v1/actions/{action_id}/cancel",
        "/v1/projects/{project_id}",
        "/v1/projects/{project_id}/actions",
        "/api/workspaces",
        "/api/workspaces/events",
        "/healthz",
        "/metrics",
    ):
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_several_server_processes_share_the_port(
    base_env: dict[str, str], log_dir: Path, shared_worker: Any, project: str
) -> None:
    from tests.integration.api_helpers import api_env, start_api

    served = start_api(api_env(base_env), log_dir, None, "--workers", "2")
    try:
        with httpx.Client(
            base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as c:
            ids = []
            for i in range(6):
                got = c.post(
                    f"/v1/projects/{project}/actions",
                    json={"kind": "write", "files": {f"f{i}.txt": str(i)}},
                )
                assert got.status_code == 202, got.text
                ids.append(got.json()["action_id"])
            done = c.get(f"/v1/actions/{ids[-1]}", params={"wait": 30}).json()
            assert done["status"] == "succeeded"
        # Two server processes under the supervisor (beside multiprocessing's resource tracker).
        children = Path(f"/proc/{served.proc.pid}/task/{served.proc.pid}/children").read_text()
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children.split()]
        assert sum(b"resource_tracker" not in c for c in cmdlines) == 2
    finally:
        served.proc.stop()


def test_the_shared_listening_socket_gets_tcp_nodelay_on_accept() -> None:
    """A uvicorn bug: with --workers, uvicorn's socket said proto 0 and asyncio then left
    Nagle on, so every keep-alive request waited ~40 ms for a delayed ACK."""
    import asyncio
    import socket

    from qai_jobs.api.serve import _TcpConfig

    sock = _TcpConfig("qai_jobs.api:app_from_env", host="127.0.0.1", port=0).bind_socket()
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(main())
    assert seen == [1]
