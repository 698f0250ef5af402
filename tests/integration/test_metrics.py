"""Prometheus metrics and `qai-jobs status`, read from the fleet's real rows; progress stages."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from qai_jobs import ActionFailed
from qai_jobs.config import Settings
from qai_jobs.db.session import engine_for
from qai_jobs.metrics import render
from qai_jobs.testing import clear_faults, inject_fault
from qai_jobs.worker.sweeps import prune
from tests.support.procs import QAI, REPO


def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = render(settings)
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_actions_queue_webhooks_and_survive_prune(
    shared_worker: Any, client: Any, settings: Settings, project: str, base_env: dict[str, str]
) -> None:
    before = scrape(settings)
    client.ensure(project, files={"a.txt": "x"}, start_dev_server=False).wait(timeout=30)
    client.command(project, "echo hi").wait(timeout=30)
    inject_fault(settings.redis_url, op="run", count=1, mode="permanent")
    with pytest.raises(ActionFailed):
        client.command(project, "echo no").wait(timeout=30)
    clear_faults(settings.redis_url)
    # Two actions wait behind a slow one: the queue has depth and age.
    busy = client.command(project, "sleep 1.5")
    queued = [client.command(project, "echo later") for _ in range(2)]
    deadline = time.monotonic() + 10
    while client.get_action(busy.id)["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    during = scrape(settings)
    assert value(during, "qai_queue_depth") >= 2
    assert value(during, "qai_oldest_queued_action_age_seconds") > 0
    assert value(during, "qai_actions_running") >= 1
    for h in [busy, *queued]:
        h.wait(timeout=30)

    # Webhook outcomes, as the delivery task leaves them.
    engine = engine_for(settings.database_url)
    with engine.begin() as conn:
        for i, (status, attempts) in enumerate([("delivered", 3), ("dead", 3), ("pending", 1)]):
            conn.execute(
                sa.text(
                    "INSERT INTO webhook_events (id, project_id, type, sequence, target, body, "
                    "status, attempts) "
                    "VALUES (:id, :p, 'workspace.ready', :i, 'http://x', '{}', :s, :n)"
                ),
                {"id": f"msg_{project}_{i}", "p": project, "i": i, "s": status, "n": attempts},
            )

    after = scrape(settings)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("qai_actions_total", kind="ensure", outcome="succeeded") == 1
    assert delta("qai_actions_total", kind="command", outcome="succeeded") == 4
    assert delta("qai_actions_total", kind="command", outcome="failed") == 1
    assert delta("qai_action_duration_seconds_count", kind="command") == 5
    assert delta("qai_action_duration_seconds_bucket", kind="command", le="+Inf") == 5
    assert delta("qai_action_duration_seconds_sum", kind="command") >= 1.5  # the sleep 1.5
    assert delta("qai_webhook_deliveries_total", outcome="ok") == 1
    assert delta("qai_webhook_deliveries_total", outcome="dead") == 1
    assert delta("qai_webhook_deliveries_total", outcome="retried") == 2 + 2 + 1
    assert value(after, "qai_workspaces", status="ready") >= 1
    assert value(after, "qai_queue_depth") == 0

    # Pruning history does not make counters go backwards (Prometheus would see a reset).
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE actions SET finished_at = finished_at - interval '400 days', "
                "started_at = started_at - interval '400 days' WHERE project_id = :p"
            ),
            {"p": project},
        )
        conn.execute(
            sa.text(
                "UPDATE webhook_events SET created_at = now() - interval '400 days' "
                "WHERE project_id = :p"
            ),
            {"p": project},
        )
    pruned = prune(settings)
    assert pruned["actions"] >= 5 and pruned["events"] >= 2
    # Every finished action goes, the ensure too: a rebuild restores the file record, not history.
    assert client.list_actions(project) == []
    kept = scrape(settings)
    for key, v in after.items():
        if key[0] in ("qai_actions_total", "qai_webhook_deliveries_total") or key[0].startswith(
            "qai_action_duration_seconds"
        ):
            assert kept.get(key, 0.0) == pytest.approx(v), key

    # `qai-jobs status` shows the same figures.
    out = subprocess.run(
        [*QAI, "status", "--json"],
        check=False,
        env=base_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["queued"] == value(kept, "qai_queue_depth")
    assert set(status["webhook_deliveries"]) == {"ok", "retried", "dead"}
    text = subprocess.run(
        [*QAI, "status"],
        check=False,
        env=base_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "deliveries:" in text.stdout and "queue:" in text.stdout


def test_ensure_reports_syncing_progress_while_running(
    shared_worker: Any,
    client: Any,
    settings: Settings,
    project: str,
    base_env: dict[str, str],
    tmp_path: Any,
) -> None:
    total = 3000
    files = {f"src/f{i:04}.txt": f"content {i}" for i in range(total)}
    inject_fault(settings.redis_url, op="write_files", count=6, mode="latency", latency=0.3)
    try:
        handle = client.ensure(project, files=files, start_dev_server=False)
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            action = client.get_action(handle.id)
            if action["status"] in ("succeeded", "failed"):
                break
            if action["stage"]:
                seen.append(action["stage"])
            time.sleep(0.05)
        assert handle.wait(timeout=30)["files_written"] == total
    finally:
        clear_faults(settings.redis_url)
    syncing = [s for s in seen if s["stage"] == "syncing"]
    assert any(0 < s["done"] < total and s["total"] == total for s in syncing), seen
    assert client.get_action(handle.id)["stage"] is None  # cleared once finished

    # The CLI prints one line per stage when stderr is not a terminal.
    src = tmp_path / "app"
    src.mkdir()
    for i in range(1200):
        (src / f"g{i}.txt").write_text(str(i))
    inject_fault(settings.redis_url, op="write_files", count=3, mode="latency", latency=0.3)
    try:
        out = subprocess.run(
            [*QAI, "ensure", f"{project}-cli", "--dir", str(src), "--no-dev-server"],
            check=False,
            env=base_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        clear_faults(settings.redis_url)
    assert out.returncode == 0, out.stderr
    lines = [line.strip() for line in out.stderr.splitlines() if "…" in line]
    assert "… syncing 1200/1200" in lines, out.stderr
    assert len([line for line in lines if line.startswith("… syncing")]) <= 2, out.stderr
