"""`qai-jobs bench` end to end with real processes: a tiny curve, its report and its page."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support import services
from tests.support.procs import QAI, REPO


def test_tiny_curve_reports_counts_and_a_clean_checker(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    # A section of the page the curve does not own (the history figures) survives a rewrite.
    (docs / "benchmarks.md").write_text("# Benchmarks\n\n## History\n\nkept figures\n")
    bench_db = make_url(base_env["DATABASE_URL"]).set(
        database=f"{make_url(base_env['DATABASE_URL']).database}_bench"
    )
    try:
        done = subprocess.run(
            [*QAI, "bench", "--actions", "40", "--projects", "2,8", "--docs", str(docs), "--json"],
            env=base_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        services.drop_database(bench_db.render_as_string(hide_password=False))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert [p["projects"] for p in report["curve"]] == [2, 8]
    for point in report["curve"]:
        assert point["checker"] == {"overlaps": 0, "out_of_order": 0, "never_started": 0}
        durable, plain = point["durable"], point["baseline"]
        assert durable["actions"] == 40 and durable["failed"] == 0
        assert plain["tasks"] == 40 and point["ratio"] > 0
        for side, per in ((durable, durable["per_action"]), (plain, plain["per_task"])):
            assert {"pg_commits", "pg_rollbacks", "redis_commands"} <= per.keys()
            assert side["enqueue"]["p50_ms"] > 0
            assert side["half_load"]["enqueue_to_start"]["p50_ms"] >= 0
        # Ours writes Postgres (a settle may also start the next action, so fewer commits than
        # actions is possible); the plain Celery app never touches it.
        assert durable["per_action"]["pg_commits"] > 0.1
        # Its enqueues and grants commit synchronously: the server synced its WAL for them.
        assert durable["per_action"]["wal_syncs"] > 0.1
        assert plain["per_task"]["pg_commits"] == 0
        assert plain["per_task"]["redis_commands"] > 1
        # The fake provider (a stand-in sandbox service) has a Redis server of its own: its
        # commands are counted apart, not as the job system's.
        assert durable["per_action"]["fake_provider_redis"] > 1
        # CPU time by process: both workers ran their tasks, our side also used Postgres.
        ours, theirs = durable["per_action"]["cpu_ms"], plain["per_task"]["cpu_ms"]
        assert ours["worker"] > 0 and ours["postgres"] > 0 and theirs["worker"] > 0
        assert theirs.get("postgres", 0.0) < ours["postgres"]  # the baseline's is idle
        assert ours["total"] == pytest.approx(sum(v for k, v in ours.items() if k != "total"))
    page = (docs / "benchmarks.md").read_text()
    assert "| 8 |" in page and "--projects 2,8" in page and "CPU milliseconds per action" in page
    assert "## History\n\nkept figures" in page and page.count("## Throughput") == 1
    assert (docs / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
