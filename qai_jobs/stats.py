"""Fleet figures from Postgres, shared by `qai-jobs status` and the metrics endpoint."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def summary(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        workspaces = dict(conn.execute(sa.text("SELECT status, count(*) FROM workspaces GROUP BY status")).all())
        actions = dict(conn.execute(sa.text("SELECT status, count(*) FROM actions GROUP BY status")).all())
        webhooks = dict(conn.execute(sa.text("SELECT status, count(*) FROM webhook_events GROUP BY status")).all())
        oldest = conn.execute(
            sa.text("SELECT extract(epoch FROM now() - min(created_at)) FROM actions WHERE status = 'queued'")
        ).scalar()
    return {
        "workspaces_by_status": {str(k): int(v) for k, v in workspaces.items()},
        "actions_by_status": {str(k): int(v) for k, v in actions.items()},
        "webhooks_by_status": {str(k): int(v) for k, v in webhooks.items()},
        "queued": int(actions.get("queued", 0)),
        "running": int(actions.get("running", 0)),
        "oldest_queued_age_seconds": float(oldest) if oldest is not None else None,
    }
