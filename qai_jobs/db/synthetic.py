"""Synthetic history for the bench: months of finished work, generated inside Postgres.

Rows are made by ``INSERT ... SELECT`` over ``generate_series`` so nothing crosses the wire;
a few million rows take seconds, not the hours one enqueue at a time would. The shape follows
what a fleet leaves behind: a hundred actions per workspace (an ensure first, then writes,
commands and reads, a few failures and cancellations, the last one a sleep or a destroy), one
webhook event per action, snapshots, and the synced-files manifest. Every row is older than a
day and all but about 1 % younger than the 30-day default retention, so pruning has a little
to delete and much to keep.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

PREFIX = "hist-"
PER_WORKSPACE = 100
FILES_PER_WORKSPACE = 10
SNAPSHOTS_PER_WORKSPACE = 3

# Workspace w's history starts at its own age, so activity spreads over the retention window;
# one in a hundred workspaces is past it (w % 100 = 7).
_AGE = """(CASE WHEN w % 100 = 7 THEN 45.0 ELSE 1.0 + ((w::bigint * 7919) % 28000) / 1000.0 END)"""
_PROJECT = f"'{PREFIX}' || lpad(w::text, 8, '0')"
# status per workspace: 1 in 20 destroyed, 1 in 5 ready (with a sandbox), the rest asleep.
_WS_STATUS = (
    "(CASE WHEN w % 20 = 0 THEN 'destroyed' WHEN w % 5 = 1 THEN 'ready' ELSE 'sleeping' END)"
)

_WORKSPACES = sa.text(
    f"""
    INSERT INTO workspaces (project_id, id, status, provider, sandbox_id, last_snapshot_id,
                            manifest_seq, next_seq, event_seq, last_activity_at, created_at,
                            updated_at)
    SELECT {_PROJECT}, gen_random_uuid(), st, 'fake',
           CASE WHEN st = 'ready' THEN 'fake-hist-' || w END,
           CASE WHEN st = 'sleeping' THEN 'snap-hist-' || w || '-0' END,
           CASE WHEN st <> 'destroyed' THEN 1 END,
           n, n,
           t0 + make_interval(secs => n * 30), t0, t0 + make_interval(secs => n * 30)
    FROM generate_series(CAST(:w0 AS bigint), CAST(:w1 AS bigint) - 1) w,
         LATERAL (SELECT {_WS_STATUS} AS st,
                         least(:per, :total - w * :per) AS n,
                         now() - interval '1 day' * {_AGE} AS t0) x
    """
)

# Action i belongs to workspace i / 100 with seq i % 100 + 1, every 30 s from the workspace's
# start; durations spread over 0-10 s so every histogram bucket up to 10 s gets some.
_ACTIONS = sa.text(
    f"""
    INSERT INTO actions (id, project_id, seq, kind, payload, status, attempts, result, error,
                         created_at, started_at, finished_at, worker, lease_gen)
    SELECT gen_random_uuid(), {_PROJECT}, s, kind,
           CASE kind WHEN 'command' THEN '{{"cmd": "npm test"}}'::jsonb
                     WHEN 'write' THEN jsonb_build_object('files', jsonb_build_array(
                         jsonb_build_object('path', 'src/f' || (s % 10) || '.ts',
                                            'content', 'export const v = ' || s || ';')))
                     WHEN 'read' THEN '{{"paths": ["package.json"]}}'::jsonb
                     ELSE '{{}}'::jsonb END,
           st, 1,
           CASE WHEN st = 'succeeded' THEN '{{"exit_code": 0, "stdout": "ok\\n"}}'::jsonb END,
           CASE WHEN st = 'failed'
                THEN '{{"code": "command_failed", "message": "exit 1", "retryable": false}}'::jsonb
           END,
           t, t + interval '10 ms',
           t + interval '10 ms' + make_interval(secs => ((w * 17 + s * 13) % 1000) / 100.0),
           'bench-history', 1
    FROM generate_series(CAST(:a0 AS bigint), CAST(:a1 AS bigint) - 1) i,
         LATERAL (SELECT i / :per AS w, i % :per + 1 AS s) ws,
         LATERAL (SELECT
             CASE WHEN s = 1 THEN 'ensure'
                  WHEN s = least(:per, :total - w * :per) AND {_WS_STATUS} = 'destroyed'
                      THEN 'destroy'
                  WHEN s = least(:per, :total - w * :per) AND {_WS_STATUS} = 'sleeping'
                      THEN 'sleep'
                  WHEN s % 10 = 0 THEN 'read'
                  WHEN s % 3 = 0 THEN 'write'
                  ELSE 'command' END AS kind,
             CASE WHEN s > 1 AND (w * 31 + s) % 50 = 0 THEN 'failed'
                  WHEN s > 1 AND (w * 31 + s) % 97 = 0 THEN 'cancelled'
                  ELSE 'succeeded' END AS st,
             now() - interval '1 day' * {_AGE} + make_interval(secs => s * 30) AS t
         ) k
    """
)

# One outbox row per action: the workspace event it decided, all delivered but 1 in 1000.
_WEBHOOKS = sa.text(
    """
    INSERT INTO webhook_events (id, project_id, action_id, type, sequence, target, body, status,
                                attempts, next_attempt_at, last_error, created_at, delivered_at)
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), a.project_id, a.id,
           CASE a.status WHEN 'failed' THEN 'workspace.error' ELSE 'workspace.ready' END,
           a.seq, 'http://127.0.0.1:9/hook',
           json_build_object('type', 'workspace.ready', 'timestamp', a.finished_at,
                             'data', json_build_object('project_id', a.project_id,
                                                       'action_id', a.id,
                                                       'sequence', a.seq))::text,
           CASE WHEN dead THEN 'dead' ELSE 'delivered' END,
           CASE WHEN dead THEN 8 WHEN a.seq % 7 = 0 THEN 2 ELSE 1 END,
           a.finished_at,
           CASE WHEN dead THEN 'connection refused' END,
           a.finished_at, CASE WHEN NOT dead THEN a.finished_at END
    FROM actions a,
         LATERAL (SELECT a.seq = 50 AND right(a.project_id, 1) = '3' AS dead) d
    WHERE a.project_id >= :p0 AND a.project_id < :p1
    """
)

_SNAPSHOTS = sa.text(
    f"""
    INSERT INTO snapshots (id, project_id, provider, kind, manifest, created_at)
    SELECT 'snap-hist-' || w || '-' || k, {_PROJECT}, 'fake',
           CASE WHEN k = 0 THEN 'sleep' ELSE 'snapshot' END, '{{}}'::jsonb,
           now() - interval '1 day' * {_AGE} + make_interval(mins => 40 - k * 10)
    FROM generate_series(CAST(:w0 AS bigint), CAST(:w1 AS bigint) - 1) w,
         generate_series(0, {SNAPSHOTS_PER_WORKSPACE - 1}) k
    """
)

_FILES = sa.text(
    f"""
    INSERT INTO workspace_files (project_id, path, sha256)
    SELECT {_PROJECT}, 'src/f' || f || '.ts', md5(w || '/' || f) || md5(f || '/' || w)
    FROM generate_series(CAST(:w0 AS bigint), CAST(:w1 AS bigint) - 1) w,
         generate_series(0, {FILES_PER_WORKSPACE - 1}) f
    WHERE {_WS_STATUS} <> 'destroyed'
    """
)


def workspaces_for(actions: int) -> int:
    return -(-actions // PER_WORKSPACE)


def load_chunk(conn: Connection, w0: int, w1: int, total_actions: int) -> None:
    """Workspaces ``[w0, w1)`` with their actions, webhook events, snapshots and files."""
    a0, a1 = w0 * PER_WORKSPACE, min(w1 * PER_WORKSPACE, total_actions)
    common = {"per": PER_WORKSPACE, "total": total_actions}
    conn.execute(_WORKSPACES, {"w0": w0, "w1": w1, **common})
    conn.execute(_ACTIONS, {"a0": a0, "a1": a1, **common})
    conn.execute(
        _WEBHOOKS,
        {"p0": f"{PREFIX}{w0:08d}", "p1": f"{PREFIX}{w1:08d}"},
    )
    conn.execute(_SNAPSHOTS, {"w0": w0, "w1": w1})
    conn.execute(_FILES, {"w0": w0, "w1": w1})


# Every table a workspace's history fills, the file record's content included (workspace_files
# references file_blobs, so TRUNCATE must name both).
_CLEAR = (
    "TRUNCATE actions, snapshots, webhook_events, workspace_files, file_blobs,"
    " workspace_deletions, workspaces"
)


def clear(conn: Connection) -> None:
    """Forget every row the bench's database holds (it never holds real workspaces)."""
    conn.execute(sa.text(_CLEAR))


def analyze(conn: Connection) -> None:
    """Fresh planner statistics: a bulk load leaves them far behind."""
    for table in ("workspaces", "actions", "webhook_events", "snapshots", "workspace_files"):
        conn.execute(sa.text(f"ANALYZE {table}"))


def counts(conn: Connection) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in ("workspaces", "actions", "webhook_events", "snapshots", "workspace_files"):
        out[table] = int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    return out
