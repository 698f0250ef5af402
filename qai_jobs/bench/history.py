"""`qai-jobs bench --history N`: load N actions of synthetic history into the bench database,
then time the operator queries that must not grow with it.

Each figure is the wall time of the real call (a scrape renders the whole exposition, the
webhook list runs the CLI's query, a prune runs the beat sweep), best of a few runs so one
stall of a shared machine does not decide it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qai_jobs.config import Settings

Log = Callable[[str], None]
CHUNK_WORKSPACES = 5000
RUNS = 3


def load(settings: Settings, n_actions: int, log: Log) -> dict[str, Any]:
    """Replace the bench database's rows with ``n_actions`` of history; return counts, seconds."""
    from qai_jobs.db import synthetic
    from qai_jobs.db.migrate import migrate
    from qai_jobs.db.session import engine_for

    migrate(settings.database_url)
    engine = engine_for(settings.database_url)
    with engine.begin() as conn:
        synthetic.clear(conn)
    total = synthetic.workspaces_for(n_actions)
    started = time.monotonic()
    for w0 in range(0, total, CHUNK_WORKSPACES):
        w1 = min(total, w0 + CHUNK_WORKSPACES)
        with engine.begin() as conn:
            synthetic.load_chunk(conn, w0, w1, n_actions)
        log(f"history: {min(w1 * synthetic.PER_WORKSPACE, n_actions):,} actions loaded")
    with engine.begin() as conn:
        synthetic.analyze(conn)
        counts = synthetic.counts(conn)
    return {"rows": counts, "load_seconds": time.monotonic() - started}


def _best(call: Callable[[], Any]) -> float:
    times = []
    for _ in range(RUNS):
        t = time.monotonic()
        call()
        times.append(time.monotonic() - t)
    return min(times) * 1000


def measure(settings: Settings, log: Log) -> dict[str, float]:
    """Milliseconds per operator query against whatever history the bench database holds."""
    from qai_jobs.client.direct import WorkspaceClient
    from qai_jobs.db import maintenance, operator, outbox, stats
    from qai_jobs.db.session import engine_for
    from qai_jobs.metrics import render

    engine = engine_for(settings.database_url)
    client = WorkspaceClient(settings)
    some = f"{'hist-'}{0:08d}"
    out: dict[str, float] = {}
    # What a provider's listing would hand the orphan sweep: a thousand running sandboxes.
    listed = [f"fake-hist-{w}" for w in range(1, 5000, 5)]

    def ui_page() -> None:
        with engine.connect() as conn:
            operator.status_counts(conn)
            page = operator.workspaces(conn, None, None)
            if page.rows:
                operator.timeline(conn, str(page.rows[0]["project_id"]), None)
            operator.dead_webhooks(conn, None)

    checks: dict[str, Callable[[], Any]] = {
        "metrics scrape": lambda: render(settings),
        "status summary": lambda: stats.summary(engine),
        "webhooks list": lambda: outbox.list_events(engine),
        "webhooks list --dead": lambda: outbox.list_events(engine, dead=True),
        "webhooks list --project": lambda: outbox.list_events(engine, project_id=some),
        "orphan sweep SQL (1,000 listed)": lambda: maintenance.owned_sandboxes(engine, listed),
        "GET /v1/projects/{p}/actions": lambda: client.list_actions(some, 100, None),
        "GET /v1/projects/{p}": lambda: client.get_workspace(some),
        "/ui pages": ui_page,
    }
    keep = settings.workspace_action_retention_days * 86400
    # The SQL alone: the sweep would also fold what it deletes into the live metrics in Redis.
    started = time.monotonic()
    maintenance.prune_batch(engine, keep, 5000)
    out["prune batch (deleting)"] = (time.monotonic() - started) * 1000
    while any(len(part) >= 5000 for part in maintenance.prune_batch(engine, keep, 5000)):
        pass
    checks["prune batch (nothing due)"] = lambda: maintenance.prune_batch(engine, keep, 5000)
    for name, call in checks.items():
        out[name] = _best(call)
    for name, ms in out.items():
        log(f"history: {name:32} {ms:9.1f} ms")
    return out


def run_history(settings: Settings, n_actions: int, log: Log) -> dict[str, Any]:
    from qai_jobs.bench.run import bench_settings

    bsettings = bench_settings(settings)
    loaded = load(bsettings, n_actions, log)
    log(f"history: loaded {loaded['rows']} in {loaded['load_seconds']:.1f} s")
    return {"history": {"actions": n_actions, **loaded, "ms": measure(bsettings, log)}}


def format_history(report: dict[str, Any]) -> str:
    h = report["history"]
    lines = [
        f"history: {h['actions']:,} actions, {h['rows']['workspaces']:,} workspaces, "
        f"loaded in {h['load_seconds']:.1f} s",
    ]
    lines += [f"  {name:32} {ms:9.1f} ms" for name, ms in h["ms"].items()]
    return "\n".join(lines)
