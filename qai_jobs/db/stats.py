"""Fleet figures from Postgres, shared by `qai-jobs status` and the metrics endpoint.

Workers are separate processes (often on separate hosts), so nothing is counted in memory.
Counts by status, outcome and duration are kept in ``fleet_counts`` by triggers, in the
transaction that changes the rows (migration 0009): a scrape sums a few hundred counter rows
instead of scanning history, and costs the same at a thousand actions or ten million. They
mirror the rows on record; history that the prune sweep deleted is carried in Redis (see
``metrics.carry_pruned``) so totals never go backwards.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from qai_jobs.constants import TERMINAL

# Upper bounds (seconds) of the action duration histogram; +Inf is implied. The trigger's
# qai_duration_bucket() uses the same bounds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

_COUNTS = sa.text(
    """
    SELECT metric, kind, label, sum(n)::bigint AS n, sum(total)::float8 AS total
    FROM fleet_counts WHERE metric = ANY(:m) GROUP BY metric, kind, label
    """
)
# Through ix_actions_pending, which holds only unsettled versions: bounded by the backlog, not
# by history.
_OLDEST = sa.text(
    "SELECT extract(epoch FROM now() - min(created_at)) FROM actions WHERE status = 'queued'"
)


def counters(conn: Connection, *metrics: str) -> list[Any]:
    """(metric, kind, label, n, total) summed over shards; counters at zero left out."""
    rows = conn.execute(_COUNTS, {"m": list(metrics)}).all()
    return [r for r in rows if r.n or r.total]


def summary(engine: Engine) -> dict[str, Any]:
    workspaces: dict[str, int] = {}
    actions: dict[str, int] = {}
    webhooks: dict[str, int] = {}
    retried = 0.0
    with engine.connect() as conn:
        for row in counters(conn, "workspace", "action", "webhook"):
            if row.metric == "workspace":
                workspaces[row.label] = workspaces.get(row.label, 0) + int(row.n)
            elif row.metric == "action":
                actions[row.label] = actions.get(row.label, 0) + int(row.n)
            else:
                webhooks[row.label] = webhooks.get(row.label, 0) + int(row.n)
                retried += float(row.total)
        oldest = conn.execute(_OLDEST).scalar()
    return {
        "workspaces_by_status": {k: v for k, v in workspaces.items() if v},
        "actions_by_status": {k: v for k, v in actions.items() if v},
        "webhooks_by_status": {k: v for k, v in webhooks.items() if v},
        "webhook_deliveries": {
            "ok": webhooks.get("delivered", 0),
            "retried": round(retried),
            "dead": webhooks.get("dead", 0),
        },
        "queued": actions.get("queued", 0),
        "running": actions.get("running", 0),
        "oldest_queued_age_seconds": float(oldest) if oldest is not None else None,
    }


def action_outcomes(engine: Engine) -> dict[tuple[str, str], int]:
    """Finished actions still on record, by (kind, status)."""
    with engine.connect() as conn:
        rows = counters(conn, "action")
    return {(str(r.kind), str(r.label)): int(r.n) for r in rows if r.label in TERMINAL and r.n}


def duration_buckets(engine: Engine) -> dict[str, tuple[list[int], float]]:
    """Per kind: non-cumulative counts per bucket (len(DURATION_BUCKETS) + 1, the last is
    +Inf) and the sum of durations, over finished actions still on record."""
    out: dict[str, tuple[list[int], float]] = {}
    with engine.connect() as conn:
        rows = counters(conn, "duration")
    for row in rows:
        counts, total = out.get(row.kind, ([0] * (len(DURATION_BUCKETS) + 1), 0.0))
        counts[bucket_index(int(row.label))] += int(row.n)
        out[row.kind] = (counts, total + float(row.total or 0.0))
    return out


def bucket_index(width_bucket: int) -> int:
    """Postgres ``width_bucket(x, bounds)`` counts the bounds <= x; Prometheus buckets are
    ``x <= bound``. Values exactly on a bound land one bucket up: close enough for a histogram."""
    return min(width_bucket, len(DURATION_BUCKETS))
