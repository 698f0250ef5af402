"""Inbound provider hooks on a real `qai-jobs api`, each in its provider's real format.

E2B signs its lifecycle webhooks with ``e2b-signature``: the unpadded base64 of SHA-256 over the
signature secret followed by the raw body, and puts ``sandboxId`` at the top level; anything
else comes as Standard Webhooks. Both are checked with WORKSPACE_PROVIDER_HOOK_SECRET, never
with the secret our own outbound webhooks are signed with, and every event is applied once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from qai_jobs.client import WorkspaceClient
from tests.conftest import settings_for
from tests.integration.api_helpers import WEBHOOK_SECRET, Api, api_env, start_api
from tests.support.procs import Proc

# One secret for both formats: E2B takes any string as a webhook's signatureSecret, and this
# one is also a Standard Webhooks secret.
HOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture(scope="module")
def hooks_api(base_env: dict[str, str], log_dir: Path, shared_worker: Proc) -> Iterator[Api]:
    started = start_api(api_env(base_env, WORKSPACE_PROVIDER_HOOK_SECRET=HOOK_SECRET), log_dir)
    yield started
    started.proc.stop()


@pytest.fixture(scope="module")
def lc(base_env: dict[str, str]) -> WorkspaceClient:
    return WorkspaceClient(settings_for(base_env))


def e2b_event(kind: str, sandbox_id: str, project: str, **extra: Any) -> dict[str, Any]:
    """A body as E2B sends it (version 2 of its webhook payload)."""
    settings_deployment = extra.pop("deployment", None)
    metadata = {"qai": "1", "project_id": project}
    if settings_deployment is not None:
        metadata["deployment"] = settings_deployment
    return {
        "version": "v2",
        "id": extra.pop("id", str(uuid.uuid4())),
        "type": f"sandbox.lifecycle.{kind}",
        "eventData": {"sandbox_metadata": metadata},
        "sandboxBuildId": "build-1",
        "sandboxExecutionId": str(uuid.uuid4()),
        "sandboxId": sandbox_id,
        "sandboxTeamId": "team-1",
        "sandboxTemplateId": "base",
        "timestamp": extra.pop("timestamp", datetime.now(UTC).isoformat()),
        **extra,
    }


def e2b_post(
    api: Api, body: dict[str, Any], secret: str = HOOK_SECRET, **kw: Any
) -> httpx.Response:
    raw = json.dumps(body).encode()
    signature = base64.urlsafe_b64encode(hashlib.sha256(secret.encode() + raw).digest())
    headers = {
        "content-type": "application/json",
        "e2b-webhook-id": "wh-1",
        "e2b-delivery-id": str(uuid.uuid4()),  # a new one on every attempt
        "e2b-signature-version": "v1",
        "e2b-signature": kw.pop("signature", signature.decode().rstrip("=")),
    }
    return httpx.post(
        api.url + "/api/workspaces/events", content=kw.pop("raw", raw), headers=headers
    )


def standard_post(
    api: Api, body: dict[str, Any], secret: str, msg_id: str | None = None
) -> httpx.Response:
    raw = json.dumps(body)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, raw),
        "content-type": "application/json",
    }
    return httpx.post(api.url + "/api/workspaces/events", content=raw.encode(), headers=headers)


def status(lc: WorkspaceClient, project: str) -> str:
    return str(lc.get_workspace(project)["status"])


def test_e2b_lifecycle_webhooks_in_e2b_format_apply_once(
    hooks_api: Api, lc: WorkspaceClient, project: str
) -> None:
    lc.ensure(project, files={"a.txt": "A"}, start_dev_server=False).wait(60)
    sandbox_id = lc.get_workspace(project)["sandbox_id"]
    ours = lc.settings.deployment_id

    paused = e2b_event("paused", sandbox_id, project, deployment=ours)
    first = e2b_post(hooks_api, paused)
    assert first.status_code == 200, first.text
    assert first.json() == {"applied": True, "projects": [project]}
    assert status(lc, project) == "sleeping"

    resumed = e2b_event("resumed", sandbox_id, project, deployment=ours)
    assert e2b_post(hooks_api, resumed).json() == {"applied": True, "projects": [project]}
    assert status(lc, project) == "ready"
    # E2B retries a delivery (a new delivery id, the same event): it changes nothing again.
    again = e2b_post(hooks_api, paused).json()
    assert again == {"applied": False, "projects": [], "duplicate": True}
    assert status(lc, project) == "ready"

    for kind in ("created", "updated", "checkpointed"):
        got = e2b_post(hooks_api, e2b_event(kind, sandbox_id, project)).json()
        assert got == {"applied": False, "projects": [], "ignored": "type"}, kind
    other = e2b_post(hooks_api, e2b_event("killed", sandbox_id, project, deployment="staging"))
    assert other.json()["ignored"] == "deployment" and status(lc, project) == "ready"
    old = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    stale = e2b_post(hooks_api, e2b_event("killed", sandbox_id, project, timestamp=old))
    assert stale.json()["ignored"] == "stale" and status(lc, project) == "ready"

    # The standard base64 alphabet, and padding, are accepted too: the same digest.
    killed = e2b_event("killed", sandbox_id, project)
    raw = json.dumps(killed).encode()
    padded = base64.b64encode(hashlib.sha256(HOOK_SECRET.encode() + raw).digest()).decode()
    got = e2b_post(hooks_api, killed, signature=padded)
    assert got.json() == {"applied": True, "projects": [project]}
    assert status(lc, project) == "error"


def test_hooks_are_refused_unless_signed_with_the_provider_hook_secret(
    hooks_api: Api, lc: WorkspaceClient, project: str
) -> None:
    body = e2b_event("killed", "sb-x", project)
    assert e2b_post(hooks_api, body, secret="another-secret").status_code == 401
    tampered = json.dumps({**body, "sandboxId": "sb-y"}).encode()
    assert e2b_post(hooks_api, body, raw=tampered).status_code == 401
    assert e2b_post(hooks_api, body, signature="").status_code == 401
    unsigned = httpx.post(hooks_api.url + "/api/workspaces/events", json=body)
    assert unsigned.status_code == 401
    # Whoever receives our outbound webhooks holds WORKSPACE_WEBHOOK_SECRET: not enough here.
    standard = {"type": "sandbox.killed", "data": {"sandbox_id": "sb-x"}}
    assert standard_post(hooks_api, standard, WEBHOOK_SECRET).status_code == 401
    assert e2b_post(hooks_api, body, secret=WEBHOOK_SECRET).status_code == 401
    no_id = e2b_post(hooks_api, {k: v for k, v in body.items() if k != "id"})
    assert no_id.status_code == 422 and no_id.json()["error"]["details"]["field"] == "id"


def test_standard_webhooks_hooks_with_the_hook_secret_apply_once(
    hooks_api: Api, lc: WorkspaceClient, project: str
) -> None:
    lc.ensure(project, files={"a.txt": "A"}, start_dev_server=False).wait(60)
    sandbox_id = lc.get_workspace(project)["sandbox_id"]
    body = {"type": "sandbox.paused", "data": {"sandbox_id": sandbox_id}}
    first = standard_post(hooks_api, body, HOOK_SECRET, msg_id="msg_once")
    assert first.json() == {"applied": True, "projects": [project]}
    lc.wake(project).wait(60)
    assert status(lc, project) == "ready"
    again = standard_post(hooks_api, body, HOOK_SECRET, msg_id="msg_once")
    assert again.json()["duplicate"] is True and status(lc, project) == "ready"


def test_without_a_hook_secret_the_webhook_secret_serves_with_a_warning(
    base_env: dict[str, str], log_dir: Path, shared_worker: Proc, project: str
) -> None:
    fallback = start_api(api_env(base_env), log_dir)
    try:
        body = {"type": "sandbox.killed", "data": {"sandbox_id": "sb-none"}}
        got = standard_post(fallback, body, WEBHOOK_SECRET)
        assert got.status_code == 200 and got.json() == {"applied": False, "projects": []}
        assert "WORKSPACE_PROVIDER_HOOK_SECRET is not set" in fallback.proc.log()
    finally:
        fallback.proc.stop()
