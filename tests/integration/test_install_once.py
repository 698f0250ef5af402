"""Install once means once: a project sent without a lock file (the common case for a generated
app) installs on its first ensure, and the same files again do not install again, although the
install wrote package-lock.json into the workspace.

A real `qai-jobs worker` (local provider, bubblewrap) runs the real `npm install` of a real
package from the registry (is-number), chosen by the default rule (no lock file: npm install).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.client import WorkspaceClient
from tests.conftest import settings_for
from tests.support.procs import Proc, start_worker

WAIT = 300  # hang guard only: a first install fetches from the registry


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, "WORKSPACE_RUNTIME": "local"}


@pytest.fixture(scope="module")
def worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir, concurrency=1, name="install-once")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def lc(env: dict[str, str], worker: Proc) -> WorkspaceClient:
    return WorkspaceClient(settings_for(env))


def app(description: str) -> dict[str, str]:
    manifest = {
        "name": "install-once",
        "version": "1.0.0",
        "description": description,
        "dependencies": {"is-number": "7.0.0"},
    }
    return {
        "package.json": json.dumps(manifest, indent=2) + "\n",
        "index.js": "console.log(require('is-number')(5) ? 'number' : 'not');\n",
    }


def timed(handle: Any, figures: dict[str, float], what: str) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = handle.wait(WAIT)
    figures[what] = round(time.monotonic() - started, 2)
    return result


def test_an_app_sent_without_a_lock_file_installs_once(lc: WorkspaceClient) -> None:
    project = f"once-{uuid.uuid4().hex[:10]}"
    figures: dict[str, float] = {}
    first = timed(lc.ensure(project, files=app("v1"), start_dev_server=False), figures, "first")
    assert first["installed"] is True
    lock = lc.read(project, ["package-lock.json"]).wait(WAIT)
    assert lock["missing"] == [], "the install wrote no lock file: nothing to test"
    ran = lc.command(project, "node index.js").wait(WAIT)
    assert ran["stdout"] == "number\n", ran

    # The very same files: nothing changed, nothing to install.
    second = timed(lc.ensure(project, files=app("v1"), start_dev_server=False), figures, "same")
    assert second["installed"] is False and second["files_written"] == 0, second

    # The manifest changes: install again (from the lock file the first install wrote), once.
    third = timed(lc.ensure(project, files=app("v2"), start_dev_server=False), figures, "changed")
    assert third["installed"] is True and third["files_written"] == 1
    fourth = timed(lc.ensure(project, files=app("v2"), start_dev_server=False), figures, "again")
    assert fourth["installed"] is False

    # A command that rewrites the lock file is a change the next ensure installs for.
    edit = "node -e \"const f='package-lock.json',j=require('./'+f);j.name='x';" + (
        "require('fs').writeFileSync(f, JSON.stringify(j))\""
    )
    assert lc.command(project, edit).wait(WAIT)["exit_code"] == 0
    fifth = timed(
        lc.ensure(project, files=app("v2"), start_dev_server=False), figures, "lock edited"
    )
    assert fifth["installed"] is True
    # Asleep and awake again: the wake does not install either (an install would replace
    # node_modules: `npm ci` removes it first).
    installed_file = "stat -c %i:%Y node_modules/is-number/package.json"
    before = lc.command(project, installed_file).wait(WAIT)["stdout"]
    lc.sleep(project).wait(WAIT)
    timed(lc.wake(project), figures, "wake")
    assert lc.command(project, installed_file).wait(WAIT)["stdout"] == before
    sixth = timed(
        lc.ensure(project, files=app("v2"), start_dev_server=False), figures, "after wake"
    )
    assert sixth["installed"] is False
    print("\ninstall once, seconds per ensure:", figures)
    lc.destroy(project).wait(WAIT)
