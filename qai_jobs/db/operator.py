"""The operator page's reads: every query is bounded (LIMIT, keyset pagination) and served by an
index, so a page costs the same with a hundred action rows or a hundred million.

Keyset rather than OFFSET: an OFFSET page reads and throws away every row before it. Values
that a sandbox or a producer wrote (output, errors, file lists, commands) are cut to a bound
here, in SQL where it saves shipping them, so a hostile workspace cannot make a page large.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from qai_jobs.constants import WorkspaceStatus

PAGE = 50
# What a page shows of one sandbox-written value at most (characters).
OUTPUT_TAIL = 64 * 1024
TEXT_BOUND = 4000
FILES_SHOWN = 200

_WORKSPACE_COLUMNS = """
    w.project_id, w.status, w.provider, w.sandbox_id, w.preview_url, w.last_activity_at,
    w.host_id,
    f.error AS last_error, f.kind AS last_error_kind, f.finished_at AS last_error_at
"""
# The project's most recent failure, through ix_actions_failed.
_LAST_FAILURE = """
    LEFT JOIN LATERAL (
        SELECT a.error, a.kind, a.finished_at FROM actions a
        WHERE a.project_id = w.project_id AND a.status = 'failed'
        ORDER BY a.seq DESC LIMIT 1
    ) f ON true
"""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: str | None  # the cursor of the page after this one; None on the last


def status_counts(conn: Connection) -> dict[str, int]:
    """Workspaces per status (an index-only scan of ix_workspaces_status_activity)."""
    rows = conn.execute(sa.text("SELECT status, count(*) FROM workspaces GROUP BY status"))
    counts = {str(status): 0 for status in WorkspaceStatus}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def workspaces(
    conn: Connection, status: str | None, after: tuple[datetime, str] | None, limit: int = PAGE
) -> Page:
    """Workspaces, most recently active first, optionally of one ``status``."""
    where = ["true"]
    params: dict[str, Any] = {"limit": limit + 1}
    if status is not None:
        where.append("w.status = :status")
        params["status"] = status
    if after is not None:
        where.append("(w.last_activity_at, w.project_id) < (:at, :p)")
        params.update(at=after[0], p=after[1])
    query = (
        f"SELECT {_WORKSPACE_COLUMNS} FROM workspaces w {_LAST_FAILURE} "
        f"WHERE {' AND '.join(where)} "
        "ORDER BY w.last_activity_at DESC, w.project_id DESC LIMIT :limit"
    )
    rows = [_workspace(r) for r in conn.execute(sa.text(query), params)]
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, f"{rows[-1]['last_activity_at'].isoformat()}|{rows[-1]['project_id']}")


def workspace(conn: Connection, project_id: str) -> dict[str, Any] | None:
    query = f"SELECT {_WORKSPACE_COLUMNS} FROM workspaces w {_LAST_FAILURE} WHERE w.project_id = :p"
    row = conn.execute(sa.text(query), {"p": project_id}).first()
    return _workspace(row) if row is not None else None


def _workspace(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["last_error"] = _bounded_error(out["last_error"])
    return out


def timeline(conn: Connection, project_id: str, before_seq: int | None, limit: int = PAGE) -> Page:
    """The project's actions, newest first (uq_actions_project_seq). Results are not read:
    one command's can hold megabytes of output; the action's own page shows it."""
    where = "project_id = :p" + (" AND seq < :before" if before_seq is not None else "")
    query = sa.text(
        f"""SELECT id, seq, kind, status, attempts, error, stage, created_at, started_at,
                   finished_at, next_attempt_at,
                   left(coalesce(payload->>'cmd', (payload->'argv')::text), 200) AS cmd
            FROM actions WHERE {where} ORDER BY seq DESC LIMIT :limit"""
    )
    params = {"p": project_id, "before": before_seq, "limit": limit + 1}
    rows = [dict(r._mapping) for r in conn.execute(query, params)]
    for row in rows:
        row["error"] = _bounded_error(row["error"])
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, str(rows[-1]["seq"]))


_ACTION = sa.text(
    f"""SELECT id, project_id, seq, kind, status, attempts, error, stage, created_at,
               started_at, finished_at, next_attempt_at, worker,
               left(payload->>'cmd', {TEXT_BOUND}) AS cmd,
               left((payload->'argv')::text, {TEXT_BOUND}) AS argv,
               left(payload->>'cwd', {TEXT_BOUND}) AS cwd,
               right(result->>'stdout', {OUTPUT_TAIL}) AS stdout,
               right(result->>'stderr', {OUTPUT_TAIL}) AS stderr,
               right(result->>'text', {OUTPUT_TAIL}) AS text,
               length(result->>'stdout') AS stdout_length,
               length(result->>'stderr') AS stderr_length,
               left((result - 'stdout' - 'stderr' - 'text' - 'files')::text, {TEXT_BOUND})
                   AS result_rest,
               (SELECT jsonb_agg(jsonb_build_object(
                           'path', left(e->>'path', 1000), 'size', e->'size',
                           'encoding', left(e->>'encoding', 16)))
                FROM (SELECT e FROM jsonb_array_elements(
                          CASE WHEN jsonb_typeof(result->'files') = 'array'
                               THEN result->'files' ELSE '[]'::jsonb END) e
                      LIMIT {FILES_SHOWN}) s) AS files
        FROM actions WHERE id = :id"""
)


def action(conn: Connection, action_id: uuid.UUID) -> dict[str, Any] | None:
    """One action for its page: what it ran, and the tail of what it printed."""
    row = conn.execute(_ACTION, {"id": action_id}).first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["error"] = _bounded_error(out["error"])
    return out


def dead_webhooks(conn: Connection, before: tuple[datetime, str] | None, limit: int = PAGE) -> Page:
    """Webhook events that exhausted their retries, newest first (ix_webhook_events_dead)."""
    where = "status = 'dead'" + (" AND (created_at, id) < (:at, :id)" if before else "")
    query = sa.text(
        f"""SELECT id, project_id, action_id, type, sequence, target, attempts, created_at,
                   next_attempt_at, left(last_error, {TEXT_BOUND}) AS last_error
            FROM webhook_events WHERE {where} ORDER BY created_at DESC, id DESC LIMIT :limit"""
    )
    params: dict[str, Any] = {"limit": limit + 1}
    if before:
        params.update(at=before[0], id=before[1])
    rows = [dict(r._mapping) for r in conn.execute(query, params)]
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, f"{rows[-1]['created_at'].isoformat()}|{rows[-1]['id']}")


def webhook(conn: Connection, event_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.text(
            f"""SELECT id, project_id, action_id, type, sequence, target, attempts, created_at,
                       next_attempt_at, left(last_error, {TEXT_BOUND}) AS last_error
                FROM webhook_events WHERE id = :id"""
        ),
        {"id": event_id},
    ).first()
    return dict(row._mapping) if row is not None else None


def _bounded_error(error: Any) -> dict[str, Any] | None:
    """An error as stored, cut to size: its message may quote what a sandbox printed."""
    if not isinstance(error, dict):
        return None
    return {
        "code": str(error.get("code", ""))[:200],
        "message": str(error.get("message", ""))[:TEXT_BOUND],
        "retryable": bool(error.get("retryable", False)),
    }
