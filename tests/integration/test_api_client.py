"""HttpWorkspaceClient against a real `qai-jobs api`: the WorkspaceClient surface, local
validation, retries that honour Retry-After, and an API restart in the middle of a burst."""
# ruff: noqa: F811 - the api fixture is imported from api_helpers

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from qai_jobs.client import HttpWorkspaceClient, WorkspaceClient
from qai_jobs.errors import ActionFailed, Conflict, NotFound, Unauthorized, ValidationFailed
from tests.integration.api_helpers import TOKEN, Api, api, api_env, free_port, start_api  # noqa: F401
from tests.support.procs import Proc


@pytest.fixture
def hc(api: Api) -> Iterator[HttpWorkspaceClient]:
    with HttpWorkspaceClient(api.url, TOKEN, timeout=10) as c:
        yield c


def test_same_surface_as_workspace_client(hc: HttpWorkspaceClient, project: str) -> None:
    ensured = hc.ensure(project, files={"app.js": "1"}).wait(timeout=30)
    assert ensured["created"] is True and ensured["preview_url"]
    assert hc.write(project, files={"b.txt": "bee"}).wait(timeout=30)["files_written"] == 1
    assert hc.read(project, paths=["b.txt"]).wait(timeout=30)["files"][0]["content"] == "bee"
    ran = hc.command(project, "echo hello").wait(timeout=30)
    assert ran["stdout"] == "hello\n"
    assert hc.preview(project).wait(timeout=30)["preview_url"] == ensured["preview_url"]
    assert "text" in hc.logs(project).wait(timeout=30)
    snap = hc.snapshot(project).wait(timeout=30)["snapshot_id"]
    hc.sleep(project).wait(timeout=30)
    assert hc.get_workspace(project)["status"] == "sleeping"
    hc.wake(project).wait(timeout=30)
    hc.restore(project, snap).wait(timeout=30)
    with pytest.raises(ActionFailed) as failed:
        hc.restore(project, "no-such-snapshot").wait(timeout=30)
    assert failed.value.error["code"]
    hc.destroy(project).wait(timeout=30)
    kinds = [a["kind"] for a in hc.list_actions(project)]
    assert kinds == [
        "ensure",
        "write",
        "read",
        "command",
        "preview",
        "logs",
        "snapshot",
        "sleep",
        "wake",
        "restore",
        "restore",
        "destroy",
    ]
    assert hc.get_action(hc.list_actions(project)[0]["id"])["status"] == "succeeded"


def test_wait_timeout_cancel_and_errors(hc: HttpWorkspaceClient, project: str) -> None:
    slow = hc.command(project, "sleep 2")
    queued = hc.command(project, "echo later")
    with pytest.raises(TimeoutError):
        slow.wait(timeout=0.3)
    assert hc.cancel(queued.id)["status"] == "cancelled"
    with pytest.raises(ActionFailed) as cancelled:
        queued.wait(timeout=5)
    assert cancelled.value.error["code"] == "cancelled"
    with pytest.raises(Conflict):
        hc.cancel(queued.id)
    with pytest.raises(NotFound):
        hc.get_action(uuid.uuid4())
    assert slow.wait(timeout=30)["exit_code"] == 0


def test_idempotency_key_and_local_validation(
    hc: HttpWorkspaceClient, api: Api, client: WorkspaceClient, project: str
) -> None:
    first = hc.ensure(project, idempotency_key="same")
    assert hc.ensure(project, idempotency_key="same").id == first.id
    # Validation happens before any request: even a client with a wrong token gets it.
    with HttpWorkspaceClient(api.url, "wrong") as bad:
        with pytest.raises(ValidationFailed) as invalid:
            bad.write(project, files={"../x": "y"})
        assert invalid.value.field == "files[0].path"
        with pytest.raises(Unauthorized):
            bad.ensure(project)
    assert len(client.list_actions(project)) == 1


