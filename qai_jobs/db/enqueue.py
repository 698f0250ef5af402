"""Enqueue and cancel: how an action enters a project's queue, in one transaction.

Enqueue bumps the project's ``next_seq`` with ``UPDATE ... RETURNING`` and inserts the action
with that number in the same transaction: the row lock on the workspace makes sequence numbers
follow commit order (a global auto-increment would not). The Celery message is sent only after
the commit, by the caller.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from qai_jobs.constants import ActionStatus
from qai_jobs.errors import ErrorCode


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


_BUMP = sa.text(
    """
    INSERT INTO workspaces (project_id, id, next_seq) VALUES (:p, :wid, 1)
    ON CONFLICT (project_id) DO UPDATE SET next_seq = workspaces.next_seq + 1
    RETURNING next_seq
    """
)
_FIND_KEY = sa.text("SELECT id FROM actions WHERE project_id = :p AND idempotency_key = :k")
_COLUMNS = """
    INSERT INTO actions (id, project_id, seq, kind, payload, status, error, finished_at,
                         idempotency_key, kicked_at)
"""
# Without an idempotency key there is nothing to look up first: bump and insert in one
# statement (the common enqueue, one round trip to Postgres besides the commit).
_BUMP_AND_INSERT = sa.text(
    """
    WITH bumped AS (
        INSERT INTO workspaces (project_id, id, next_seq) VALUES (:p, :wid, 1)
        ON CONFLICT (project_id) DO UPDATE SET next_seq = workspaces.next_seq + 1
        RETURNING next_seq
    )"""
    + _COLUMNS
    + """
    SELECT :id, :p, bumped.next_seq, :kind, CAST(:payload AS jsonb), :status,
           CAST(:error AS jsonb), CAST(:finished AS timestamptz), NULL, now()
    FROM bumped
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)
_INSERT = sa.text(
    """
    INSERT INTO actions (id, project_id, seq, kind, payload, status, error, finished_at,
                         idempotency_key, kicked_at)
    VALUES (:id, :p, :seq, :kind, CAST(:payload AS jsonb), :status, CAST(:error AS jsonb),
            CAST(:finished AS timestamptz), :k, now())
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)


@dataclass(frozen=True)
class Enqueued:
    id: uuid.UUID
    created: bool  # False when an idempotency key or task id found an existing action


def enqueue(
    conn: Connection,
    *,
    action_id: uuid.UUID,
    project_id: str,
    kind: str,
    payload: dict[str, Any],
    idempotency_key: str | None = None,
    failed_error: dict[str, Any] | None = None,
) -> Enqueued:
    """Record an action in ``conn``'s transaction (the caller commits, then sends the message).

    ``failed_error`` records an action that arrived invalid (from a foreign producer) as failed,
    so whoever sent it can see why. An id already recorded (a redelivered task, or a retry of
    a transaction whose commit succeeded unseen) comes back with ``created=False``.
    """
    params: dict[str, Any] = {
        "id": action_id,
        "p": project_id,
        "kind": kind,
        "payload": json.dumps(payload),
        "status": ActionStatus.FAILED if failed_error else "queued",
        "finished": datetime.now(UTC) if failed_error else None,
        "error": _json(failed_error),
    }
    if idempotency_key is None:
        inserted = conn.execute(_BUMP_AND_INSERT, {**params, "wid": uuid.uuid4()}).first()
        return Enqueued(action_id, created=inserted is not None)
    # The bump locks the workspace row first, so two enqueues with one key serialise here.
    seq = conn.execute(_BUMP, {"p": project_id, "wid": uuid.uuid4()}).scalar_one()
    existing = conn.execute(_FIND_KEY, {"p": project_id, "k": idempotency_key}).scalar()
    if existing is not None:
        return Enqueued(existing, created=False)
    inserted = conn.execute(_INSERT, {**params, "seq": seq, "k": idempotency_key}).first()
    return Enqueued(action_id, created=inserted is not None)


_CANCEL = sa.text(
    """
    UPDATE actions SET status = 'cancelled', finished_at = now(),
           error = CAST(:error AS jsonb)
    WHERE id = :id AND status = 'queued'
    RETURNING project_id
    """
)


def cancel(conn: Connection, action_id: uuid.UUID) -> bool:
    """Cancel a queued action; False if it is not queued (running ones are not interrupted)."""
    error = {
        "code": ErrorCode.CANCELLED,
        "message": "cancelled before it started",
        "retryable": False,
    }
    return conn.execute(_CANCEL, {"id": action_id, "error": json.dumps(error)}).first() is not None
