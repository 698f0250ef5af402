"""A local workspace's env values are never written to disk on the worker host.

They stay sealed in Postgres and the worker hands them to every command and dev server start;
the sandbox's meta.json (and nothing else under WORKSPACE_ROOT) holds them, before or after a
sleep and wake, while the dev server and commands still see them.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qai_jobs.client import WorkspaceClient
from tests.conftest import settings_for
from tests.support.procs import Proc, start_worker
from tests.support.scan import files_holding

WAIT = 120
# Answers with the variable it was started with; prints nothing, so its log cannot hold it.
SERVER = (
    "node -e \"require('http').createServer((q, s) => s.end(process.env.SECRET_X || 'unset'))"
    '.listen(process.env.PORT)"'
)


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, "WORKSPACE_RUNTIME": "local"}


@pytest.fixture(scope="module")
def lc(env: dict[str, str], log_dir: Path) -> Iterator[WorkspaceClient]:
    proc: Proc = start_worker(env, log_dir, concurrency=1, name="env-at-rest")
    yield WorkspaceClient(settings_for(env))
    proc.stop()


def test_env_values_stay_off_the_disk_and_reach_processes_after_sleep_and_wake(
    lc: WorkspaceClient, env: dict[str, str]
) -> None:
    project = f"envr-{uuid.uuid4().hex[:8]}"
    value = f"value-123-{secrets.token_hex(6)}"
    root = Path(env["WORKSPACE_ROOT"])
    ensured = lc.ensure(
        project, files={"a.txt": "a"}, env={"SECRET_X": value}, dev_command=SERVER
    ).wait(WAIT)
    try:
        assert httpx.get(ensured["preview_url"], timeout=10).text == value
        ran = lc.command(project, cmd="printenv SECRET_X").wait(WAIT)
        assert ran["stdout"].strip() == value
        meta = [p for p in root.rglob("meta.json")]
        assert meta, "the sandbox's meta.json was not found: the scan would prove nothing"
        assert files_holding(root, value.encode()) == []

        lc.sleep(project).wait(WAIT)
        woke = lc.wake(project).wait(WAIT)
        preview = lc.preview(project).wait(WAIT)
        assert preview["healthy"], preview
        assert httpx.get(woke["preview_url"], timeout=10).text == value
        ran = lc.command(project, cmd="printenv SECRET_X").wait(WAIT)
        assert ran["stdout"].strip() == value
        assert files_holding(root, value.encode()) == []
        assert files_holding(root.parent, value.encode()) == []  # snapshots live beside it
    finally:
        lc.destroy(project).wait(WAIT)
