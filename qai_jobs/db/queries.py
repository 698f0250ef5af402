"""The read side: actions and workspaces as the clients, the API and the CLI show them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_ACTION_COLUMNS = (
    "id, project_id, kind, status, attempts, result, error, stage, created_at, started_at, "
    "finished_at, seq, next_attempt_at"
)
_ACTION = sa.text(f"SELECT {_ACTION_COLUMNS} FROM actions WHERE id = :id")
_WORKSPACE = sa.text(
    """SELECT w.project_id, w.id, w.preview_id, w.status, w.provider, w.sandbox_id,
              w.preview_url, w.port, w.last_snapshot_id, w.last_activity_at,
              w.created_at, w.updated_at, w.repo, w.host_id,
              (SELECT count(*) FROM actions a WHERE a.project_id = w.project_id
                 AND a.status IN ('queued', 'running')) AS pending
       FROM workspaces w WHERE w.project_id = :p"""
)
_PROJECTS = sa.text("SELECT project_id FROM workspaces ORDER BY project_id LIMIT :l")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def action_row_to_dict(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "project_id": row.project_id,
        "kind": row.kind,
        "status": row.status,
        "attempts": row.attempts,
        "result": row.result,
        "error": row.error,
        "stage": row.stage,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "seq": row.seq,
        "next_attempt_at": iso(row.next_attempt_at),
    }


def action(conn: Connection, action_id: uuid.UUID) -> dict[str, Any] | None:
    row = conn.execute(_ACTION, {"id": action_id}).first()
    return action_row_to_dict(row) if row is not None else None


def actions(
    conn: Connection, project_id: str, limit: int = 100, status: str | None = None
) -> list[dict[str, Any]]:
    """The project's newest ``limit`` actions (of ``status``), oldest first."""
    query = f"SELECT {_ACTION_COLUMNS} FROM actions WHERE project_id = :p"
    params: dict[str, Any] = {"p": project_id, "limit": limit}
    if status:
        query += " AND status = :status"
        params["status"] = status
    query += " ORDER BY seq DESC LIMIT :limit"
    rows = conn.execute(sa.text(query), params).all()
    return [action_row_to_dict(r) for r in reversed(rows)]


def workspace(conn: Connection, project_id: str) -> dict[str, Any] | None:
    row = conn.execute(_WORKSPACE, {"p": project_id}).first()
    if row is None:
        return None
    return {
        "project_id": row.project_id,
        "workspace_id": str(row.id),
        "status": row.status,
        "provider": row.provider,
        "sandbox_id": row.sandbox_id,
        "preview_url": row.preview_url,
        "preview_id": row.preview_id,
        "port": row.port,
        "host_id": row.host_id if row.provider in (None, "local") else None,
        "last_snapshot_id": row.last_snapshot_id,
        "last_activity_at": iso(row.last_activity_at),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "repo": row.repo,
        "pending_actions": row.pending,
    }


def project_ids(conn: Connection, limit: int = 1000) -> list[str]:
    return [str(p) for p in conn.execute(_PROJECTS, {"l": limit}).scalars()]
