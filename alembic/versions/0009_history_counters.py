"""counters kept as work happens, and the indexes that keep operator queries flat with history

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Counters by (metric, kind, label), summed over shards. A writer takes a shard nobody else
# holds in its transaction (a transaction-scoped advisory lock, tried, never waited for), so
# concurrent settles never queue behind one counter row, and cannot deadlock on them.
# metric: action (kind, status) | duration (kind, bucket; total = seconds) |
#         webhook ('', status; total = retried attempts) | workspace ('', status)
SHARD = """
CREATE FUNCTION qai_counter_shard() RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
    s smallint;
BEGIN
    FOR i IN 0..15 LOOP
        s := (pg_backend_pid() + i) % 16;
        IF pg_try_advisory_xact_lock(7171001, s) THEN
            RETURN s;
        END IF;
    END LOOP;
    RETURN pg_backend_pid() % 16;
END $$
"""
# Prometheus buckets are x <= bound; width_bucket counts bounds <= x (close enough, and what
# the prune sweep's carried totals use too).
BUCKET = """
CREATE FUNCTION qai_duration_bucket(started timestamptz, finished timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT least(width_bucket(extract(epoch FROM finished - started)::float8,
        ARRAY[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]::float8[]),
        15)::text
$$
"""
# Each table's rows, as counter deltas (sign +1 for inserted rows, -1 for deleted ones).
ACTION_ROWS = """
    SELECT 'action' AS m, kind AS k, status AS l, count(*) AS n, 0::float8 AS t
    FROM {rows} GROUP BY kind, status
    UNION ALL
    SELECT 'duration', kind, qai_duration_bucket(started_at, finished_at), count(*),
           sum(extract(epoch FROM finished_at - started_at))::float8
    FROM {rows}
    WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL AND finished_at IS NOT NULL
    GROUP BY kind, qai_duration_bucket(started_at, finished_at)
"""
WEBHOOK_ROWS = """
    SELECT 'webhook' AS m, '' AS k, status AS l, count(*) AS n,
           sum(CASE WHEN status = 'pending' THEN attempts
                    ELSE greatest(attempts - 1, 0) END)::float8 AS t
    FROM {rows} GROUP BY status
"""
WORKSPACE_ROWS = """
    SELECT 'workspace' AS m, '' AS k, status AS l, count(*) AS n, 0::float8 AS t
    FROM {rows} GROUP BY status
"""
TABLES = {"actions": ACTION_ROWS, "webhook_events": WEBHOOK_ROWS, "workspaces": WORKSPACE_ROWS}
METRICS = {
    "actions": "'action', 'duration'",
    "webhook_events": "'webhook'",
    "workspaces": "'workspace'",
}
# What changes a counter when a row is updated (anything else, heartbeats and progress, costs
# the WHEN test alone).
WATCHED = {
    "actions": ("status", "kind", "started_at", "finished_at"),
    "webhook_events": ("status", "attempts"),
    "workspaces": ("status",),
}


def _statement_function(table: str, op_name: str, rows: str, sign: int) -> str:
    body = TABLES[table].format(rows=rows)
    return f"""
CREATE FUNCTION qai_count_{table}_{op_name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet_counts (metric, kind, label, shard, n, total)
    SELECT m, k, l, qai_counter_shard(), sum(n) * {sign}, sum(t) * {sign}
    FROM ({body}) d GROUP BY m, k, l
    ON CONFLICT (metric, kind, label, shard)
    DO UPDATE SET n = fleet_counts.n + excluded.n, total = fleet_counts.total + excluded.total;
    RETURN NULL;
END $$
"""


def _update_function(table: str) -> str:
    body = TABLES[table]
    old, new = body.format(rows="(SELECT OLD.*) o"), body.format(rows="(SELECT NEW.*) o")
    # One statement (plpgsql keeps its plan): the row's old contribution out, its new one in,
    # merged per counter so a change within one counter is a single update.
    return f"""
CREATE FUNCTION qai_count_{table}_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet_counts (metric, kind, label, shard, n, total)
    SELECT m, k, l, qai_counter_shard(), sum(n), sum(t)
    FROM (SELECT m, k, l, -n AS n, -t AS t FROM ({old}) o
          UNION ALL SELECT m, k, l, n, t FROM ({new}) n) d
    GROUP BY m, k, l HAVING sum(n) <> 0 OR sum(t) <> 0
    ON CONFLICT (metric, kind, label, shard)
    DO UPDATE SET n = fleet_counts.n + excluded.n, total = fleet_counts.total + excluded.total;
    RETURN NULL;
END $$
"""


def _install() -> list[str]:
    out = [SHARD, BUCKET]
    for table, watched in WATCHED.items():
        out.append(_statement_function(table, "insert", "new_rows", 1))
        out.append(_statement_function(table, "delete", "old_rows", -1))
        out.append(_update_function(table))
        out.append(
            f"""CREATE FUNCTION qai_count_{table}_truncate() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN DELETE FROM fleet_counts WHERE metric IN ({METRICS[table]});
            RETURN NULL; END $$"""
        )
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in watched)
        out += [
            f"CREATE TRIGGER qai_count_insert AFTER INSERT ON {table} "
            f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION qai_count_{table}_insert()",
            f"CREATE TRIGGER qai_count_delete AFTER DELETE ON {table} "
            f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION qai_count_{table}_delete()",
            f"CREATE TRIGGER qai_count_update AFTER UPDATE OF {', '.join(watched)} ON {table} "
            f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION qai_count_{table}_update()",
            f"CREATE TRIGGER qai_count_truncate AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION qai_count_{table}_truncate()",
        ]
    return out


INSTALL_SQL = _install()
INITIAL_COUNTS = (
    "INSERT INTO fleet_counts (metric, kind, label, shard, n, total) "
    "SELECT m, k, l, 0, n, coalesce(t, 0) FROM ("
    + " UNION ALL ".join(body.format(rows=table) for table, body in TABLES.items())
    + ") d"
)
DROP_SQL = [
    *(
        f"DROP TRIGGER IF EXISTS qai_count_{op_name} ON {table}"
        for table in TABLES
        for op_name in ("insert", "delete", "update", "truncate")
    ),
    *(
        f"DROP FUNCTION IF EXISTS qai_count_{table}_{op_name}()"
        for table in TABLES
        for op_name in ("insert", "delete", "update", "truncate")
    ),
    "DROP FUNCTION IF EXISTS qai_duration_bucket(timestamptz, timestamptz)",
    "DROP FUNCTION IF EXISTS qai_counter_shard()",
]


def upgrade() -> None:
    op.create_table(
        "fleet_counts",
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total", sa.Float(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("metric", "kind", "label", "shard", name=op.f("pk_fleet_counts")),
    )
    op.create_index(
        "ix_webhook_events_created", "webhook_events", ["created_at", "id"], unique=False
    )
    op.create_index(
        "ix_actions_prunable",
        "actions",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text(
            "status IN ('failed', 'cancelled') "
            "OR (status = 'succeeded' AND kind NOT IN ('ensure', 'write', 'destroy'))"
        ),
    )
    op.create_index("ix_workspaces_sandbox", "workspaces", ["sandbox_id"], unique=False)
    for statement in INSTALL_SQL:
        op.execute(statement)
    # Start from what the rows say now; writers wait (SHARE) so none is counted twice or lost.
    op.execute("LOCK TABLE actions, webhook_events, workspaces IN SHARE MODE")
    op.execute(INITIAL_COUNTS)


def downgrade() -> None:
    for statement in DROP_SQL:
        op.execute(statement)
    op.drop_index("ix_workspaces_sandbox", table_name="workspaces")
    op.drop_index("ix_actions_prunable", table_name="actions")
    op.drop_index("ix_webhook_events_created", table_name="webhook_events")
    op.drop_table("fleet_counts")
