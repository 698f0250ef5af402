"""The webhook outbox: rows written in the transaction that decides an event, and their states.

An event is never announced for a state that did not commit, nor lost once it did: its row is
inserted with the action's final status, and delivery (``worker.webhooks``) reads it afterwards.
A delivery claims its row with ``FOR UPDATE SKIP LOCKED`` and, in the same statement, pushes
``next_attempt_at`` a lease ahead, then commits before the HTTP call: no transaction stays open
across the network, and a worker that dies mid-POST leaves a row that becomes due again after
the lease (at least once). An outcome is written only if the row is still at the attempt that
was claimed, so a delivery that outlived its lease cannot overwrite a newer one.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from qai_jobs.config import Settings
from qai_jobs.events import Event

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
    events: list[Event],
) -> list[str]:
    """Insert one outbox row per event and target; return their ids for delivery after commit."""
    targets = settings.workspace_callback_url
    if not events or not targets:
        return []
    last = conn.execute(_BUMP_EVENT_SEQ, {"p": project_id, "n": len(events)}).scalar_one()
    ids: list[str] = []
    first = last - len(events) + 1
    for offset, event in enumerate(events):
        sequence = first + offset
        body = json.dumps(
            {
                "type": event.type,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "data": {
                    "project_id": project_id,
                    "action_id": str(action_id) if action_id else None,
                    "sequence": sequence,
                    **event.data,
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
                    "type": event.type,
                    "seq": sequence,
                    "target": target,
                    "body": body,
                },
            )
            ids.append(event_id)
    return ids


_CLAIM = sa.text(
    """
    WITH due AS (
        SELECT id FROM webhook_events
        WHERE id = :id AND status = 'pending' AND next_attempt_at <= now()
        FOR UPDATE SKIP LOCKED
    )
    UPDATE webhook_events e
    SET attempts = e.attempts + 1, next_attempt_at = now() + make_interval(secs => :lease)
    FROM due WHERE e.id = due.id
    RETURNING e.id, e.project_id, e.type, e.target, e.body, e.attempts
    """
)
_DELIVERED = sa.text(
    """
    UPDATE webhook_events SET status = 'delivered', delivered_at = now()
    WHERE id = :id AND status = 'pending' AND attempts = :n
    """
)
_FAILED = sa.text(
    """
    UPDATE webhook_events
    SET status = :status, last_error = :err,
        next_attempt_at = now() + make_interval(secs => :delay)
    WHERE id = :id AND status = 'pending' AND attempts = :n
    """
)
_HOLD = sa.text(
    """
    UPDATE webhook_events
    SET last_error = :err, next_attempt_at = now() + make_interval(secs => :delay)
    WHERE id = :id AND status = 'pending'
    """
)
_DUE = sa.text(
    """
    SELECT id FROM webhook_events
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT :limit
    """
)


def claim(conn: Connection, event_id: str, lease_seconds: float) -> Any:
    """The row, if it is pending and due; it stays invisible to others for ``lease_seconds``."""
    return conn.execute(_CLAIM, {"id": event_id, "lease": lease_seconds}).first()


def mark_delivered(conn: Connection, event_id: str, attempts: int) -> None:
    conn.execute(_DELIVERED, {"id": event_id, "n": attempts})


def mark_failed(
    conn: Connection, event_id: str, attempts: int, *, dead: bool, error: str, delay: float
) -> None:
    params = {"id": event_id, "n": attempts, "err": error, "delay": delay}
    conn.execute(_FAILED, {**params, "status": "dead" if dead else "pending"})


def hold(conn: Connection, event_id: str, error: str, delay: float) -> None:
    """Keep a row pending without spending an attempt (nothing can be sent yet)."""
    conn.execute(_HOLD, {"id": event_id, "err": error, "delay": delay})


def due_events(engine: Engine, limit: int = 1000) -> list[str]:
    """Pending rows whose next attempt is due (their message was lost, or beat owns the retry)."""
    with engine.connect() as conn:
        return [str(i) for i in conn.execute(_DUE, {"limit": limit}).scalars()]


_LIST = (
    "SELECT id, project_id, action_id, type, sequence, target, status, attempts, "
    "next_attempt_at, last_error, created_at, delivered_at FROM webhook_events WHERE true"
)


def list_events(
    engine: Engine,
    *,
    dead: bool = False,
    project_id: str | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """The newest ``limit`` events (dead ones, one project's), newest first; ``before`` is the
    (created_at, id) of the last row of the previous page (keyset: a page reads its own rows
    through ix_webhook_events_created, however deep it is)."""
    query = _LIST
    params: dict[str, Any] = {"limit": limit}
    if dead:
        query += " AND status = 'dead'"
    if project_id:
        query += " AND project_id = :p"
        params["p"] = project_id
    if before is not None:
        query += " AND (created_at, id) < (:at, :id)"
        params.update(at=before[0], id=before[1])
    query += " ORDER BY created_at DESC, id DESC LIMIT :limit"
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]


def replay(conn: Connection, *, event_id: str | None = None, only_dead: bool = False) -> list[str]:
    """Make events due again from their first attempt, keeping their webhook-id (receivers
    dedupe by it): ``event_id`` alone (in any state), every dead one, or ``event_id`` only if
    it is dead. Returns the ids to hand to delivery after commit; should that message be lost,
    the webhooks sweep finds the rows due."""
    if event_id is None and not only_dead:
        raise ValueError("replay: name an event or ask for the dead ones")
    where = ["true"]
    if event_id is not None:
        where.append("id = :id")
    if only_dead:
        where.append("status = 'dead'")
    statement = sa.text(
        "UPDATE webhook_events SET status = 'pending', attempts = 0, next_attempt_at = now(), "
        f"last_error = NULL WHERE {' AND '.join(where)} RETURNING id"
    )
    return [str(i) for i in conn.execute(statement, {"id": event_id}).scalars()]
