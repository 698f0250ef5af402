"""Webhook delivery: sign per Standard Webhooks, POST, retry on a schedule, then dead.

Rows come from the outbox (``db.outbox``). Without ``WORKSPACE_WEBHOOK_SECRET`` nothing is sent:
webhooks are promised signed, and a receiver cannot tell an unsigned event from a forged one.
Rows stay pending (no attempt is spent) and go out once a secret is configured.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import Engine
from standardwebhooks import Webhook

from qai_jobs.config import Settings
from qai_jobs.db import outbox

log = logging.getLogger(__name__)

# Receivers should answer at once and work later (Standard Webhooks advice); a slow one must
# not hold a worker slot.
CONNECT_TIMEOUT = 3.0
TOTAL_TIMEOUT = 10.0
# How long a claimed row is invisible to other deliveries (well over the HTTP timeout).
CLAIM_LEASE_SECONDS = TOTAL_TIMEOUT + 20.0
# Retries up to this delay are sent as Celery countdowns; longer ones are left to the beat
# sweep, since countdowns near Redis's visibility timeout (1 h) get re-delivered while still
# running.
MAX_COUNTDOWN_SECONDS = 300.0

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
            outbox.hold(conn, event_id, NO_SECRET, settings.workspace_sweep_seconds)
        return Delivery(event_id, "held", error=NO_SECRET)
    with engine.begin() as conn:
        row = outbox.claim(conn, event_id, CLAIM_LEASE_SECONDS)
    if row is None:
        return Delivery(event_id, "skipped")  # delivered, dead, not due, or being delivered
    if row.target not in settings.workspace_callback_url:
        with engine.begin() as conn:
            outbox.mark_failed(conn, row.id, row.attempts, dead=True, error=NOT_CONFIGURED, delay=0)
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
            outbox.mark_delivered(conn, row.id, row.attempts)
        return Delivery(row.id, "delivered", row.attempts)
    delay = retry_delay(settings, row.attempts)
    with engine.begin() as conn:
        dead = delay is None
        outbox.mark_failed(conn, row.id, row.attempts, dead=dead, error=error, delay=delay or 0)
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
