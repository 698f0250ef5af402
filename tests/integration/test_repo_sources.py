"""Repo sources end to end (issue 10): the source policy at the edge and in the worker, host git
that reads nothing the sandbox wrote, and ``/workspace`` as a real git checkout.

Real Postgres and Redis, a real ``qai-jobs worker`` on the local provider under bubblewrap, a
real ``qai-jobs api``; origins are repositories the test makes in its tmp dir (``file``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from qai_jobs.client import ActionHandle, WorkspaceClient
from qai_jobs.errors import ActionFailed, ValidationFailed
from tests.conftest import settings_for
from tests.integration.api_helpers import api_env, start_api
from tests.support.procs import QAI, Proc, start_worker

WAIT = 120  # hang guard only
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing")


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {
        **isolated_env,
        "WORKSPACE_RUNTIME": "local",
        "WORKSPACE_LOCAL_ISOLATION": "bwrap",
        "WORKSPACE_REPO_SCHEMES": "https,file",
    }


@pytest.fixture(scope="module")
def worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir, concurrency=2, name="repo-sources")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(env: dict[str, str], worker: Proc) -> WorkspaceClient:
    return WorkspaceClient(settings_for(env))


@pytest.fixture
def project() -> str:
    return f"rs-{uuid.uuid4().hex[:10]}"


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_origin(where: Path, text: str = "version one\n") -> Path:
    where.mkdir(parents=True)
    git(where, "init", "-q", "-b", "main")
    (where / "README.md").write_text(text)
    git(where, "add", ".")
    git(where, "commit", "-q", "-m", "one")
    return where


def commit(origin: Path, name: str, text: str) -> str:
    (origin / name).write_text(text)
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", f"add {name}")
    return git(origin, "rev-parse", "HEAD")


def ok(handle: ActionHandle[Any]) -> Any:
    return handle.wait(WAIT)


def sh(client: WorkspaceClient, project: str, cmd: str) -> str:
    result = ok(client.command(project, cmd))
    assert result["exit_code"] == 0, result
    return str(result["stdout"]).strip()


def actions_of(client: WorkspaceClient, project: str) -> int:
    with client.engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM actions WHERE project_id = :p")
        return int(conn.execute(query, {"p": project}).scalar_one())


def test_local_sources_are_refused_before_enqueueing_unless_enabled(
    isolated_env: dict[str, str], log_dir: Path, tmp_path: Path, project: str
) -> None:
    origin = make_origin(tmp_path / "origin")
    default = {**isolated_env, "WORKSPACE_RUNTIME": "local"}  # WORKSPACE_REPO_SCHEMES unset
    refused = [f"file://{origin}", str(origin), "ext::sh -c id", "git://h/r", "http://h/r"]
    refused.append("git@github.com:org/repo.git")  # scp-style: ssh, not enabled
    api = start_api(api_env(default), log_dir)
    try:
        with api.http() as http:
            for url in refused:
                answer = http.post(
                    f"/v1/projects/{project}/actions",
                    json={"kind": "ensure", "repo": {"url": url, "ref": "main"}},
                )
                assert answer.status_code == 422, (url, answer.text)
                error = answer.json()["error"]
                assert error["details"]["field"] == "repo.url", error
                assert (
                    "WORKSPACE_REPO_SCHEMES" in error["message"] or "repo.url" in error["message"]
                )
    finally:
        api.proc.stop()
    python = WorkspaceClient(settings_for(default))
    with pytest.raises(ValidationFailed) as info:
        python.ensure(project, repo={"url": f"file://{origin}", "ref": "main"})
    assert info.value.field == "repo.url"
    assert actions_of(python, project) == 0


def test_repo_source_is_a_real_checkout_that_fast_forwards(
    client: WorkspaceClient, project: str, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin")
    first = git(origin, "rev-parse", "HEAD")
    repo = {"url": f"file://{origin}", "ref": "main"}
    ok(client.ensure(project, repo=repo, files={"notes.txt": "mine\n"}, start_dev_server=False))
    assert sh(client, project, "git rev-parse HEAD") == first
    assert sh(client, project, "git remote get-url origin") == f"file://{origin.resolve()}"
    assert sh(client, project, "git status --porcelain") == "?? notes.txt"
    assert sh(client, project, "git log --format=%s") == "one"
    assert sh(client, project, "git rev-parse --abbrev-ref HEAD") == "main"
    assert client.get_workspace(project)["repo"]["head"] == first

    second = commit(origin, "feature.txt", "new upstream file\n")
    ok(client.ensure(project, repo=repo, files={"notes.txt": "mine\n"}, start_dev_server=False))
    assert sh(client, project, "git rev-parse HEAD") == second
    assert sh(client, project, "cat feature.txt") == "new upstream file"
    assert sh(client, project, "cat notes.txt") == "mine"

    # The agent's side: diff, commit (with the checkout's default identity), log.
    sh(client, project, "echo changed >> README.md")
    assert "README.md" in sh(client, project, "git diff --stat")
    sh(client, project, "git add -A && git commit -q -m 'agent work'")
    assert sh(client, project, "git log --format=%s -n 2") == "agent work\nadd feature.txt"
    assert sh(client, project, "git rev-parse HEAD~1") == second

    # Upstream moves on while the sandbox holds a commit of its own: refused, nothing lost.
    commit(origin, "later.txt", "later\n")
    with pytest.raises(ActionFailed) as info:
        ok(client.ensure(project, repo=repo, start_dev_server=False))
    assert info.value.error["code"] == "repo_unavailable"
    assert "commits that are not in main" in info.value.error["message"]
    assert sh(client, project, "git log --format=%s -n 1") == "agent work"
    ok(client.destroy(project))


def test_urls_into_the_services_own_directories_are_refused(
    client: WorkspaceClient, env: dict[str, str], project: str, tmp_path: Path
) -> None:
    ok(client.ensure(project, start_dev_server=False))
    root = Path(env["WORKSPACE_ROOT"]).resolve()
    inside = next(p for p in root.iterdir() if p.name.startswith(project))
    link = tmp_path / "innocent"
    link.symlink_to(inside)
    for url in (f"file://{inside}", f"file://{link}", str(root)):
        with pytest.raises(ValidationFailed) as info:
            client.ensure(project, repo={"url": url, "ref": "main"})
        assert info.value.field == "repo.url" and "own directories" in str(info.value)
    # A foreign Celery producer skips the client's check: the worker refuses it on receipt.
    app = Celery(broker=env["REDIS_URL"])
    app.conf.task_serializer = "json"
    task_id = str(uuid.uuid4())
    kwargs = {"project_id": project, "repo": {"url": f"file://{link}", "ref": "main"}}
    app.send_task("qai_jobs.ensure", kwargs=kwargs, task_id=task_id)
    got = client.wait_for(task_id, timeout=WAIT)
    assert got["status"] == "failed", got
    assert got["error"]["code"] == "invalid_payload" and "repo.url" in got["error"]["message"]
    ok(client.destroy(project))


def test_host_git_reads_nothing_the_sandbox_planted(
    client: WorkspaceClient, project: str, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", "the real one\n")
    decoy = make_origin(tmp_path / "decoy", "a decoy\n")
    pwned = tmp_path / "pwned"  # a host path: inside the sandbox /tmp is its own
    ok(client.ensure(project, start_dev_server=False))
    redirect = (
        f'[url "file://{decoy}"]\n\tinsteadOf = file://{origin}\n'
        f"[core]\n\tfsmonitor = touch {pwned}\n\thooksPath = /workspace/hooks\n"
    )
    home_files = {
        ".gitconfig": redirect,
        ".config/git/config": redirect,
        ".config/git/attributes": "* text eol=crlf\n",
        ".netrc": "machine github.com login evil password planted\n",
    }
    for path, text in home_files.items():
        ok(client.command(project, f"mkdir -p ~/.config/git && printf %s {_q(text)} > ~/{path}"))
    repo = {"url": f"file://{origin}", "ref": "main"}
    ok(client.ensure(project, repo=repo, start_dev_server=False))
    assert sh(client, project, "git rev-parse HEAD") == git(origin, "rev-parse", "HEAD")
    # Now plant in the checkout itself: hooks and fsmonitor for whoever runs git on it next.
    hook = f"#!/bin/sh\ntouch {pwned}\ntouch /workspace/hook-ran-inside\n"
    sh(client, project, f"printf %s {_q(hook)} > .git/hooks/post-merge && chmod +x .git/hooks/*")
    sh(client, project, f"git config core.fsmonitor 'touch {pwned}'")
    sh(client, project, "git config core.hooksPath .git/hooks")
    newer = commit(origin, "next.txt", "next\n")
    ok(client.ensure(project, repo=repo, start_dev_server=False))
    assert sh(client, project, "git rev-parse HEAD") == newer
    # The sandbox's hook ran in the sandbox; nothing ran on the host.
    assert sh(client, project, "ls hook-ran-inside") == "hook-ran-inside"
    assert not pwned.exists()
    ok(client.destroy(project))


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_ssh_without_a_key_refuses_to_start(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, "WORKSPACE_RUNTIME": "local", "WORKSPACE_REPO_SCHEMES": "https,ssh"}
    env.pop("WORKSPACE_REPO_SSH_KEY", None)
    for command in (["worker"], ["api"]):
        proc = subprocess.run(
            [*QAI, *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "WORKSPACE_REPO_SSH_KEY" in lines[0], lines


def test_a_token_in_an_https_url_stays_out_of_rows_errors_and_logs(
    client: WorkspaceClient, worker: Proc, project: str
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    url = f"https://x-access-token:{token}@127.0.0.1:1/org/repo.git"  # nothing listens there
    with pytest.raises(ActionFailed) as info:
        ok(client.ensure(project, repo={"url": url, "ref": "main"}, start_dev_server=False))
    error = info.value.error
    assert error["code"] == "repo_unavailable", error
    assert "127.0.0.1:1/org/repo.git" in error["message"] and token not in error["message"]
    with client.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.payload::text || coalesce(w.repo::text, '') FROM actions a"
                " LEFT JOIN workspaces w ON w.project_id = a.project_id"
                " WHERE a.project_id = :p"
            ),
            {"p": project},
        ).scalars()
        stored = " ".join(rows)
    assert "qai-sealed:" in stored and token not in stored
    assert token not in worker.log()
    ok(client.destroy(project))
