"""`qai-jobs bench --scenarios ui`: how long the operator page takes to render on a large fleet.

The bench database gets 10,000 workspaces (a tenth in ``error``), 100,000 actions (one in
twenty failed; one project holds 20,000 of them) and 2,000 dead webhooks, in bulk SQL. A real
`qai-jobs api` then serves each page to a client that asks for it again and again (bearer
token, keep-alive); the baseline in the same run is ``GET /v1/projects/{id}``, the API's
cheapest read of one workspace. Medians, and each page's ratio to the baseline.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from qai_jobs.bench.http import _free_port, _start_api, _stop
from qai_jobs.bench.run import summarize
from qai_jobs.config import Settings
from qai_jobs.db.session import engine_for
from qai_jobs.db.synthetic import clear

Log = Callable[[str], None]
WORKSPACES = 10_000
ACTIONS = 100_000
HOT_ACTIONS = 20_000  # of ACTIONS, in one project: its timeline is the deep one
DEAD_WEBHOOKS = 2_000
REQUESTS = 60

_FILL = [
    """INSERT INTO workspaces (project_id, id, status, provider, sandbox_id, preview_url,
                              last_activity_at, next_seq)
       SELECT 'bench-ui-' || i, gen_random_uuid(),
              CASE WHEN i % 10 = 0 THEN 'error' WHEN i % 3 = 0 THEN 'sleeping' ELSE 'ready' END,
              'fake', 'sb-' || i, 'http://127.0.0.1:' || (20000 + i % 1000),
              now() - make_interval(secs => i * 7), 0
       FROM generate_series(1, :w) AS i""",
    # The hot project's actions, then the rest spread evenly over the other workspaces.
    """INSERT INTO actions (id, project_id, seq, kind, status, payload, result, error,
                           created_at, started_at, finished_at)
       SELECT gen_random_uuid(), 'bench-ui-1', s, 'command',
              CASE WHEN s % 20 = 0 THEN 'failed' ELSE 'succeeded' END,
              jsonb_build_object('cmd', 'npm test -- --shard ' || s),
              jsonb_build_object('stdout', repeat('ok ', 200), 'stderr', '', 'exit_code', 0),
              CASE WHEN s % 20 = 0 THEN jsonb_build_object(
                  'code', 'provider_error', 'message', 'sandbox went away', 'retryable', true)
              END,
              now() - make_interval(secs => s), now() - make_interval(secs => s),
              now() - make_interval(secs => s)
       FROM generate_series(1, :hot) AS s""",
    """INSERT INTO actions (id, project_id, seq, kind, status, payload, result, error,
                           created_at, started_at, finished_at)
       SELECT gen_random_uuid(), 'bench-ui-' || (2 + (i % (:w - 1))), 1 + i / (:w - 1),
              'command', CASE WHEN i % 20 = 0 THEN 'failed' ELSE 'succeeded' END,
              jsonb_build_object('cmd', 'echo ' || i),
              jsonb_build_object('stdout', 'hi', 'stderr', '', 'exit_code', 0),
              CASE WHEN i % 20 = 0 THEN jsonb_build_object(
                  'code', 'command_failed', 'message', 'exit 1', 'retryable', false)
              END,
              now(), now(), now()
       FROM generate_series(0, :rest - 1) AS i""",
    """UPDATE workspaces w SET next_seq = a.m
       FROM (SELECT project_id, max(seq) AS m FROM actions GROUP BY 1) a
       WHERE a.project_id = w.project_id""",
    """INSERT INTO webhook_events (id, project_id, action_id, type, sequence, target, body,
                                  status, attempts, last_error, created_at)
       SELECT 'msg_' || md5(i::text), 'bench-ui-' || (1 + i % :w), NULL, 'workspace.ready', i,
              'http://127.0.0.1:9/hook', '{}', 'dead', 7, 'HTTP 500',
              now() - make_interval(secs => i)
       FROM generate_series(1, :dead) AS i""",
    "ANALYZE workspaces",
    "ANALYZE actions",
    "ANALYZE webhook_events",
]


def _fill(engine: sa.Engine) -> float:
    started = time.perf_counter()
    params = {"w": WORKSPACES, "hot": HOT_ACTIONS, "rest": ACTIONS - HOT_ACTIONS}
    params["dead"] = DEAD_WEBHOOKS
    with engine.begin() as conn:
        clear(conn)
        for statement in _FILL:
            conn.execute(sa.text(statement), params)
    return time.perf_counter() - started


def _pages(http: httpx.Client) -> dict[str, str]:
    """The paths to time: each page, and a deep page reached by following its cursors."""
    paths = {
        "baseline GET /v1/projects/{id}": "/v1/projects/bench-ui-2",
        "/ui (all workspaces)": "/ui",
        "/ui?status=error": "/ui?status=error",
        "/ui/projects/{hot} (20k actions)": "/ui/projects/bench-ui-1",
        "/ui/webhooks (dead)": "/ui/webhooks",
    }
    deep = "/ui/projects/bench-ui-1"
    for _ in range(20):  # twenty pages back: 1,000 actions in
        text = http.get(deep).text
        marker = 'id="older" href="'
        at = text.find(marker)
        if at < 0:
            break
        deep = text[at + len(marker) : text.index('"', at + len(marker))].replace("&amp;", "&")
    paths["/ui/projects/{hot}?before= (page 21)"] = deep
    return paths


def run_ui_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    engine = engine_for(settings.database_url)
    fill_s = _fill(engine)
    log(
        f"ui: {WORKSPACES} workspaces, {ACTIONS} actions, {DEAD_WEBHOOKS} dead webhooks "
        f"written in {fill_s:.1f}s"
    )
    logs = Path(tempfile.mkdtemp(prefix="qai-bench-ui-"))
    token = secrets.token_urlsafe(24)
    port = _free_port()
    api = _start_api(settings, token, port, logs / "api.log")
    result: dict[str, Any] = {"workspaces": WORKSPACES, "actions": ACTIONS, "requests": REQUESTS}
    try:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:
            paths = _pages(http)
            result["deep_page"] = paths["/ui/projects/{hot}?before= (page 21)"]
            timings: dict[str, list[float]] = {label: [] for label in paths}
            for _ in range(3):  # warm-up: templates compiled, plans cached, pages in memory
                for path in paths.values():
                    http.get(path).raise_for_status()
            for _ in range(REQUESTS):  # interleaved, so load drifts hit every page alike
                for label, path in paths.items():
                    started = time.perf_counter()
                    response = http.get(path)
                    timings[label].append(time.perf_counter() - started)
                    response.raise_for_status()
    finally:
        _stop(api)
        with engine.begin() as conn:
            clear(conn)
    baseline = summarize(timings["baseline GET /v1/projects/{id}"])["p50_ms"]
    for label, values in timings.items():
        stats = summarize(values)
        result[label] = {
            "p50_ms": round(stats["p50_ms"], 2),
            "p99_ms": round(stats["p99_ms"], 2),
            "x_baseline": round(stats["p50_ms"] / baseline, 2),
        }
        log(
            f"ui: {label:40} p50 {stats['p50_ms']:7.2f} ms  p99 {stats['p99_ms']:7.2f} ms  "
            f"({stats['p50_ms'] / baseline:.2f}x baseline)"
        )
    return result
