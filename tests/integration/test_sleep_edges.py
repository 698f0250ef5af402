"""Sleep at its edges, through real workers (and a real beat).

- The idle sweep reads a workspace as idle, then a user action starts a dev server, then the
  sweep's sleep is enqueued: the sleep must find the workspace active and do nothing (local
  provider, bubblewrap, a real node dev server answering HTTP).
- A workspace an action left in ``error`` with its sandbox still running is slept when idle;
  one whose sandbox is gone is not rebuilt just to be put to sleep (fake provider, real beat).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from qai_jobs.client import WorkspaceClient
from qai_jobs.errors import ActionFailed
from qai_jobs.providers.base import Sandbox
from qai_jobs.testing import FakeProvider, journal
from qai_jobs.worker.sweeps import idle_sleep
from tests.conftest import settings_for
from tests.support.procs import REPO, start_beat, start_worker

WAIT = 90  # hang guard only
HELLO = REPO / "examples" / "hello"
IDLE_MINUTES = 0.02  # 1.2 s
PERIOD = 0.5


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def activity(lc: WorkspaceClient, project: str) -> datetime:
    return datetime.fromisoformat(lc.get_workspace(project)["last_activity_at"])


@pytest.fixture
def local_env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, "WORKSPACE_RUNTIME": "local"}


def test_an_idle_sleep_enqueued_just_after_an_action_keeps_its_dev_server(
    local_env: dict[str, str], log_dir: Path
) -> None:
    worker = start_worker(local_env, log_dir, concurrency=1, name="sleep-edges-local")
    try:
        lc = WorkspaceClient(settings_for(local_env))
        project = f"se-{uuid.uuid4().hex[:10]}"
        files = {p.name: p.read_text() for p in HELLO.iterdir() if p.is_file()}
        lc.ensure(project, files=files, start_dev_server=False).wait(WAIT)
        # The sweep looks: idle since then, nothing in flight.
        seen_idle_since = activity(lc, project)
        # Before its sleep is enqueued, the user starts the dev server.
        url = lc.ensure(project, files=files, dev_command="node server.js --port {port}").wait(
            WAIT
        )["preview_url"]
        assert answers(url)
        after_user = activity(lc, project)
        slept = idle_sleep(lc, project, seen_idle_since).wait(WAIT)
        assert slept == {"snapshot_id": None, "skipped": True}
        assert lc.get_workspace(project)["status"] == "ready"
        assert answers(url), "the idle sleep stopped the dev server the user had just started"
        # Not itself activity: the idle spell goes on from the user's action.
        assert activity(lc, project) == after_user
        # Idle for real since the last activity: the sweep's sleep does sleep.
        slept = idle_sleep(lc, project, activity(lc, project)).wait(WAIT)
        assert slept["snapshot_id"] and lc.get_workspace(project)["status"] == "sleeping"
        assert not answers(url)
        lc.destroy(project).wait(WAIT)
    finally:
        worker.stop()


def test_idle_error_workspaces_sleep_if_their_sandbox_runs_and_are_not_rebuilt_if_gone(
    isolated_env: dict[str, str], log_dir: Path
) -> None:
    env = {
        **isolated_env,
        "WORKSPACE_RUNTIME": "fake",
        "WORKSPACE_INACTIVITY_MINUTES": str(IDLE_MINUTES),
        "WORKSPACE_SWEEP_SECONDS": str(PERIOD),
    }
    settings = settings_for(env)
    lc = WorkspaceClient(settings)
    fake = FakeProvider(settings)
    worker = start_worker(env, log_dir, concurrency=2, name="sleep-edges-fake")
    beat = None
    try:
        running, gone = (f"se-{what}-{uuid.uuid4().hex[:8]}" for what in ("run", "gone"))
        for project in (running, gone):
            # A first install that fails leaves the workspace in error, its sandbox up.
            with pytest.raises(ActionFailed) as info:
                lc.ensure(
                    project,
                    files={"package.json": "{}\n"},
                    install_command="exit 3",
                    start_dev_server=False,
                ).wait(WAIT)
            assert info.value.error["code"] == "install_failed"
            assert lc.get_workspace(project)["status"] == "error"
        gone_sandbox = lc.get_workspace(gone)["sandbox_id"]
        fake.store.delete(f"sb:{gone_sandbox}", f"files:{gone_sandbox}")  # behind our back
        ran_sandbox = lc.get_workspace(running)["sandbox_id"]

        beat = start_beat(env, log_dir)
        wait_until(
            lambda: lc.get_workspace(running)["status"] == "sleeping",
            timeout=30,
            what="the error workspace with a live sandbox to sleep",
        )
        assert fake.status(Sandbox("fake", ran_sandbox, {})) == "sleeping"
        sleeps = wait_until(
            lambda: [a for a in lc.list_actions(gone) if a["kind"] == "sleep"],
            timeout=30,
            what="the sweep's sleep of the workspace whose sandbox is gone",
        )
        time.sleep(6 * PERIOD)  # several more sweeps
        sleeps = [a for a in lc.list_actions(gone) if a["kind"] == "sleep"]
        assert len(sleeps) == 1, "each sweep enqueued another sleep of the same idle spell"
        done = lc.get_action(sleeps[0]["id"])
        assert done["status"] == "succeeded" and done["result"] == {
            "snapshot_id": None,
            "skipped": True,
        }
        assert lc.get_workspace(gone)["status"] == "error"
        creates = [e for e in journal(settings.redis_url, gone) if e["op"] == "create"]
        assert len(creates) == 1, "a sandbox was made only to be put to sleep"
    finally:
        if beat is not None:
            beat.stop()
        worker.stop()
