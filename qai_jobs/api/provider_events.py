"""Provider lifecycle hooks: a sandbox was killed or paused behind our back.

The hook only corrects ``workspaces.status`` so operators (and ``qai-jobs status``) see the
truth at once; the runner reconciles with ``provider.status()`` before every action anyway, so
the next action recreates a killed sandbox (from the last snapshot) or wakes a paused one. The
lease columns are never touched: a drainer holding the lease writes back only the columns its
action changed, so at worst it overwrites this status with its own, fresher, truth.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy.engine import Engine

from qai_jobs.db.session import db_retry
from qai_jobs.db.workspace_state import mark_by_sandbox

Change = Literal["killed", "paused"]

# Provider event types we understand, mapped to what they mean for a workspace. The short
# names are ours; the lifecycle ones are E2B's webhook types.
EVENT_TYPES: dict[str, Change] = {
    "sandbox.killed": "killed",
    "sandbox.paused": "paused",
    "sandbox.lifecycle.killed": "killed",
    "sandbox.lifecycle.paused": "paused",
}

# killed -> "error": the same mark the drainer leaves when a sandbox is found gone, meaning
# "reconcile and recreate on the next action". paused -> "sleeping": the next action wakes it.
_NEW_STATUS: dict[Change, tuple[str, tuple[str, ...]]] = {
    "killed": ("error", ("ready", "sleeping", "provisioning")),
    "paused": ("sleeping", ("ready",)),
}


def parse(body: dict[str, Any]) -> tuple[Change, str, str | None] | None:
    """(change, sandbox_id, project_id) of a hook we act on; None for other event types.

    Raises ValueError naming the missing field when a known type lacks its sandbox id."""
    change = EVENT_TYPES.get(str(body.get("type", "")))
    if change is None:
        return None
    data = body.get("data") or {}
    if not isinstance(data, dict):
        raise ValueError("data: must be an object")
    sandbox_id = data.get("sandbox_id") or data.get("sandboxId")
    if not isinstance(sandbox_id, str) or not sandbox_id:
        raise ValueError("data.sandbox_id: required")
    metadata = data.get("metadata") or data.get("sandboxMetadata") or {}
    project_id = data.get("project_id") or (
        metadata.get("project_id") if isinstance(metadata, dict) else None
    )
    return change, sandbox_id, project_id if isinstance(project_id, str) else None


@db_retry
def apply(
    engine: Engine, change: Change, sandbox_id: str, project_id: str | None = None
) -> list[str]:
    """Mark the workspace(s) whose current sandbox is ``sandbox_id``; the projects changed.

    A hook about an older sandbox (the workspace has moved on) matches nothing and is ignored.
    """
    new, from_statuses = _NEW_STATUS[change]
    with engine.begin() as conn:
        return mark_by_sandbox(conn, sandbox_id, project_id, new, from_statuses)
