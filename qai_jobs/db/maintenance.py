"""The sweeps' queries: idle workspaces, pruning old history, which sandboxes are owned."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.db.models import PRUNABLE

_IDLE = sa.text(
    """
    SELECT w.project_id, w.last_activity_at FROM workspaces w
    WHERE w.status IN ('ready', 'error') AND w.sandbox_id IS NOT NULL
      AND w.last_activity_at < now() - make_interval(secs => :idle)
      AND NOT EXISTS (SELECT 1 FROM actions a
                      WHERE a.project_id = w.project_id AND a.status IN ('queued', 'running'))
    ORDER BY w.last_activity_at LIMIT :limit
    """
)


# Through ix_actions_prunable (its predicate, word for word). A sandbox recreated after months
# asleep gets its files from the file record (file_record.py), not from old payloads.
_PRUNE_ACTIONS = sa.text(
    f"""
    DELETE FROM actions WHERE id IN (
        SELECT id FROM actions
        WHERE ({PRUNABLE})
          AND finished_at < now() - make_interval(secs => :keep)
        ORDER BY finished_at
        LIMIT :batch)
    RETURNING kind, status, extract(epoch FROM finished_at - started_at) AS duration
    """
)
# Oldest first through ix_webhook_events_created: a run with nothing due reads a few entries.
_PRUNE_EVENTS = sa.text(
    """
    DELETE FROM webhook_events WHERE id IN (
        SELECT id FROM webhook_events
        WHERE created_at < now() - make_interval(secs => :keep)
          AND status IN ('delivered', 'dead')
        ORDER BY created_at
        LIMIT :batch)
    RETURNING status, attempts
    """
)


# One statement, so one snapshot: read apart, an ensure that commits in between (its sandbox
# recorded, its action finished) would be neither owned nor busy, and its sandbox terminated.
_OWNED_AND_BUSY = sa.text(
    """
    SELECT provider, sandbox_id, NULL AS busy FROM workspaces
    WHERE sandbox_id = ANY(:ids) AND provider IS NOT NULL
    UNION ALL
    SELECT DISTINCT NULL, NULL, project_id FROM actions WHERE status IN ('queued', 'running')
    """
)


def idle_workspaces(engine: Engine, idle_seconds: float, limit: int) -> list[tuple[str, datetime]]:
    """(project_id, last activity) of workspaces with a sandbox, idle that long with nothing
    in flight: ready ones, and those an action left in error (a failed first install, a lost
    sandbox) whose sandbox may still run and bill; their sleep finds out."""
    with engine.connect() as conn:
        rows = conn.execute(_IDLE, {"idle": idle_seconds, "limit": limit}).all()
    return [(str(r.project_id), r.last_activity_at) for r in rows]


def prune_batch(engine: Engine, keep_seconds: float, batch: int) -> tuple[list[Any], list[Any]]:
    """Delete one batch of finished actions and of settled webhook rows older than
    ``keep_seconds``; return what was deleted (for the carried metrics)."""
    params = {"keep": keep_seconds, "batch": batch}
    with engine.begin() as conn:
        actions = conn.execute(_PRUNE_ACTIONS, params).all()
        events = conn.execute(_PRUNE_EVENTS, params).all()
    return list(actions), list(events)


def owned_sandboxes(
    engine: Engine, sandbox_ids: Collection[str]
) -> tuple[set[tuple[str, str]], set[str]]:
    """((provider, sandbox_id) of the workspaces holding one of ``sandbox_ids``, the sandboxes
    a sweep found; projects with work in flight), as of one moment. Only the found ids are
    looked up (ix_workspaces_sandbox), not every workspace."""
    owned: set[tuple[str, str]] = set()
    busy: set[str] = set()
    with engine.connect() as conn:
        for row in conn.execute(_OWNED_AND_BUSY, {"ids": sorted(set(sandbox_ids))}):
            if row.busy is not None:
                busy.add(str(row.busy))
            else:
                owned.add((str(row.provider), str(row.sandbox_id)))
    return owned, busy
