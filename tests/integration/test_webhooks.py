"""Signed webhooks end to end: real workers, a real HTTP receiver, standardwebhooks verifying."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from qai_jobs import ActionFailed
from qai_jobs.config import Settings, load_settings
from qai_jobs.db.session import engine_for
from qai_jobs.testing import inject_fault
from qai_jobs.worker.webhooks import NO_SECRET, NOT_CONFIGURED, deliver
from tests.integration.ops_support import (
    SECRET,
    Receiver,
    env_for,
    events_of,
    isolated_env,
    wait_until,
)
from tests.support.procs import QAI, REPO


@pytest.fixture(scope="module")
def base_env(base_env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield from isolated_env(base_env)


@pytest.fixture(scope="module")
def settings(base_env: dict[str, str]) -> Settings:
    fields = {
        k.lower(): v
        for k, v in base_env.items()
        if k.startswith(("WORKSPACE_", "DATABASE_", "REDIS_"))
    }
    return load_settings(_env_file=None, **fields)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Any:
    from qai_jobs.client import WorkspaceClient

    return WorkspaceClient(settings)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def rows(settings: Settings, project: str) -> list[dict[str, Any]]:
    with engine_for(settings.database_url).connect() as conn:
        result = conn.execute(
            sa.text("SELECT * FROM webhook_events WHERE project_id = :p ORDER BY sequence"),
            {"p": project},
        )
        return [dict(r._mapping) for r in result]


def qai(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QAI, *args], check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_every_event_arrives_signed_once_per_id_after_retries(
    workers: Any, client: Any, settings: Settings, receiver: Receiver, project: str
) -> None:
    workers(concurrency=2, **env_for(receiver.url("/flaky"), WORKSPACE_MAX_ATTEMPTS="3"))
    ready = client.ensure(project, files={"a.txt": "hello"}, start_dev_server=False)
    ready.wait(timeout=30)
    sleep = client.sleep(project)
    sleep.wait(timeout=30)
    # Every attempt of this command fails transiently: it fails for good after 3 attempts.
    inject_fault(settings.redis_url, op="run", count=3, mode="transient")
    failing = client.command(project, "echo hi")
    with pytest.raises(ActionFailed):
        failing.wait(timeout=30)
    destroy = client.destroy(project)
    destroy.wait(timeout=30)

    settled = wait_until(
        lambda: (r := rows(settings, project)) and all(x["status"] != "pending" for x in r) and r,
        what="every event delivered",
    )
    assert [r["status"] for r in settled] == ["delivered"] * len(settled)
    events = events_of(receiver, project)
    assert len(events) == len(settled)
    types = [e["type"] for e in events]
    assert types == [
        "workspace.ready",
        "workspace.sleeping",
        "workspace.error",
        "workspace.destroyed",
    ]
    sequences = [e["data"]["sequence"] for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    by_type = {e["type"]: e for e in events}
    assert events[0]["data"]["action_id"] == ready.id
    assert by_type["workspace.sleeping"]["data"]["action_id"] == sleep.id
    assert by_type["workspace.destroyed"]["data"]["action_id"] == destroy.id
    error = by_type["workspace.error"]["data"]
    assert (
        error["action_id"] == failing.id and error["kind"] == "command" and error["attempts"] == 3
    )
    assert error["error"]["code"]
    ready_data = events[0]["data"]
    assert {"preview_url", "provider", "sandbox_id", "workspace_id"} <= set(ready_data)
    assert ready_data["provider"] == "fake"
    for e in events:
        assert e["data"]["project_id"] == project and "timestamp" in e

    # Each id was tried three times (500, 500, 204) with the same id and the exact same body.
    for row in rows(settings, project):
        attempts = receiver.attempts(row["id"])
        assert [a["status"] for a in attempts] == [500, 500, 204]
        assert {a["body"] for a in attempts} == {row["body"].encode()}
        assert (
            row["status"] == "delivered"
            and row["attempts"] == 3
            and row["last_error"] == "HTTP 500"
        )
        assert attempts[-1]["headers"]["content-type"] == "application/json"

    # A receiver rejects a tampered body, or a body signed with another secret.
    accepted = [r for r in receiver.requests if r["status"] == 204]
    sample = accepted[0]
    tampered = sample["body"].replace(project.encode(), b"p-someone-else")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, sample["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==").verify(
            sample["body"], sample["headers"]
        )


def test_dead_after_the_schedule_then_replayed_with_the_same_id(
    workers: Any,
    client: Any,
    settings: Settings,
    receiver: Receiver,
    project: str,
    base_env: dict[str, str],
) -> None:
    env = env_for(receiver.url("/down"))
    workers(concurrency=2, **env)
    client.ensure(project, start_dev_server=False).wait(timeout=30)
    row = wait_until(
        lambda: [r for r in rows(settings, project) if r["status"] == "dead"],
        what="the event to go dead",
    )[0]
    assert row["attempts"] == 3 and row["last_error"] == "HTTP 500"
    assert [a["status"] for a in receiver.attempts(row["id"])] == [500, 500, 500]

    cli = {**base_env, **env}
    listed = qai(cli, "webhooks", "list", "--dead", "--json")
    assert listed.returncode == 0, listed.stderr
    assert row["id"] in {r["id"] for r in json.loads(listed.stdout)}
    assert SECRET not in listed.stdout + listed.stderr

    receiver.down_ok = True
    replay = qai(cli, "webhooks", "replay", "--dead")
    assert replay.returncode == 0, replay.stderr
    wait_until(
        lambda: rows(settings, project)[0]["status"] == "delivered", what="the replayed delivery"
    )
    delivered = receiver.accepted()
    assert row["id"] in delivered  # the same webhook-id as the dead attempts
    assert delivered[row["id"]]["data"]["project_id"] == project
    assert qai(cli, "webhooks", "replay", "msg_nope").returncode == 1


def test_unconfigured_target_is_never_called_and_no_secret_holds(
    client: Any, settings: Settings, receiver: Receiver, project: str
) -> None:
    """Delivery decisions in-process against the real database and receiver."""
    engine = engine_for(settings.database_url)
    target = receiver.url("/flaky")
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO workspaces (project_id, id) VALUES (:p, gen_random_uuid())"),
            {"p": project},
        )
        for event_id in ("msg_unconfigured", "msg_unsigned"):
            conn.execute(
                sa.text(
                    "INSERT INTO webhook_events (id, project_id, type, sequence, target, body) "
                    "VALUES (:id, :p, 'workspace.ready', 1, :t, '{}')"
                ),
                {"id": f"{event_id}_{project}", "p": project, "t": target},
            )
    other = settings.model_copy(
        update={
            "workspace_callback_url": ["http://127.0.0.1:9/elsewhere"],
            "workspace_webhook_secret": load_settings(
                _env_file=None, workspace_webhook_secret=SECRET
            ).workspace_webhook_secret,
        }
    )
    outcome = deliver(other, engine, f"msg_unconfigured_{project}")
    assert outcome.status == "dead" and outcome.error == NOT_CONFIGURED

    unsigned = settings.model_copy(
        update={"workspace_callback_url": [target], "workspace_webhook_secret": None}
    )
    outcome = deliver(unsigned, engine, f"msg_unsigned_{project}")
    assert outcome.status == "held"
    held = {r["id"]: r for r in rows(settings, project)}[f"msg_unsigned_{project}"]
    assert held["status"] == "pending" and held["attempts"] == 0 and held["last_error"] == NO_SECRET
    assert receiver.requests == []


def test_foreign_invalid_action_announces_workspace_error(
    workers: Any, base_env: dict[str, str], settings: Settings, client: Any, project: str
) -> None:
    """A message from another producer that fails validation is a final failure like any
    other: it is recorded as failed and announces workspace.error."""
    import uuid

    from celery import Celery

    r = Receiver(fail_first=0)
    try:
        workers(concurrency=1, **env_for(r.url("/flaky")))
        app = Celery(broker=settings.redis_url)
        task_id = str(uuid.uuid4())
        app.send_task(
            "qai_jobs.write",
            kwargs={"project_id": project, "files": {"../escape": "x"}},
            task_id=task_id,
            queue=base_env["WORKSPACE_QUEUE"],
        )
        action = client.wait_for(task_id, timeout=30)
        assert action["status"] == "failed" and action["error"]["code"] == "invalid_payload"
        wait_until(lambda: events_of(r, project), timeout=30)
        (event,) = events_of(r, project)
        assert event["type"] == "workspace.error"
        assert event["data"]["action_id"] == task_id
        assert event["data"]["error"]["code"] == "invalid_payload"
    finally:
        r.close()