class _Flaky(BaseHTTPRequestHandler):
    """Answers 429 with Retry-After, then 503, then accepts; records what it saw."""

    seen: list[tuple[float, str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append((time.monotonic(), self.headers.get("Idempotency-Key")))
        if len(self.seen) == 1:
            self._reply(
                429, b'{"error": {"code": "slow_down", "message": "later"}}', {"Retry-After": "1"}
            )
        elif len(self.seen) == 2:
            self._reply(503, b'{"error": {"code": "down", "message": "down"}}', {})
        else:
            self._reply(202, b'{"action_id": "a-1", "status": "queued"}', {})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_retries_honour_retry_after_and_keep_the_idempotency_key() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Flaky.seen = []
    try:
        with HttpWorkspaceClient(
            f"http://127.0.0.1:{server.server_port}", backoff_initial=0.05
        ) as c:
            handle = c.ensure("p-retry")
    finally:
        server.shutdown()
    assert handle.id == "a-1"
    assert len(_Flaky.seen) == 3
    keys = {key for _, key in _Flaky.seen}
    assert len(keys) == 1 and None not in keys
    assert _Flaky.seen[1][0] - _Flaky.seen[0][0] >= 0.9  # waited as told, not its own 50 ms


def test_survives_an_api_restart_mid_burst(
    base_env: dict[str, str], log_dir: Path, shared_worker: Proc, settings: Any, project: str
) -> None:
    port = free_port()
    env = api_env(base_env)
    current = start_api(env, log_dir, port)
    total = 60
    keys = [f"burst-{project}-{i}" for i in range(total)]
    sent = threading.Event()
    count = 0
    lock = threading.Lock()

    def enqueue(key: str) -> str:
        nonlocal count
        with HttpWorkspaceClient(
            current.url, TOKEN, timeout=5, max_retries=20, backoff_max=1.0
        ) as c:
            action_id = c.enqueue(project, "command", idempotency_key=key, cmd=f"echo {key}").id
        with lock:
            count += 1
            if count == total // 3:
                sent.set()
        return action_id

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(enqueue, key) for key in keys]
            assert sent.wait(timeout=60)
            current.proc.kill()  # SIGKILL mid-burst: some requests die in flight
            killed_at = datetime.now(UTC)
            time.sleep(0.5)
            current = start_api(env, log_dir, port)
            ids = [f.result(timeout=120) for f in futures]
    finally:
        current.proc.stop()
    assert len(set(ids)) == total
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT idempotency_key, count(*) FROM actions WHERE project_id = :p GROUP BY 1"
            ),
            {"p": project},
        ).all()
        after = conn.execute(
            sa.text("SELECT count(*) FROM actions WHERE project_id = :p AND created_at > :t"),
            {"p": project, "t": killed_at},
        ).scalar_one()
    engine.dispose()
    assert dict(rows) == dict.fromkeys(keys, 1)
    assert after > 0, "the burst finished before the restart; the test proved nothing"
    assert after < total
    workspace = WorkspaceClient(settings)
    last = workspace.wait_for(ids[-1], timeout=60)
    assert last["status"] == "succeeded"


def test_sync_over_http_sends_only_what_changed(hc: HttpWorkspaceClient, project: str) -> None:
    assert hc.get_manifest(project) == {"project_id": project, "manifest_seq": None, "files": {}}
    files = {f"src/f{i}.txt": f"{i}\n" for i in range(40)}
    assert hc.sync(project, files, timeout=30)["files_written"] == 40
    recorded = hc.get_manifest(project)
    assert recorded["manifest_seq"] is not None and len(recorded["files"]) == 40
    files["src/f7.txt"] = "seven\n"
    again = hc.sync(project, files, timeout=30)
    assert again["files_written"] == 1 and again["files_unchanged"] == 39
    assert hc.read(project, paths=["src/f7.txt"]).wait(timeout=30)["files"][0]["content"] == (
        "seven\n"
    )
    with pytest.raises(ValidationFailed):
        hc.get_manifest("../nope")
