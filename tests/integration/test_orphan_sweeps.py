"""Orphan sweeps that stop exactly what nothing owns.

- Local: a real worker (local provider, bubblewrap) runs two workspaces with real dev servers;
  one loses its row and its directory behind its back, another only its row. Each host's
  workers sweep their own sandbox processes every WORKSPACE_SWEEP_SECONDS: the orphans'
  bwrap, node, pasta and dnsmasq are gone, the owned workspace's dev server still answers.
- Cloud: "owned" and "busy" are read as of one moment (real Postgres): an ensure that commits
  between two separate reads would be in neither, and its new sandbox terminated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from qai_jobs.client import WorkspaceClient
from qai_jobs.db import maintenance
from qai_jobs.providers.local.layout import Layout
from tests.conftest import settings_for
from tests.support.procs import REPO, start_worker

WAIT = 90  # hang guard only
HELLO = REPO / "examples" / "hello"


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def processes_naming(path: Path) -> list[int]:
    """Host pids whose command line names ``path`` (bwrap's binds, pasta's and dnsmasq's files)."""
    marker = (str(path) + "/").encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker in cmdline and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def kill_naming(path: Path) -> None:
    """Whatever a failed run left of this test's own sandboxes (the root is the test's)."""
    for pid in processes_naming(path):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_local_processes_nothing_owns_are_stopped(
    isolated_env: dict[str, str], log_dir: Path
) -> None:
    env = {**isolated_env, "WORKSPACE_RUNTIME": "local", "WORKSPACE_SWEEP_SECONDS": "1"}
    root = Path(env["WORKSPACE_ROOT"]).resolve()
    worker = start_worker(env, log_dir, concurrency=2, name="local-orphans")
    lc = WorkspaceClient(settings_for(env))
    try:
        files = {p.name: p.read_text() for p in HELLO.iterdir() if p.is_file()}
        projects = {
            what: f"orph-{what}-{uuid.uuid4().hex[:6]}" for what in ("gone", "rowless", "kept")
        }
        urls, dirs = {}, {}
        for what, project in projects.items():
            got = lc.ensure(project, files=files, dev_command="node server.js --port {port}")
            urls[what] = got.wait(WAIT)["preview_url"]
            dirs[what] = root / lc.get_workspace(project)["sandbox_id"]
            assert answers(urls[what])
            # bwrap (twice: outside and as the namespace's init), pasta, dnsmasq
            assert len(processes_naming(dirs[what])) >= 3, processes_naming(dirs[what])

        # Behind its back: the row and the whole directory of one, only the row of another.
        with lc.engine.begin() as conn:
            for what in ("gone", "rowless"):
                conn.execute(
                    sa.text("DELETE FROM workspaces WHERE project_id = :p"), {"p": projects[what]}
                )
        shutil.rmtree(dirs["gone"], ignore_errors=True)  # a mounted namespace file stays
        assert not Layout(dirs["gone"]).tree.exists()

        for what in ("gone", "rowless"):
            wait_until(
                lambda d=dirs[what], u=urls[what]: not processes_naming(d) and not answers(u),
                timeout=30,
                what=f"the {what} workspace's processes to be stopped",
            )
        assert not dirs["gone"].exists()  # its leftovers released and removed
        assert (Layout(dirs["rowless"]).tree / "server.js").exists()  # data is never deleted
        assert answers(urls["kept"]) and len(processes_naming(dirs["kept"])) >= 3
        assert "orphan local sandbox" in worker.log()
        lc.destroy(projects["kept"]).wait(WAIT)
    finally:
        worker.stop()
        lc.engine.dispose()
        kill_naming(root)


def test_owned_and_busy_are_read_as_of_one_moment(isolated_env: dict[str, str]) -> None:
    settings = settings_for(isolated_env)
    lc = WorkspaceClient(settings)
    project = f"race-{uuid.uuid4().hex[:8]}"
    lc.ensure(project, files={"a.txt": "a"}, start_dev_server=False)  # queued: no worker runs
    engine = sa.create_engine(settings.database_url)
    flipped: list[bool] = []

    def ensure_commits(*_: Any) -> None:
        # Right after the sweep's first statement: the ensure records its new sandbox and
        # finishes, in one transaction, as the drainer's settle does.
        if flipped:
            return
        flipped.append(True)
        with lc.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE workspaces SET provider = 'e2b', sandbox_id = 'sb-race' "
                    "WHERE project_id = :p"
                ),
                {"p": project},
            )
            conn.execute(
                sa.text("UPDATE actions SET status = 'succeeded' WHERE project_id = :p"),
                {"p": project},
            )

    sa.event.listen(engine, "after_cursor_execute", ensure_commits)
    try:
        owned, busy = maintenance.owned_sandboxes(engine, ["sb-race"])
    finally:
        engine.dispose()
        lc.engine.dispose()
    assert flipped
    assert ("e2b", "sb-race") in owned or project in busy, (
        "the sandbox the ensure made was neither owned nor busy: the sweep would terminate it"
    )
