"""The operator page's queries against real Postgres: keyset pages visit every row once, each
query is served by an index (the plan has no sequential scan when the planner is told to
avoid one), sandbox-written values come back cut to size, and the hosts hook comes alive
once the schema has hosts."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from qai_jobs.db import hosts, operator
from qai_jobs.db.migrate import migrate
from tests.support import services

BASE = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.Engine]:
    url = services.create_database()
    migrate(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
        services.drop_database(url)


def _workspace(conn: sa.Connection, project: str, status: str, at: datetime) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO workspaces (project_id, id, status, provider, last_activity_at) "
            "VALUES (:p, :id, :s, 'fake', :at)"
        ),
        {"p": project, "id": uuid.uuid4(), "s": status, "at": at},
    )


def _action(conn: sa.Connection, project: str, seq: int, **columns: Any) -> uuid.UUID:
    action_id = uuid.uuid4()
    values = {"kind": "command", "status": "succeeded", "payload": {"cmd": f"echo {seq}"}}
    values.update(columns)
    conn.execute(
        sa.text(
            "INSERT INTO actions (id, project_id, seq, kind, status, payload, result, error, "
            "finished_at) VALUES (:id, :p, :seq, :kind, :status, CAST(:payload AS jsonb), "
            "CAST(:result AS jsonb), CAST(:error AS jsonb), now())"
        ),
        {
            "id": action_id,
            "p": project,
            "seq": seq,
            "kind": values["kind"],
            "status": values["status"],
            "payload": json.dumps(values["payload"]),
            "result": json.dumps(values.get("result")),
            "error": json.dumps(values.get("error")),
        },
    )
    return action_id


def _all_pages(fetch: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = fetch(cursor)
        rows += page.rows
        if page.next is None:
            return rows
        cursor = page.next
    raise AssertionError("pagination never ended")


def test_keyset_pages_visit_every_workspace_once(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for i in range(130):
            # Pairs share a timestamp: the project id breaks the tie.
            _workspace(conn, f"ks-{i:03d}", "ready" if i % 3 else "error", BASE + timedelta(i // 2))
        _action(conn, "ks-005", 1, status="failed", error={"code": "boom", "message": "x" * 9000})
        _action(conn, "ks-005", 2)

    def fetch(status: str | None) -> Any:
        def one(cursor: str | None) -> operator.Page:
            after = None
            if cursor:
                stamp, _, key = cursor.partition("|")
                after = (datetime.fromisoformat(stamp), key)
            with engine.connect() as conn:
                return operator.workspaces(conn, status, after, limit=17)

        return one

    every = _all_pages(fetch(None))
    assert [r["project_id"] for r in every] == [f"ks-{i:03d}" for i in reversed(range(130))]
    errors = _all_pages(fetch("error"))
    assert {r["project_id"] for r in errors} == {f"ks-{i:03d}" for i in range(0, 130, 3)}
    failing = next(r for r in every if r["project_id"] == "ks-005")
    # The last failure shows even after a later success, cut to size.
    assert failing["last_error"]["code"] == "boom"
    assert len(failing["last_error"]["message"]) == operator.TEXT_BOUND
    assert failing["host_id"] is None
    with engine.connect() as conn:
        counts = operator.status_counts(conn)
    assert counts["error"] == 44 and counts["ready"] == 86 and counts["sleeping"] == 0


def test_timeline_pages_and_bounded_action(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _workspace(conn, "tl", "ready", BASE)
        for seq in range(1, 121):
            _action(conn, "tl", seq)
        big = _action(
            conn,
            "tl",
            121,
            payload={"cmd": "y" * 10_000},
            result={"stdout": "o" * (1 << 20), "stderr": "e", "exit_code": 0},
        )
        files = [
            {"path": f"f{i}", "content": "c" * 100, "encoding": "utf-8", "size": 100}
            for i in range(300)
        ]
        read = _action(conn, "tl", 122, kind="read", result={"files": files, "missing": []})

    def fetch(cursor: str | None) -> operator.Page:
        with engine.connect() as conn:
            return operator.timeline(conn, "tl", int(cursor) if cursor else None, limit=25)

    seqs = [r["seq"] for r in _all_pages(fetch)]
    assert seqs == list(range(122, 0, -1))
    with engine.connect() as conn:
        shown = operator.action(conn, big)
        listed = operator.action(conn, read)
    assert shown is not None and listed is not None
    assert len(shown["stdout"]) == operator.OUTPUT_TAIL and shown["stdout_length"] == 1 << 20
    assert len(shown["cmd"]) == operator.TEXT_BOUND
    assert json.loads(shown["result_rest"]) == {"exit_code": 0}
    assert len(listed["files"]) == operator.FILES_SHOWN
    assert "content" not in listed["files"][0] and listed["files"][0]["size"] == 100


def test_every_query_has_an_index(engine: sa.Engine) -> None:
    """With sequential scans priced out, a plan still holding one has no index to use."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "to_regclass" not in statement:
            statements.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.connect() as conn:
            at = (BASE, "ks-050")
            operator.workspaces(conn, None, at)
            operator.workspaces(conn, "ready", at)
            operator.workspace(conn, "ks-005")
            operator.timeline(conn, "tl", 50)
            operator.dead_webhooks(conn, (BASE, "msg_00"))
            operator.status_counts(conn)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 6
    # The index each query is for (the last failure's lookup must not walk the successes).
    expected = [
        {"ix_workspaces_activity", "ix_actions_failed"},
        {"ix_workspaces_status_activity", "ix_actions_failed"},
        {"pk_workspaces", "ix_actions_failed"},
        {"uq_actions_project_seq"},
        {"ix_webhook_events_dead"},
        {"ix_workspaces_status_activity"},
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for (statement, params), indexes in zip(statements, expected, strict=True):
            plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params).scalar_one()
            text = json.dumps(plan)
            assert "Seq Scan" not in text, (statement, plan)
            used = set(re.findall(r'"Index Name": "([a-z_]+)"', text))
            assert indexes <= used, (statement, used)


