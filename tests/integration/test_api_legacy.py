"""QAI's original routes on a real `qai-jobs api`: /api/workspaces and the provider hook."""
# ruff: noqa: F811 - the api/http fixtures are imported from api_helpers

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from qai_jobs.client import WorkspaceClient
from qai_jobs.testing import RedisStore, inject_fault
from tests.integration.api_helpers import WEBHOOK_SECRET, Api, api, http  # noqa: F401


def _call(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/workspaces", json=body, params={"wait": 30})


def test_original_route_end_to_end(http: httpx.Client, project: str) -> None:
    ensured = _call(
        http,
        action="ensure",
        projectId=project,
        files={"index.js": "console.log(1)"},
        devCommand="node index.js --port {port}",
    )
    assert ensured.status_code == 200, ensured.text
    body = ensured.json()
    assert uuid.UUID(body["workspaceId"])
    assert body["previewUrl"].startswith("http")
    assert body["status"] == "succeeded" and body["created"] is True
    assert body["files_written"] == 1 and body["filesWritten"] == 1

    wrote = _call(
        http,
        action="write",
        projectId=project,
        workspaceId=body["workspaceId"],
        files=[{"path": "b.txt", "content": "bee"}],
    ).json()
    assert wrote["workspaceId"] == body["workspaceId"] and wrote["files_written"] == 1
    read = _call(http, action="read", projectId=project, paths=["b.txt", "nope.txt"]).json()
    assert read["files"][0]["content"] == "bee" and read["missing"] == ["nope.txt"]
    ran = _call(http, action="command", projectId=project, command="cat b.txt").json()
    assert ran["stdout"] == "bee" and ran["exit_code"] == 0 and ran["exitCode"] == 0
    failing = _call(http, action="command", projectId=project, command="exit 3").json()
    assert failing["exit_code"] == 3 and failing["status"] == "succeeded"
    preview = _call(http, action="preview", projectId=project).json()
    assert preview["previewUrl"] == body["previewUrl"] and preview["healthy"] in (True, False)


def test_original_route_errors(http: httpx.Client, client: WorkspaceClient, project: str) -> None:
    missing = _call(http, action="ensure")
    assert missing.status_code == 422
    assert missing.json()["error"]["details"]["field"] == "projectId"
    bad_action = _call(http, action="explode", projectId=project)
    assert bad_action.json()["error"]["details"]["field"] == "action"
    bad_dev = _call(http, action="ensure", projectId=project, devCommand="x" * 9000)
    assert bad_dev.status_code == 422
    assert bad_dev.json()["error"]["details"]["field"] == "devCommand"
    no_command = _call(http, action="command", projectId=project)
    assert no_command.status_code == 422
    assert client.list_actions(project) == []


def test_original_route_reports_a_failed_action_with_its_code(
    http: httpx.Client, api: Api, project: str
) -> None:
    inject_fault(api.env["REDIS_URL"], op="create", count=1, mode="permanent")
    failed = _call(http, action="ensure", projectId=project)
    assert failed.status_code == 502, failed.text
    error = failed.json()["error"]
    assert error["code"] == "provider_error"
    assert uuid.UUID(error["details"]["actionId"])
    assert error["details"]["retryable"] is False


# --- provider hooks -----------------------------------------------------------------------------


def _signed(body: dict[str, Any], secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body)
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, raw)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return raw.encode(), headers


def _hook(api: Api, body: dict[str, Any]) -> httpx.Response:
    raw, headers = _signed(body)
    return httpx.post(api.url + "/api/workspaces/events", content=raw, headers=headers)


def test_hooks_must_be_signed(api: Api, project: str) -> None:
    body = {"type": "sandbox.killed", "data": {"sandbox_id": "sb-1", "project_id": project}}
    raw, headers = _signed(body)
    url = api.url + "/api/workspaces/events"
    tampered = raw.replace(b"sb-1", b"sb-2")
    assert httpx.post(url, content=tampered, headers=headers).status_code == 401
    assert httpx.post(url, content=raw).status_code == 401
    other_secret = _signed(body, "whsec_" + "QUJDREVGR0hJSktMTU5PUA==")
    assert httpx.post(url, content=other_secret[0], headers=other_secret[1]).status_code == 401
    garbage = {**headers, "webhook-signature": "not-a-signature"}
    assert httpx.post(url, content=raw, headers=garbage).status_code == 401
    assert httpx.post(url, content=raw, headers=headers).status_code == 200


def test_paused_and_killed_hooks_mark_the_workspace(
    api: Api, http: httpx.Client, client: WorkspaceClient, project: str
) -> None:
    first = _call(http, action="ensure", projectId=project, files={"a.txt": "A"}).json()
    sandbox_id = client.get_workspace(project)["sandbox_id"]
    store = RedisStore(api.env["REDIS_URL"])

    # A stale hook (an older sandbox) changes nothing.
    stale = _hook(api, {"type": "sandbox.paused", "data": {"sandbox_id": "fake-old"}})
    assert stale.status_code == 200 and stale.json() == {"applied": False, "projects": []}

    # Paused at the provider: marked sleeping; the next action wakes the same sandbox.
    meta = json.loads(store.get(f"sb:{sandbox_id}") or b"{}")
    store.set(f"sb:{sandbox_id}", json.dumps({**meta, "status": "sleeping"}).encode())
    paused = _hook(api, {"type": "sandbox.paused", "data": {"sandbox_id": sandbox_id}})
    assert paused.json() == {"applied": True, "projects": [project]}
    assert client.get_workspace(project)["status"] == "sleeping"
    read = _call(http, action="read", projectId=project, paths=["a.txt"]).json()
    assert read["files"][0]["content"] == "A"
    assert client.get_workspace(project)["status"] == "ready"
    assert client.get_workspace(project)["sandbox_id"] == sandbox_id

    # Killed at the provider: marked error; the next action provisions a new sandbox.
    store.delete(f"sb:{sandbox_id}")
    killed = _hook(
        api, {"type": "sandbox.killed", "data": {"sandbox_id": sandbox_id, "project_id": project}}
    )
    assert killed.json() == {"applied": True, "projects": [project]}
    assert client.get_workspace(project)["status"] == "error"
    again = _call(http, action="ensure", projectId=project).json()
    assert again["status"] == "succeeded" and again["created"] is True
    workspace = client.get_workspace(project)
    assert workspace["status"] == "ready" and workspace["sandbox_id"] != sandbox_id
    assert again["workspaceId"] == first["workspaceId"]


def test_hook_of_another_type_is_ignored_and_bad_bodies_are_422(api: Api) -> None:
    assert _hook(api, {"type": "sandbox.lifecycle.created", "data": {}}).json()["applied"] is False
    missing = _hook(api, {"type": "sandbox.killed", "data": {}})
    assert missing.status_code == 422
    assert missing.json()["error"]["details"]["field"] == "data.sandbox_id"
