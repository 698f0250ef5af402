"""Operator figures at any amount of history: counters kept as rows change equal a direct count
of the rows, through inserts, settles, concurrent writers and the prune sweep; the webhook list
pages through every row once; pruning deletes old history but never what a rebuild replays."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa

from qai_jobs.db import maintenance, outbox, stats, synthetic
from qai_jobs.db.session import engine_for
from tests.support.procs import QAI, REPO

N_ACTIONS = 50_000
KEEP = 30 * 86400

# The figures as the rows say them, the way they were counted before counters existed.
_DIRECT_DURATIONS = sa.text(
    """
    SELECT kind, least(width_bucket(extract(epoch FROM finished_at - started_at)::float8,
                                    CAST(:bounds AS float8[])), 15) AS b,
           count(*) AS n, sum(extract(epoch FROM finished_at - started_at))::float8 AS s
    FROM actions
    WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL AND finished_at IS NOT NULL
    GROUP BY 1, 2
    """
)


def direct(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:

        def grouped(sql: str) -> dict[Any, int]:
            return {
                tuple(r[:-1]) if len(r) > 2 else r[0]: int(r[-1])
                for r in conn.execute(sa.text(sql))
            }

        durations: dict[str, tuple[list[int], float]] = {}
        bounds = [float(b) for b in stats.DURATION_BUCKETS]
        for row in conn.execute(_DIRECT_DURATIONS, {"bounds": bounds}):
            counts, total = durations.get(row.kind, ([0] * 16, 0.0))
            counts[int(row.b)] += int(row.n)
            durations[row.kind] = (counts, total + float(row.s))
        retried = conn.execute(
            sa.text(
                "SELECT coalesce(sum(CASE WHEN status = 'pending' THEN attempts "
                "ELSE greatest(attempts - 1, 0) END), 0) FROM webhook_events"
            )
        ).scalar_one()
        return {
            "workspaces": grouped("SELECT status, count(*) FROM workspaces GROUP BY 1"),
            "actions": grouped("SELECT status, count(*) FROM actions GROUP BY 1"),
            "webhooks": grouped("SELECT status, count(*) FROM webhook_events GROUP BY 1"),
            "outcomes": grouped(
                "SELECT kind, status, count(*) FROM actions "
                "WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2"
            ),
            "durations": durations,
            "retried": int(retried),
        }


def assert_counters_match(engine: sa.Engine) -> None:
    want = direct(engine)
    summary = stats.summary(engine)
    assert summary["workspaces_by_status"] == want["workspaces"]
    assert summary["actions_by_status"] == want["actions"]
    assert summary["webhooks_by_status"] == want["webhooks"]
    assert summary["webhook_deliveries"]["retried"] == want["retried"]
    assert stats.action_outcomes(engine) == want["outcomes"]
    got = stats.duration_buckets(engine)
    assert {k: c for k, (c, _) in got.items()} == {k: c for k, (c, _) in want["durations"].items()}
    for kind, (_, total) in want["durations"].items():
        assert got[kind][1] == pytest.approx(total, rel=1e-9)


def test_counters_pagination_and_prune_over_synthetic_history(
    isolated_env: dict[str, str],
) -> None:
    engine = engine_for(isolated_env["DATABASE_URL"])
    workspaces = synthetic.workspaces_for(N_ACTIONS)
    with engine.begin() as conn:
        synthetic.load_chunk(conn, 0, workspaces // 2, N_ACTIONS)
    with engine.begin() as conn:
        synthetic.load_chunk(conn, workspaces // 2, workspaces, N_ACTIONS)
    assert_counters_match(engine)

    # Work happening: an enqueue, a start, a finish, a retry, a delivery attempt, a workspace
    # going to sleep; and a heartbeat, which changes no counter.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO actions (id, project_id, seq, kind) "
                "SELECT gen_random_uuid(), project_id, 1000 + g, 'command' "
                "FROM workspaces, generate_series(1, 3) g WHERE project_id < 'hist-00000010'"
            )
        )
        conn.execute(
            sa.text(
                "UPDATE actions SET status = 'running', started_at = now() "
                "WHERE seq = 1001 AND project_id < 'hist-00000010'"
            )
        )
        conn.execute(
            sa.text(
                "UPDATE actions SET status = 'succeeded', finished_at = started_at + "
                "interval '2 s' WHERE seq = 1001 AND project_id < 'hist-00000005'"
            )
        )
        conn.execute(sa.text("UPDATE actions SET heartbeat_at = now() WHERE seq = 1001"))
        conn.execute(
            sa.text(
                "UPDATE actions SET status = 'queued', started_at = NULL "
                "WHERE seq = 1001 AND status = 'running'"
            )
        )
        conn.execute(
            sa.text(
                "UPDATE webhook_events SET status = 'pending', attempts = attempts + 1 "
                "WHERE project_id = 'hist-00000003'"
            )
        )
        conn.execute(
            sa.text(
                "UPDATE workspaces SET status = 'sleeping' WHERE status = 'ready' AND "
                "project_id < 'hist-00000100'"
            )
        )
    assert_counters_match(engine)

    # Two writers at once never wait for each other on a counter row.
    with engine.connect() as first, engine.connect() as second:
        first.begin()
        first.execute(
            sa.text(
                "UPDATE actions SET status = 'running' WHERE seq = 1002 AND "
                "project_id = 'hist-00000001'"
            )
        )
        second.begin()
        second.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
        second.execute(
            sa.text(
                "UPDATE actions SET status = 'running' WHERE seq = 1002 AND "
                "project_id = 'hist-00000002'"
            )
        )
        second.commit()
        first.commit()
    assert_counters_match(engine)

    # Every webhook row once, page by page, newest first.
    seen: list[str] = []
    before = None
    while True:
        page = outbox.list_events(engine, limit=997, before=before)
        seen += [r["id"] for r in page]
        if len(page) < 997:
            break
        before = (page[-1]["created_at"], page[-1]["id"])
    with engine.connect() as conn:
        every = set(conn.execute(sa.text("SELECT id FROM webhook_events")).scalars())
    assert len(seen) == len(every) and set(seen) == every

    # The CLI pages the same way, printing the cursor of the next page.
    env = {**isolated_env, "WORKSPACE_RUNTIME": "fake"}
    first_page = subprocess.run(
        [*QAI, "webhooks", "list", "--limit", "2", "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    cursor = first_page.stderr.split("--before '", 1)[1].split("'", 1)[0]
    second_page = subprocess.run(
        [*QAI, "webhooks", "list", "--limit", "2", "--json", "--before", cursor],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    paged = [r["id"] for r in json.loads(first_page.stdout) + json.loads(second_page.stdout)]
    assert paged == seen[:4]

    # Prune: old history goes, ensure/write/destroy too (a rebuild reads the file record).
    replayed = sa.text(
        "SELECT count(*) FROM actions WHERE status = 'succeeded' "
        "AND kind IN ('ensure', 'write', 'destroy') AND finished_at < now() - interval '30 days'"
    )
    with engine.connect() as conn:
        assert conn.execute(replayed).scalar_one() > 0
    deleted = 0
    while True:
        gone_actions, gone_events = maintenance.prune_batch(engine, KEEP, 1000)
        deleted += len(gone_actions)
        if len(gone_actions) < 1000 and len(gone_events) < 1000:
            break
    assert deleted > 0
    with engine.connect() as conn:
        assert conn.execute(replayed).scalar_one() == 0
        old = sa.text(
            f"SELECT count(*) FROM actions WHERE ({maintenance.PRUNABLE}) "
            "AND finished_at < now() - interval '30 days'"
        )
        assert conn.execute(old).scalar_one() == 0
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM webhook_events WHERE status IN ('delivered', 'dead') "
                    "AND created_at < now() - interval '30 days'"
                )
            ).scalar_one()
            == 0
        )
        # Younger history is untouched.
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM actions WHERE finished_at > now() - interval '29 days'"
                )
            ).scalar_one()
            > N_ACTIONS * 0.9
        )
    assert_counters_match(engine)
    engine.dispose()
