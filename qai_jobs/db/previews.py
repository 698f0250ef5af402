"""The preview gateway's SQL: where a preview id leads, activity, and the wake guard."""

from __future__ import annotations

import sqlalchemy as sa

# A route: the workspace's state, its provider URL, and the sleep that put it to sleep.
_ROUTE = """
    SELECT w.preview_id, w.project_id, w.status, w.preview_url,
           coalesce((w.sandbox ->> 'dev_server_wanted')::boolean, false) AS dev_server_wanted,
           CASE WHEN w.status = 'sleeping' THEN
               (SELECT max(a.seq) FROM actions a WHERE a.project_id = w.project_id
                  AND a.kind = 'sleep' AND a.status = 'succeeded')
           END AS sleep_seq
    FROM workspaces w
"""
ROUTE = sa.text(_ROUTE + "WHERE w.preview_id = :id")
ROUTES = sa.text(_ROUTE + "WHERE w.preview_id = ANY(:ids)")

# One statement per interval for every workspace that had traffic.
TOUCH = sa.text(
    """
    UPDATE workspaces SET last_activity_at = now()
    WHERE project_id = ANY(:ids) AND status <> 'destroyed'
    """
)

# Locks the workspace row, so a wake is never enqueued behind a destroy already on its way.
WAKE_GUARD = sa.text(
    """
    SELECT w.status,
           EXISTS (SELECT 1 FROM actions a WHERE a.project_id = w.project_id
                     AND a.kind = 'destroy' AND a.status IN ('queued', 'running')) AS doomed
    FROM workspaces w WHERE w.project_id = :p FOR UPDATE
    """
)
ACTION_STATUS = sa.text("SELECT status FROM actions WHERE id = :id")
PREVIEW_OF = sa.text("SELECT preview_id, status FROM workspaces WHERE project_id = :p")
