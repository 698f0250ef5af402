"""The producer API end to end through real worker processes on the fake provider."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import sqlalchemy as sa
from celery import Celery

from qai_jobs import ActionFailed
from qai_jobs.client import WorkspaceClient
from qai_jobs.errors import Conflict, ValidationFailed
from qai_jobs.testing import clear_faults, inject_fault
from tests.support.procs import Proc

pytestmark = pytest.mark.usefixtures("shared_worker")


@pytest.fixture(autouse=True)
def _no_faults(settings):  # type: ignore[no-untyped-def]
    clear_faults(settings.redis_url)
    yield
    clear_faults(settings.redis_url)


def test_every_kind_round_trips(client: WorkspaceClient, project: str) -> None:
    ready = client.ensure(
        project, files={"server.js": "console.log(1)", "bin.dat": "x"}, dev_command="node server.js"
    ).wait(30)
    assert ready["created"] is True
    assert ready["files_written"] == 2
    assert ready["preview_url"]
    again = client.ensure(project, files={"server.js": "console.log(1)"}).wait(30)
    assert again["created"] is False
    assert again["files_written"] == 0 and again["files_unchanged"] == 1
    assert client.write(project, files={"a.txt": "hello"}, delete=["bin.dat"]).wait(30) == {
        "files_written": 1,
        "files_unchanged": 0,
        "files_deleted": 1,
    }
    got = client.read(project, paths=["a.txt", "bin.dat"]).wait(30)
    assert got["files"] == [{"path": "a.txt", "content": "hello", "encoding": "utf-8", "size": 5}]
    assert got["missing"] == ["bin.dat"]
    out = client.command(project, "echo hi").wait(30)
    assert out["exit_code"] == 0 and out["stdout"] == "hi\n" and out["timed_out"] is False
    assert client.command(project, "exit 3").wait(30)["exit_code"] == 3  # non-zero is a result
    assert client.preview(project).wait(30)["healthy"] is True
    assert "text" in client.logs(project).wait(30)
    snap = client.snapshot(project).wait(30)["snapshot_id"]
    client.write(project, files={"a.txt": "changed"}).wait(30)
    assert client.sleep(project).wait(30)["snapshot_id"]
    assert client.get_workspace(project)["status"] == "sleeping"
    assert client.wake(project).wait(30)["preview_url"]
    client.restore(project, snap).wait(30)
    assert client.read(project, paths=["a.txt"]).wait(30)["files"][0]["content"] == "hello"
    assert client.destroy(project).wait(30) == {}
    assert client.get_workspace(project)["status"] == "destroyed"
    kinds = [a["kind"] for a in client.list_actions(project)]
    assert kinds[:3] == ["ensure", "ensure", "write"] and kinds[-1] == "destroy"


def test_first_action_provisions_and_noop_kinds_on_empty_projects(client: WorkspaceClient) -> None:
    for kind in ("sleep", "destroy", "logs"):
        p = f"empty-{kind}-{uuid.uuid4().hex[:8]}"
        result = client.enqueue(p, kind).wait(30)
        assert client.get_workspace(p)["sandbox_id"] is None, kind
        assert result in ({}, {"snapshot_id": None}, {"text": ""})
    p = f"auto-{uuid.uuid4().hex[:8]}"
    assert client.command(p, "echo auto").wait(30)["stdout"] == "auto\n"
    assert client.get_workspace(p)["sandbox_id"]


def test_idempotency_key_returns_the_same_action(client: WorkspaceClient, project: str) -> None:
    a = client.command(project, "echo once", idempotency_key="k-1")
    b = client.command(project, "echo once", idempotency_key="k-1")
    c = client.command(f"{project}-other", "echo once", idempotency_key="k-1")
    assert a.id == b.id != c.id
    a.wait(30)
    assert len(client.list_actions(project)) == 1


def test_cancel_queued_but_not_running(client: WorkspaceClient, project: str) -> None:
    first = client.command(project, "sleep 1.5")
    second = client.command(project, "echo never")
    deadline = time.monotonic() + 20
    while client.get_action(first.id)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.cancel(second.id)["status"] == "cancelled"
    with pytest.raises(Conflict):
        client.cancel(first.id)
    with pytest.raises(ActionFailed) as info:
        second.wait(5)
    assert info.value.error["code"] == "cancelled"
    assert first.wait(30)["exit_code"] == 0
    with pytest.raises(Conflict):
        client.cancel(first.id)


def test_transient_errors_are_retried_then_succeed(
    client: WorkspaceClient, settings, project: str
) -> None:  # type: ignore[no-untyped-def]
    client.ensure(project, start_dev_server=False).wait(30)
    inject_fault(settings.redis_url, op="run", count=2, mode="transient")
    handle = client.command(project, "echo ok")
    assert handle.wait(30)["stdout"] == "ok\n"
    action = client.get_action(handle.id)
    assert action["attempts"] == 3
    assert action["error"] is None


def test_permanent_errors_fail_at_once(client: WorkspaceClient, settings, project: str) -> None:  # type: ignore[no-untyped-def]
    client.ensure(project, start_dev_server=False).wait(30)
    inject_fault(settings.redis_url, op="run", count=1, mode="permanent")
    handle = client.command(project, "echo no")
    with pytest.raises(ActionFailed) as info:
        handle.wait(30)
    assert info.value.error["retryable"] is False
    assert client.get_action(handle.id)["attempts"] == 1
    # the project is not wedged
    assert client.command(project, "echo next").wait(30)["stdout"] == "next\n"


def test_exhausted_retries_fail_with_the_last_error(
    client: WorkspaceClient, settings, project: str
) -> None:  # type: ignore[no-untyped-def]
    client.ensure(project, start_dev_server=False).wait(30)
    inject_fault(settings.redis_url, op="run", count=50, mode="transient")
    handle = client.command(project, "echo never")
    later = client.command(project, "true")
    with pytest.raises(ActionFailed) as info:
        handle.wait(60)
    clear_faults(settings.redis_url)
    assert info.value.error == {
        "code": "provider_unavailable",
        "message": "injected transient fault in run",
        "retryable": True,
    }
    assert client.get_action(handle.id)["attempts"] == settings.workspace_max_attempts
    # FIFO: the later action waited behind the retrying one
    assert later.wait(30)["exit_code"] == 0
    assert client.get_action(later.id)["started_at"] >= client.get_action(handle.id)["finished_at"]


def test_wait_times_out_cleanly(client: WorkspaceClient, project: str) -> None:
    handle = client.command(project, "sleep 2")
    with pytest.raises(TimeoutError):
        handle.wait(0.2)
    assert handle.wait(30)["exit_code"] == 0


def test_invalid_input_enqueues_nothing(client: WorkspaceClient, project: str) -> None:
    with pytest.raises(ValidationFailed):
        client.write(project, files={"../escape": "x"})
    with pytest.raises(ValidationFailed):
        client.enqueue(project, "explode")
    with pytest.raises(ValidationFailed):
        client.command("bad project id", "true")
    with client.engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT count(*) FROM actions WHERE project_id = :p"), {"p": project}
        ).scalar()
    assert count == 0


def test_foreign_producer_speaks_celery(client: WorkspaceClient, settings, project: str) -> None:  # type: ignore[no-untyped-def]
    """Another language's producer: `qai_jobs.<kind>` by name, kwargs, a UUID task id, JSON."""
    app = Celery(broker=settings.redis_url)
    app.conf.task_serializer = "json"
    task_id = str(uuid.uuid4())
    app.send_task(
        "qai_jobs.command",
        kwargs={"project_id": project, "cmd": "echo foreign", "env": {"TOKEN": "sekrit-123"}},
        task_id=task_id,
    )
    result = client.wait_for(task_id, timeout=30)
    assert result["status"] == "succeeded", result
    assert result["result"]["stdout"] == "foreign\n"
    bad_id = str(uuid.uuid4())
    app.send_task(
        "qai_jobs.write", kwargs={"project_id": project, "files": {"/abs": "x"}}, task_id=bad_id
    )
    bad = client.wait_for(bad_id, timeout=30)
    assert bad["status"] == "failed"
    assert bad["error"]["code"] == "invalid_payload" and "files[0].path" in bad["error"]["message"]
    with client.engine.connect() as conn:
        payload = conn.execute(
            sa.text("SELECT payload FROM actions WHERE id = :id"), {"id": task_id}
        ).scalar()
    assert "sekrit-123" not in json.dumps(payload)


