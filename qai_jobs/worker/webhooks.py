"""Webhook events: outbox rows written in the transaction that decides them, and their delivery.

Delivery (signing per Standard Webhooks, retries, dead letters) reads these rows afterwards, so
an event is never announced for a state that did not commit, nor lost once it did.

A delivery claims its row with ``FOR UPDATE SKIP LOCKED`` and, in the same statement, pushes
``next_attempt_at`` a lease ahead, then commits before the HTTP call: no transaction stays open
across the network, and a worker that dies mid-POST leaves a row that becomes due again after
the lease (at least once). The outcome is written only if the row is still at the attempt we
claimed, so a delivery that outlived its lease cannot overwrite a newer one.

Without ``WORKSPACE_WEBHOOK_SECRET`` nothing is sent: the contract promises signed webhooks and a
receiver cannot tell an unsigned event from a forged one. Rows stay ``pending`` (no attempt is
spent) and go out once a secret is configured.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from standardwebhooks import Webhook

from qai_jobs.config import Settings

log = logging.getLogger("qai_jobs.webhooks")

# Receivers should answer at once and work later (Standard Webhooks advice); a slow one must
# not hold a worker slot.
CONNECT_TIMEOUT = 3.0
TOTAL_TIMEOUT = 10.0
# How long a claimed row is invisible to other deliveries (well over the HTTP timeout).
CLAIM_LEASE_SECONDS = TOTAL_TIMEOUT + 20.0
# Retries up to this delay are sent as Celery countdowns; longer ones are left to the beat
# sweep, since countdowns near Redis's visibility timeout (1 h) get re-delivered (kombu#337).
MAX_COUNTDOWN_SECONDS = 300.0

EVENT_TYPES = ("workspace.ready", "workspace.error", "workspace.sleeping", "workspace.destroyed")


def error_event(error: dict[str, Any], kind: str, attempts: int) -> tuple[str, dict[str, Any]]:
    """The ``workspace.error`` event of an action's final failure (CONTRACT 5)."""
    return ("workspace.error", {"error": error, "kind": kind, "attempts": attempts})


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


# --- delivery --------------------------------------------------------------------------------

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
NO_SECRET = "not sent: WORKSPACE_WEBHOOK_SECRET is not set (webhooks are only sent signed)"  # noqa: S105
NOT_CONFIGURED = "not sent: the target is no longer in WORKSPACE_CALLBACK_URL"


@dataclass(frozen=True)
class Delivery:
    """What one delivery attempt did: ``status`` is delivered, retry, dead, held or skipped."""

    event_id: str
    status: str
    attempts: int = 0
    retry_in: float | None = None
    error: str | None = None


_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()
_warned_no_secret = threading.Event()


def _http() -> httpx.Client:
    """One pooled client per process (keep-alive matters for latency; never shared over fork)."""
    with _clients_lock:
        client = _clients.get(os.getpid())
        if client is None:
            client = httpx.Client(
                timeout=httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT),
                follow_redirects=False,  # only configured targets are ever called
                headers={"user-agent": "qai-jobs-webhooks"},
            )
            _clients[os.getpid()] = client
        return client


def sign_headers(
    secret: str, event_id: str, body: str, when: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` (signed with the ``whsec_`` secret)."""
    when = when or datetime.now(UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, when, body),
        "content-type": "application/json",
    }


def safe_target(url: str) -> str:
    """A target for logs: scheme and host only (paths and queries may carry tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}"


def retry_delay(settings: Settings, attempts: int) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones; None when exhausted."""
    schedule = settings.workspace_webhook_retry_schedule
    return schedule[attempts - 1] if attempts <= len(schedule) else None


def deliver(settings: Settings, engine: Engine, event_id: str) -> Delivery:
    """Attempt one delivery of the outbox row ``event_id`` if it is pending and due."""
    if settings.workspace_webhook_secret is None:
        if not _warned_no_secret.is_set():
            _warned_no_secret.set()
            log.warning("WORKSPACE_WEBHOOK_SECRET is not set: webhooks are held, not sent unsigned")
        with engine.begin() as conn:
            conn.execute(
                _HOLD, {"id": event_id, "err": NO_SECRET, "delay": settings.workspace_sweep_seconds}
            )
        return Delivery(event_id, "held", error=NO_SECRET)
    with engine.begin() as conn:
        row = conn.execute(_CLAIM, {"id": event_id, "lease": CLAIM_LEASE_SECONDS}).first()
    if row is None:
        return Delivery(event_id, "skipped")  # delivered, dead, not due, or being delivered
    if row.target not in settings.workspace_callback_url:
        with engine.begin() as conn:
            conn.execute(
                _FAILED,
                {
                    "id": row.id,
                    "n": row.attempts,
                    "status": "dead",
                    "err": NOT_CONFIGURED,
                    "delay": 0,
                },
            )
        log.warning("webhook %s: %s", row.id, NOT_CONFIGURED)
        return Delivery(row.id, "dead", row.attempts, error=NOT_CONFIGURED)
    secret = settings.workspace_webhook_secret.get_secret_value()
    error: str | None = None
    try:
        response = _http().post(
            row.target, content=row.body.encode(), headers=sign_headers(secret, row.id, row.body)
        )
        if not 200 <= response.status_code < 300:
            error = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        error = type(exc).__name__  # never str(exc): it may quote the URL and its query
    if error is None:
        with engine.begin() as conn:
            conn.execute(_DELIVERED, {"id": row.id, "n": row.attempts})
        return Delivery(row.id, "delivered", row.attempts)
    delay = retry_delay(settings, row.attempts)
    status = "pending" if delay is not None else "dead"
    with engine.begin() as conn:
        conn.execute(
            _FAILED,
            {"id": row.id, "n": row.attempts, "status": status, "err": error, "delay": delay or 0},
        )
    where = safe_target(row.target)
    if delay is None:
        log.warning(
            "webhook %s (%s) to %s is dead after %d attempts: %s",
            row.id,
            row.type,
            where,
            row.attempts,
            error,
        )
        return Delivery(row.id, "dead", row.attempts, error=error)
    log.info(
        "webhook %s (%s) to %s failed (%s); attempt %d in %.1fs",
        row.id,
        row.type,
        where,
        error,
        row.attempts + 1,
        delay,
    )
    return Delivery(row.id, "retry", row.attempts, retry_in=delay, error=error)


def due_events(engine: Engine, limit: int = 1000) -> list[str]:
    """Pending rows whose next attempt is due (their message was lost, or beat owns the retry)."""
    with engine.connect() as conn:
        return [str(i) for i in conn.execute(_DUE, {"limit": limit}).scalars()]