def test_the_operator_page_lists_hosts_and_each_workspace_s_host() -> None:
    url = services.create_database()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        migrate(url)
        with engine.begin() as conn:
            hosts.report(conn, "h1", "10.0.0.1", 4, fresh=True)
            hosts.report(conn, "h2", "10.0.0.2", 4, fresh=True)
            _workspace(conn, "on-h2", "ready", BASE)
            conn.execute(sa.text("UPDATE workspaces SET host_id = 'h2'"))
            listed = hosts.list_hosts(conn, 60)
            shown = operator.workspace(conn, "on-h2")
        assert [(h["host_id"], h["alive"], h["workspaces"]) for h in listed] == [
            ("h1", True, 0),
            ("h2", True, 1),
        ]
        assert shown is not None and shown["host_id"] == "h2"
    finally:
        engine.dispose()
        services.drop_database(url)


def test_running_and_oldest_queued_lookups_read_only_such_actions(engine: sa.Engine) -> None:
    """A project's running actions (the grant, recovery) and the metrics' oldest queued one come
    from indexes of just those versions, not a walk of every project's queued (or every)
    action."""
    from qai_jobs.db import ordering, recovery, stats

    grant = {
        "p": "ks-005",
        "o": "me",
        "turn": None,
        "ttl": 30.0,
        "idem": ["write"],
        "error": "{}",
        "max": 5,
        "dead": 30.0,
    }
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, params, index in (
            (recovery._STALE_RUNNING_ONLY, {"limit": 1000}, "ix_actions_running"),
            (ordering._ACQUIRE, grant, "ix_actions_running"),
            (stats._OLDEST, {}, "ix_actions_pending"),
        ):
            compiled = statement.compile(engine)
            plan = conn.exec_driver_sql(
                f"EXPLAIN (FORMAT JSON) {compiled}", compiled.construct_params(params)
            ).scalar_one()
            used = set(re.findall(r'"Index Name": "([a-z_]+)"', json.dumps(plan)))
            assert index in used, (str(statement), used)
