"""Enqueue and cancel: how an action enters a project's queue, in one transaction.

Enqueue bumps the project's ``next_seq`` with ``UPDATE ... RETURNING`` and inserts the action
with that number in the same transaction: the row lock on the workspace makes sequence numbers
follow commit order (a global auto-increment would not). The Celery message is sent only after
the commit, by the caller.

A message only says "project P has work", so a project needs one on its way, not one per
action: ``workspaces.hint_seq`` names the action whose message has not yet tried to drain.
An enqueue that finds it set sends no message (``Enqueued.messaged`` is False): that message's
drain attempt starts after this commit (every attempt clears the mark in its first statement,
under the same row lock the bump takes), so it, or the lease holder it finds, sees this
action. Should the message be lost, the recovery sweep kicks the project, as it does for any
lost message, and a mark older than HINT_TRUST_SECONDS is not trusted. Actions recorded on
receipt of a foreign producer's message leave the mark alone: they have their message.
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
from qai_jobs.db.params import json_param
from qai_jobs.errors import ErrorCode

# A mark older than this is not trusted: its message may be lost (a producer killed before
# sending it, a wiped broker) or held by a worker of a version that does not clear marks. An
# enqueue then sends a message of its own, so such a loss delays only the actions enqueued
# within this window (recovery kicks those); a message that is merely slow costs a duplicate.
HINT_TRUST_SECONDS = 10.0
# :hint: whether this enqueue's message may stand for the project (ours) or is its own
# (foreign); ``hint_seq = next_seq`` afterwards says this action is the one to send it. (SET
# expressions read the row as it was: both columns test the same old mark.)
_FRESH_MARK = (
    "workspaces.hint_seq IS NOT NULL"
    " AND workspaces.hint_at >= now() - make_interval(secs => :trust)"
)
_UPSERT_WORKSPACE = f"""
    INSERT INTO workspaces (project_id, id, next_seq, hint_seq, hint_at)
    VALUES (:p, :wid, 1, CASE WHEN :hint THEN 1 END, CASE WHEN :hint THEN now() END)
    ON CONFLICT (project_id) DO UPDATE SET next_seq = workspaces.next_seq + 1,
        hint_seq = CASE WHEN NOT :hint OR ({_FRESH_MARK}) THEN workspaces.hint_seq
                        ELSE workspaces.next_seq + 1 END,
        hint_at = CASE WHEN NOT :hint OR ({_FRESH_MARK}) THEN workspaces.hint_at
                       ELSE now() END
    RETURNING next_seq, NOT :hint OR hint_seq = next_seq AS messaged
"""
_BUMP = sa.text(_UPSERT_WORKSPACE)
_UNMARK = sa.text(
    "UPDATE workspaces SET hint_seq = NULL, hint_at = NULL "
    "WHERE project_id = :p AND hint_seq = :seq"
)
_FIND_KEY = sa.text("SELECT id FROM actions WHERE project_id = :p AND idempotency_key = :k")
_COLUMNS = """
    INSERT INTO actions (id, project_id, seq, kind, payload, status, error, finished_at,
                         idempotency_key, kicked_at, messaged)
"""
# Without an idempotency key there is nothing to look up first: bump and insert in one
# statement (the common enqueue, one round trip to Postgres besides the commit).
_BUMP_AND_INSERT = sa.text(
    f"WITH bumped AS ({_UPSERT_WORKSPACE})"
    + _COLUMNS
    + """
    SELECT :id, :p, bumped.next_seq, :kind, CAST(:payload AS jsonb), :status,
           CAST(:error AS jsonb), CAST(:finished AS timestamptz), NULL, now(), bumped.messaged
    FROM bumped
    ON CONFLICT (id) DO NOTHING
    RETURNING id, messaged
    """
)
_INSERT = sa.text(
    _COLUMNS
    + """
    VALUES (:id, :p, :seq, :kind, CAST(:payload AS jsonb), :status, CAST(:error AS jsonb),
            CAST(:finished AS timestamptz), :k, now(), :messaged)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, messaged
    """
)


@dataclass(frozen=True)
class Enqueued:
    id: uuid.UUID
    created: bool  # False when an idempotency key or task id found an existing action
    # False: the project's message in flight stands for this action too; send none.
    messaged: bool = True


def enqueue(
    conn: Connection,
    *,
    action_id: uuid.UUID,
    project_id: str,
    kind: str,
    payload: dict[str, Any],
    idempotency_key: str | None = None,
    failed_error: dict[str, Any] | None = None,
    hint: bool = True,
) -> Enqueued:
    """Record an action in ``conn``'s transaction (the caller commits, then sends the message).

    ``failed_error`` records an action that arrived invalid (from a foreign producer) as failed,
    so whoever sent it can see why. ``hint`` False: the action arrived with a message of its
    own (a foreign producer's), which leaves the project's mark alone. An id already recorded
    (a redelivered task, or a retry of a transaction whose commit succeeded unseen) comes back
    with ``created=False``.
    """
    params: dict[str, Any] = {
        "id": action_id,
        "p": project_id,
        "kind": kind,
        "payload": json.dumps(payload),
        "status": ActionStatus.FAILED if failed_error else "queued",
        "finished": datetime.now(UTC) if failed_error else None,
        "error": json_param(failed_error),
    }
    params |= {"hint": hint, "trust": HINT_TRUST_SECONDS}
    if idempotency_key is None:
        inserted = conn.execute(_BUMP_AND_INSERT, {**params, "wid": uuid.uuid4()}).first()
        if inserted is None:
            return Enqueued(action_id, created=False)
        return Enqueued(action_id, created=True, messaged=bool(inserted.messaged))
    # The bump locks the workspace row first, so two enqueues with one key serialise here.
    bumped = conn.execute(_BUMP, {**params, "wid": uuid.uuid4()}).one()
    existing = conn.execute(_FIND_KEY, {"p": project_id, "k": idempotency_key}).scalar()
    if existing is not None:
        if hint and bumped.messaged:  # the mark names this enqueue, which sends nothing
            conn.execute(_UNMARK, {"p": project_id, "seq": bumped.next_seq})
        return Enqueued(existing, created=False)
    params |= {"seq": bumped.next_seq, "k": idempotency_key, "messaged": bumped.messaged}
    inserted = conn.execute(_INSERT, params).first()
    if inserted is None:
        return Enqueued(action_id, created=False)
    return Enqueued(action_id, created=True, messaged=bool(inserted.messaged))


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