def test_env_values_never_reach_rows_or_logs(
    client: WorkspaceClient, shared_worker: Proc, project: str
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    client.ensure(project, env={"API_KEY": secret}, start_dev_server=False).wait(30)
    client.command(project, "true", env={"OTHER": secret}).wait(30)
    with client.engine.connect() as conn:
        dump = conn.execute(
            sa.text(
                "SELECT coalesce(json_agg(a)::text, '') || coalesce((SELECT json_agg(w)::text FROM workspaces w WHERE project_id = :p), '') FROM actions a WHERE project_id = :p"
            ),
            {"p": project},
        ).scalar()
    assert project in dump
    assert secret not in dump
    assert secret not in shared_worker.log()


def test_sandbox_gone_behind_our_back_is_recreated_with_its_files(
    client: WorkspaceClient, settings, project: str
) -> None:  # type: ignore[no-untyped-def]
    client.ensure(project, files={"a.txt": "A", "b.txt": "B"}, start_dev_server=False).wait(30)
    client.write(project, files={"c.txt": "C"}, delete=["a.txt"]).wait(30)
    first_sandbox = client.get_workspace(project)["sandbox_id"]
    inject_fault(settings.redis_url, op="read_files", mode="gone", count=1)
    got = client.read(project, paths=["a.txt", "b.txt", "c.txt"]).wait(30)
    assert [f["content"] for f in got["files"]] == ["B", "C"] and got["missing"] == ["a.txt"]
    assert client.get_workspace(project)["sandbox_id"] != first_sandbox
    # After a sleep snapshot: the snapshot plus what was written since.
    client.sleep(project).wait(30)
    client.write(project, files={"d.txt": "D"}).wait(30)
    inject_fault(settings.redis_url, op="read_files", mode="gone", count=1)
    got = client.read(project, paths=["b.txt", "c.txt", "d.txt"]).wait(30)
    assert [f["content"] for f in got["files"]] == ["B", "C", "D"]
