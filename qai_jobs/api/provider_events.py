"""Provider lifecycle hooks: a sandbox was killed, paused or resumed behind our back.

Each provider signs its hooks its own way, checked with WORKSPACE_PROVIDER_HOOK_SECRET (a
secret of their own, so the receivers of our outbound webhooks, who hold
WORKSPACE_WEBHOOK_SECRET, cannot forge one):

- E2B's lifecycle webhooks: ``e2b-signature`` is the unpadded base64 of SHA-256 over the secret
  followed by the raw body (URL-safe alphabet in E2B's own examples; the standard one is
  accepted too), the body ``{"id", "type": "sandbox.lifecycle.<...>", "sandboxId",
  "eventData": {"sandbox_metadata"}, "timestamp"}``;
- anything else: Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
  the body ``{"type", "data": {"sandbox_id", "project_id"?}}``.

Every event is applied once (its id: E2B's ``id``, Standard Webhooks' ``webhook-id``), in the
transaction that records it. The hook only corrects ``workspaces.status`` so operators see the
truth at once; the runner reconciles with ``provider.status()`` before every action anyway. The
lease columns are never touched: a drainer holding the lease writes back only the columns its
action changed, so at worst it overwrites this status with its own, fresher, truth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.engine import Engine

from qai_jobs.config import Settings
from qai_jobs.constants import PROVIDER_EVENTS_KEPT_SECONDS
from qai_jobs.db import inbound
from qai_jobs.db.session import db_retry
from qai_jobs.db.workspace_state import mark_by_sandbox

log = logging.getLogger("qai_jobs.api")

Change = Literal["killed", "paused", "resumed"]

# Provider event types we act on. The short names are ours; the lifecycle ones are E2B's.
EVENT_TYPES: dict[str, Change] = {
    "sandbox.killed": "killed",
    "sandbox.paused": "paused",
    "sandbox.resumed": "resumed",
    "sandbox.lifecycle.killed": "killed",
    "sandbox.lifecycle.paused": "paused",
    "sandbox.lifecycle.resumed": "resumed",
}
# killed -> "error": the same mark the drainer leaves when a sandbox is found gone, meaning
# "reconcile and recreate on the next action". paused -> "sleeping": the next action wakes it.
# resumed -> "ready": running (and billing) again, so the idle sweep will put it back to sleep.
# E2B's created, updated and checkpointed change nothing here.
_NEW_STATUS: dict[Change, tuple[str, tuple[str, ...]]] = {
    "killed": ("error", ("ready", "sleeping", "provisioning")),
    "paused": ("sleeping", ("ready",)),
    "resumed": ("ready", ("sleeping",)),
}


class BadSignature(Exception):
    """The hook is not signed with the provider hook secret."""


@dataclass(frozen=True)
class Hook:
    source: Literal["e2b", "standard"]
    event_id: str
    type: str
    change: Change | None
    sandbox_id: str | None
    project_id: str | None
    deployment: str | None  # the sandbox's deployment tag, when the event carries its metadata
    timestamp: datetime | None


_warned: list[bool] = []


def hook_secret(settings: Settings) -> str | None:
    """WORKSPACE_PROVIDER_HOOK_SECRET, else WORKSPACE_WEBHOOK_SECRET (with a warning, once)."""
    if settings.workspace_provider_hook_secret is not None:
        return settings.workspace_provider_hook_secret.get_secret_value()
    if settings.workspace_webhook_secret is None:
        return None
    if not _warned:
        _warned.append(True)
        log.warning(
            "WORKSPACE_PROVIDER_HOOK_SECRET is not set: provider hooks are checked with "
            "WORKSPACE_WEBHOOK_SECRET, which every receiver of our webhooks holds and could "
            "forge provider events with; give provider hooks a secret of their own"
        )
    return settings.workspace_webhook_secret.get_secret_value()


def e2b_signature(secret: str, raw: bytes) -> str:
    """E2B's ``e2b-signature`` of ``raw``: SHA-256 of the secret then the body, base64
    (URL-safe), unpadded."""
    digest = hashlib.sha256(secret.encode() + raw).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def verify(secret: str, headers: Mapping[str, str], raw: bytes) -> Literal["e2b", "standard"]:
    """Which provider format signed ``raw``; BadSignature if none did."""
    given = headers.get("e2b-signature")
    if given is not None:
        if headers.get("e2b-signature-version", "v1") != "v1":
            raise BadSignature("unknown e2b-signature-version")
        normal = given.strip().replace("+", "-").replace("/", "_").rstrip("=")
        if not hmac.compare_digest(normal.encode(), e2b_signature(secret, raw).encode()):
            raise BadSignature("e2b-signature does not match")
        return "e2b"
    from standardwebhooks import Webhook, WebhookVerificationError

    try:
        Webhook(secret).verify(raw, dict(headers), json_parse=False)
    except (WebhookVerificationError, ValueError) as exc:  # ValueError: not a whsec_ secret
        raise BadSignature("missing or invalid webhook signature") from exc
    return "standard"


def parse(source: str, headers: Mapping[str, str], body: dict[str, Any]) -> Hook:
    """The hook in ``body``; ValueError naming the field when one it needs is missing."""
    kind = str(body.get("type", ""))
    change = EVENT_TYPES.get(kind)
    if source == "e2b":
        event_id = body.get("id")
        data: Any = body.get("eventData") or {}
        sandbox_id = body.get("sandboxId")
        where = "sandboxId"
        metadata = data.get("sandbox_metadata") if isinstance(data, dict) else None
    else:
        event_id = headers.get("webhook-id")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise ValueError("data: must be an object")
        sandbox_id = data.get("sandbox_id") or data.get("sandboxId") or body.get("sandboxId")
        where = "data.sandbox_id"
        metadata = data.get("metadata") or data.get("sandboxMetadata")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise ValueError("id: required, up to 255 characters")
    if change is not None and (not isinstance(sandbox_id, str) or not sandbox_id):
        raise ValueError(f"{where}: required")
    metadata = metadata if isinstance(metadata, dict) else {}
    project_id = (data.get("project_id") if isinstance(data, dict) else None) or metadata.get(
        "project_id"
    )
    deployment = metadata.get("deployment")
    return Hook(
        source="e2b" if source == "e2b" else "standard",
        event_id=event_id,
        type=kind,
        change=change,
        sandbox_id=sandbox_id if isinstance(sandbox_id, str) else None,
        project_id=project_id if isinstance(project_id, str) else None,
        deployment=deployment if isinstance(deployment, str) else None,
        timestamp=_time(body.get("timestamp")),
    )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ignored_because(settings: Settings, hook: Hook) -> str | None:
    """Why a verified hook changes nothing before it is even looked up, or None."""
    if hook.change is None:
        return "type"
    if hook.deployment is not None and hook.deployment != settings.deployment_id:
        return "deployment"  # the account is shared: another deployment's sandbox
    if hook.timestamp is not None and (
        datetime.now(UTC) - hook.timestamp > timedelta(seconds=PROVIDER_EVENTS_KEPT_SECONDS)
    ):
        return "stale"
    return None


@db_retry
def apply(engine: Engine, hook: Hook) -> tuple[bool, list[str]]:
    """(first time seen, projects changed): the workspace(s) whose current sandbox is the
    hook's are marked, once per event id. A hook about an older sandbox (the workspace has
    moved on) matches nothing."""
    with engine.begin() as conn:
        if not inbound.first_time(conn, hook.source, hook.event_id):
            return False, []
        if hook.change is None or hook.sandbox_id is None:
            return True, []
        new, from_statuses = _NEW_STATUS[hook.change]
        return True, mark_by_sandbox(conn, hook.sandbox_id, hook.project_id, new, from_statuses)
