"""The CLI as a user runs it: subprocesses against real workers on the local provider,
including the README walkthrough (`qai-jobs ensure demo --dir examples/hello`)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import REPO, Proc, start_worker


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, "WORKSPACE_RUNTIME": "local"}


@pytest.fixture(scope="module")
def local_worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir, concurrency=2, name="cli-local")
    yield proc
    proc.stop()


def qai(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qai_jobs", *args],
        env=env,
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_readme_walkthrough_preview_answers(
    env: dict[str, str], local_worker: Proc, project: str
) -> None:
    out = qai(env, "ensure", project, "--dir", "examples/hello")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:")
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and "Hello from qai-jobs" in page.text
    again = qai(env, "ensure", project, "--dir", "examples/hello", "--json")
    result = json.loads(again.stdout)
    assert (
        result["created"] is False and result["files_written"] == 0 and result["installed"] is False
    )
    assert result["preview_url"] == url
    logs = qai(env, "logs", project)
    assert logs.returncode == 0 and "hello: listening on" in logs.stdout
    assert qai(env, "destroy", project).returncode == 0


def test_run_prints_output_and_exits_with_the_code(
    env: dict[str, str], local_worker: Proc, project: str
) -> None:
    out = qai(env, "run", project, "--", "bash", "-c", "echo out; echo err >&2; exit 7")
    assert out.returncode == 7
    assert out.stdout == "out\n" and "err" in out.stderr
    assert qai(env, "run", project, "--", "true").returncode == 0


def test_write_read_and_inspection(
    env: dict[str, str], local_worker: Proc, project: str, tmp_path: Path
) -> None:
    source = tmp_path / "note.txt"
    source.write_text("from a file\n")
    assert qai(env, "write", project, "docs/note.txt", "--from", str(source)).returncode == 0
    assert qai(env, "write", project, "stdin.txt", stdin="piped\n").returncode == 0
    assert qai(env, "read", project, "docs/note.txt").stdout == "from a file\n"
    assert qai(env, "read", project, "stdin.txt").stdout == "piped\n"
    missing = qai(env, "read", project, "nope.txt")
    assert missing.returncode == 1 and "nope.txt" in missing.stderr
    status = json.loads(qai(env, "status", project, "--json").stdout)
    assert status["project_id"] == project and status["provider"] == "local"
    actions = json.loads(qai(env, "actions", project, "--json").stdout)
    assert [a["kind"] for a in actions] == ["write", "write", "read", "read", "read"]
    one = json.loads(qai(env, "action", actions[0]["id"], "--json").stdout)
    assert one["status"] == "succeeded"
    assert qai(env, "action", str(uuid.uuid4())).returncode == 1
    finished = qai(env, "cancel", actions[0]["id"])
    assert finished.returncode == 1 and "succeeded" in finished.stderr
    fleet = json.loads(qai(env, "status", "--json").stdout)
    assert fleet["actions_by_status"]["succeeded"] >= 5


def test_failures_and_bad_input_exit_codes(
    env: dict[str, str], local_worker: Proc, project: str
) -> None:
    bad = qai(env, "write", "not a valid id!", "x.txt", stdin="x")
    assert bad.returncode == 2 and "project_id" in bad.stderr and "Traceback" not in bad.stderr
    escape = qai(env, "read", project, "../etc/passwd")
    assert escape.returncode == 2 and "paths" in escape.stderr
    failed = qai(env, "restore", project, "no-such-snapshot")
    assert failed.returncode == 1 and "snapshot_not_found" in failed.stderr
    doctor = qai(env, "doctor", "--json")
    names = {c["name"]: c["status"] for c in json.loads(doctor.stdout)}
    assert names["postgres"] == "ok" and names["redis"] == "ok"


def test_doctor_reports_cloud_providers_without_secrets(env: dict[str, str]) -> None:
    cloud = {
        **env,
        "WORKSPACE_RUNTIME": "modal,e2b",
        "MODAL_TOKEN_ID": "ak-id-visible-nowhere",
        "E2B_API_KEY": "e2b_key_visible_nowhere",
    }
    out = qai(cloud, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["provider modal"]["status"] == "warn"  # the token secret is missing
    assert "MODAL_TOKEN_SECRET" in checks["provider modal"]["detail"]
    assert "provider e2b" in checks
    assert "visible-nowhere" not in out.stdout + out.stderr
    assert "visible_nowhere" not in out.stdout + out.stderr
