"""Fleet figures from Postgres, shared by `qai-jobs status` and the metrics endpoint.

Workers are separate processes (often on separate hosts), so nothing is counted in memory:
every figure is read from the rows at the moment it is asked for. History that the prune sweep
deleted is carried in Redis (see ``metrics.carry_pruned``) so totals never go backwards.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.constants import TERMINAL

# Upper bounds (seconds) of the action duration histogram; +Inf is implied.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

_DURATIONS = sa.text(
    """
    SELECT kind, width_bucket(extract(epoch FROM finished_at - started_at)::float8, :bounds) AS b,
           count(*) AS n, sum(extract(epoch FROM finished_at - started_at))::float8 AS s
    FROM actions
    WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL AND finished_at IS NOT NULL
    GROUP BY kind, b
    """
)
# Every attempt but the last of a settled row failed and was retried; a pending row's attempts
# all failed (or one is in flight).
_DELIVERIES = sa.text(
    """
    SELECT count(*) FILTER (WHERE status = 'delivered') AS ok,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           coalesce(sum(CASE WHEN status = 'pending' THEN attempts
                             ELSE greatest(attempts - 1, 0) END), 0) AS retried
    FROM webhook_events
    """
)


def summary(engine: Engine) -> dict[str, Any]:
    workspaces: dict[Any, Any]
    actions: dict[Any, Any]
    webhooks: dict[Any, Any]
    with engine.connect() as conn:
        workspaces = dict(
            conn.execute(sa.text("SELECT status, count(*) FROM workspaces GROUP BY status")).all()
        )
        actions = dict(
            conn.execute(sa.text("SELECT status, count(*) FROM actions GROUP BY status")).all()
        )
        webhooks = dict(
            conn.execute(
                sa.text("SELECT status, count(*) FROM webhook_events GROUP BY status")
            ).all()
        )
        oldest = conn.execute(
            sa.text(
                "SELECT extract(epoch FROM now() - min(created_at)) FROM actions "
                "WHERE status = 'queued'"
            )
        ).scalar()
        deliveries = conn.execute(_DELIVERIES).one()
    return {
        "workspaces_by_status": {str(k): int(v) for k, v in workspaces.items()},
        "actions_by_status": {str(k): int(v) for k, v in actions.items()},
        "webhooks_by_status": {str(k): int(v) for k, v in webhooks.items()},
        "webhook_deliveries": {
            "ok": int(deliveries.ok),
            "retried": int(deliveries.retried),
            "dead": int(deliveries.dead),
        },
        "queued": int(actions.get("queued", 0)),
        "running": int(actions.get("running", 0)),
        "oldest_queued_age_seconds": float(oldest) if oldest is not None else None,
    }


def action_outcomes(engine: Engine) -> dict[tuple[str, str], int]:
    """Finished actions still on record, by (kind, status)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT kind, status, count(*) FROM actions "
                "WHERE status = ANY(:s) GROUP BY kind, status"
            ),
            {"s": sorted(TERMINAL)},
        ).all()
    return {(str(k), str(s)): int(n) for k, s, n in rows}


def duration_buckets(engine: Engine) -> dict[str, tuple[list[int], float]]:
    """Per kind: non-cumulative counts per bucket (len(DURATION_BUCKETS) + 1, the last is
    +Inf) and the sum of durations, over finished actions still on record."""
    out: dict[str, tuple[list[int], float]] = {}
    with engine.connect() as conn:
        for row in conn.execute(_DURATIONS, {"bounds": [float(b) for b in DURATION_BUCKETS]}):
            counts, total = out.get(row.kind, ([0] * (len(DURATION_BUCKETS) + 1), 0.0))
            counts[bucket_index(int(row.b))] += int(row.n)
            out[row.kind] = (counts, total + float(row.s or 0.0))
    return out


def bucket_index(width_bucket: int) -> int:
    """Postgres ``width_bucket(x, bounds)`` counts the bounds <= x; Prometheus buckets are
    ``x <= bound``. Values exactly on a bound land one bucket up: close enough for a histogram."""
    return min(width_bucket, len(DURATION_BUCKETS))
