"""Inbound provider hooks already applied, by event id: deliveries are at least once."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

_SEEN = sa.text(
    "INSERT INTO provider_events (source, event_id) VALUES (:s, :e) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
_PRUNE = sa.text(
    "DELETE FROM provider_events WHERE received_at < now() - make_interval(secs => :keep)"
)


def first_time(conn: Connection, source: str, event_id: str) -> bool:
    """Record the event as seen; False when it was already (the caller's transaction applies
    it, so a failure to apply leaves it unseen, for the provider's retry)."""
    return conn.execute(_SEEN, {"s": source, "e": event_id}).first() is not None


def prune(engine: Engine, keep_seconds: float) -> int:
    with engine.begin() as conn:
        return int(conn.execute(_PRUNE, {"keep": keep_seconds}).rowcount or 0)
