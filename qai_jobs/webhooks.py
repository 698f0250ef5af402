"""Webhook events: outbox rows written in the transaction that decides them.

Delivery (signing per Standard Webhooks, retries, dead letters) reads these rows afterwards, so
an event is never announced for a state that did not commit, nor lost once it did.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .config import Settings

EVENT_TYPES = ("workspace.ready", "workspace.error", "workspace.sleeping", "workspace.destroyed")

_BUMP_EVENT_SEQ = sa.text(
    """
    UPDATE workspaces SET event_seq = event_seq + :n WHERE project_id = :p
    RETURNING event_seq
    """
)
_INSERT_EVENT = sa.text(
    """
    INSERT INTO webhook_events (id, project_id, action_id, type, sequence, target, body)
    VALUES (:id, :p, :a, :type, :seq, :target, :body)
    """
)


def record_events(
    conn: Connection,
    settings: Settings,
    project_id: str,
    action_id: uuid.UUID | None,
    events: list[tuple[str, dict[str, Any]]],
) -> list[str]:
    """Insert one outbox row per event and target; return their ids for delivery after commit."""
    targets = settings.workspace_callback_url
    if not events or not targets:
        return []
    last = conn.execute(_BUMP_EVENT_SEQ, {"p": project_id, "n": len(events)}).scalar_one()
    ids: list[str] = []
    first = last - len(events) + 1
    for offset, (event_type, data) in enumerate(events):
        sequence = first + offset
        body = json.dumps(
            {
                "type": event_type,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "data": {
                    "project_id": project_id,
                    "action_id": str(action_id) if action_id else None,
                    "sequence": sequence,
                    **data,
                },
            },
            separators=(",", ":"),
        )
        for target in targets:
            event_id = f"msg_{uuid.uuid4().hex}"
            conn.execute(
                _INSERT_EVENT,
                {
                    "id": event_id,
                    "p": project_id,
                    "a": action_id,
                    "type": event_type,
                    "seq": sequence,
                    "target": target,
                    "body": body,
                },
            )
            ids.append(event_id)
    return ids
