"""Issue 3 through the whole pipeline: client enqueue -> real worker -> local provider -> result.

Every test drives real actions (Postgres, Redis, a `qai-jobs worker` subprocess with
``WORKSPACE_RUNTIME=local``, bubblewrap where installed, real HTTP against the preview) and
checks what a user would: the preview answers, files read back, errors name their cause, and a
failed action leaves the project usable with nothing pretending to have worked.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from qai_jobs.client import ActionHandle, WorkspaceClient
from qai_jobs.errors import ActionFailed
from tests.conftest import settings_for
from tests.support.procs import REPO, Proc, start_worker

HELLO = REPO / "examples" / "hello"
WAIT = 90  # hang guard only
MAX_OUTPUT = 4096
DEV_TIMEOUT = 8  # small, yet roomy enough for node to start on a loaded 2-CPU host


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {
        **isolated_env,
        "WORKSPACE_RUNTIME": "local",
        # Small so the never-listening dev server fails fast; hello answers well within it.
        "WORKSPACE_DEV_SERVER_TIMEOUT_SECONDS": str(DEV_TIMEOUT),
        "WORKSPACE_MAX_OUTPUT_BYTES": str(MAX_OUTPUT),
        "WORKSPACE_REPO_SCHEMES": "https,file",  # the git tests' origins are local
    }


@pytest.fixture(scope="module")
def local_worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir, concurrency=2, name="local-pipeline")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def lc(env: dict[str, str], local_worker: Proc) -> WorkspaceClient:
    return WorkspaceClient(settings_for(env))


@pytest.fixture
def project() -> str:
    return f"lp-{uuid.uuid4().hex[:10]}"


def hello_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in HELLO.iterdir() if p.is_file()}


def ok(handle: ActionHandle) -> dict[str, Any]:
    return handle.wait(WAIT)


def failure(handle: ActionHandle) -> dict[str, Any]:
    with pytest.raises(ActionFailed) as info:
        handle.wait(WAIT)
    return info.value.error


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def dev_process(lc: WorkspaceClient, project: str) -> dict[str, Any] | None:
    with lc.engine.connect() as conn:
        row: dict[str, Any] | None = conn.execute(
            sa.text("SELECT dev_process FROM workspaces WHERE project_id = :p"), {"p": project}
        ).scalar_one()
    return row


def host_processes_with(marker: str) -> list[int]:
    """Pids on the host whose command line mentions marker (the sandbox's pid namespace hides
    nothing from the host)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(int(entry))
    return found


def read_text(lc: WorkspaceClient, project: str, path: str) -> str | None:
    result = ok(lc.read(project, [path]))
    if result["missing"]:
        return None
    content: str = result["files"][0]["content"]
    return content


# --- ensure -------------------------------------------------------------------------------------


def test_ensure_hello_serves_a_preview_and_warm_ensure_changes_nothing(
    lc: WorkspaceClient, project: str
) -> None:
    first = ok(lc.ensure(project, files=hello_files()))
    assert first["created"] is True and first["provider"] == "local"
    assert first["files_written"] == 3 and first["installed"] is True
    url = first["preview_url"]
    assert url.startswith("http://127.0.0.1:")
    page = httpx.get(url, timeout=5)
    assert page.status_code == 200 and "Hello from qai-jobs" in page.text
    pid = dev_process(lc, project)["pid"]  # type: ignore[index]

    warm = ok(lc.ensure(project, files=hello_files()))
    assert warm["created"] is False and warm["files_written"] == 0 and warm["files_unchanged"] == 3
    assert warm["installed"] is False
    assert warm["preview_url"] == url and lc.get_workspace(project)["preview_url"] == url
    assert dev_process(lc, project)["pid"] == pid  # type: ignore[index]
    assert answers(url)

    manifest = json.loads(hello_files()["package.json"])
    changed = {
        **hello_files(),
        "package.json": json.dumps({**manifest, "version": "1.0.1"}, indent=2),
    }
    again = ok(lc.ensure(project, files=changed))
    assert again["files_written"] == 1 and again["installed"] is True
    assert answers(again["preview_url"])
    ok(lc.destroy(project))


# --- errors a user must get ---------------------------------------------------------------------


def test_dev_server_that_never_listens_times_out_with_its_log(
    lc: WorkspaceClient, project: str
) -> None:
    marker = f"sleep {900 + uuid.uuid4().int % 99}"
    error = failure(
        lc.ensure(project, files={"a.txt": "a\n"}, dev_command=f"echo warming-up-now; {marker}")
    )
    assert error["code"] == "dev_server_timeout" and error["retryable"] is False
    assert "warming-up-now" in error["message"] and f"{DEV_TIMEOUT}s" in error["message"]
    assert host_processes_with(marker) == []  # the stuck server was stopped, not left behind
    ws = lc.get_workspace(project)
    assert ws["preview_url"] is None and dev_process(lc, project) is None
    # Not wedged: the project takes the next action, and a good dev command now works.
    assert ok(lc.command(project, "cat a.txt"))["stdout"] == "a\n"
    fixed = ok(lc.ensure(project, files=hello_files(), dev_command="node server.js --port {port}"))
    assert answers(fixed["preview_url"])
    ok(lc.destroy(project))


def test_dev_command_that_exits_at_once_fails_with_its_output(
    lc: WorkspaceClient, project: str
) -> None:
    error = failure(
        lc.ensure(project, files={"a.txt": "a\n"}, dev_command="echo config-is-broken >&2; exit 1")
    )
    assert error["code"] == "dev_server_timeout" and "config-is-broken" in error["message"]
    assert lc.get_workspace(project)["preview_url"] is None
    assert ok(lc.command(project, "true"))["exit_code"] == 0


def test_install_failure_reports_the_output_tail_and_is_retried_next_time(
    lc: WorkspaceClient, project: str
) -> None:
    error = failure(
        lc.ensure(project, files=hello_files(), install_command="echo boom >&2; exit 3")
    )
    assert error["code"] == "install_failed" and error["retryable"] is False
    assert "boom" in error["message"] and "3" in error["message"]
    assert lc.get_workspace(project)["preview_url"] is None and dev_process(lc, project) is None
    # The failed install is not remembered as done: the next ensure installs again.
    again = ok(
        lc.ensure(project, files=hello_files(), install_command="echo installed > .installed")
    )
    assert again["installed"] is True and again["files_written"] == 0
    assert read_text(lc, project, ".installed") == "installed\n"
    ok(lc.destroy(project))


def test_unreachable_repo_is_repo_unavailable_and_records_nothing(
    lc: WorkspaceClient, project: str, tmp_path: Path
) -> None:
    error = failure(
        lc.ensure(
            project,
            repo={"url": str(tmp_path / "no-such-repo"), "ref": "main"},
            start_dev_server=False,
        )
    )
    assert error["code"] == "repo_unavailable" and error["retryable"] is False
    assert "no-such-repo" in error["message"]
    assert lc.get_workspace(project)["repo"] is None
    assert ok(lc.command(project, "echo fine"))["stdout"] == "fine\n"


def test_restoring_an_unknown_snapshot_is_snapshot_not_found(
    lc: WorkspaceClient, project: str
) -> None:
    ok(lc.write(project, files={"keep.txt": "kept\n"}))
    error = failure(lc.restore(project, "snap-does-not-exist"))
    assert error["code"] == "snapshot_not_found" and "snap-does-not-exist" in error["message"]
    assert lc.get_workspace(project)["last_snapshot_id"] is None
    assert read_text(lc, project, "keep.txt") == "kept\n"
    ok(lc.destroy(project))


# --- git source ---------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    out = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def test_git_source_clones_then_fast_forwards(
    lc: WorkspaceClient, project: str, tmp_path: Path
) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "README.md").write_text("version one\n")
    (origin / "src").mkdir()
    (origin / "src" / "app.txt").write_text("app\n")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "one")
    repo = {"url": str(origin), "ref": "main"}

    ok(lc.ensure(project, repo=repo, start_dev_server=False))
    assert read_text(lc, project, "README.md") == "version one\n"
    assert read_text(lc, project, "src/app.txt") == "app\n"
    assert lc.get_workspace(project)["repo"]["head"] == git(origin, "rev-parse", "HEAD")

    (origin / "README.md").write_text("version two\n")
    git(origin, "commit", "-q", "-am", "two")
    ok(lc.ensure(project, repo=repo, start_dev_server=False))
    assert ok(lc.command(project, "cat README.md"))["stdout"] == "version two\n"
    assert lc.get_workspace(project)["repo"]["head"] == git(origin, "rev-parse", "HEAD")
    ok(lc.destroy(project))


# --- files --------------------------------------------------------------------------------------


def test_binary_file_round_trips_as_base64(lc: WorkspaceClient, project: str) -> None:
    data = bytes(range(256)) * 8 + b"\xff\xfe\x00"
    wire = base64.b64encode(data).decode()
    written = ok(
        lc.write(project, files=[{"path": "img/blob.bin", "content": wire, "encoding": "base64"}])
    )
    assert written["files_written"] == 1
    got = ok(lc.read(project, ["img/blob.bin", "absent.bin"]))
    assert got["missing"] == ["absent.bin"]
    (entry,) = got["files"]
    assert entry["encoding"] == "base64" and entry["size"] == len(data)
    assert base64.b64decode(entry["content"]) == data
    assert ok(lc.command(project, "wc -c < img/blob.bin"))["stdout"].strip() == str(len(data))
    ok(lc.destroy(project))


# --- lifecycle ----------------------------------------------------------------------------------


def test_sleep_wake_snapshot_restore_destroy(
    lc: WorkspaceClient, project: str, env: dict[str, str]
) -> None:
    files = hello_files()
    url = ok(lc.ensure(project, files=files, dev_command="node server.js --port {port}"))[
        "preview_url"
    ]
    assert answers(url)

    slept = ok(lc.sleep(project))
    assert slept["snapshot_id"] and lc.get_workspace(project)["status"] == "sleeping"
    assert not answers(url)
    woke = ok(lc.wake(project))
    assert answers(woke["preview_url"]) and lc.get_workspace(project)["status"] == "ready"
    assert read_text(lc, project, "server.js") == files["server.js"]

    snap = ok(lc.snapshot(project))["snapshot_id"]
    ok(
        lc.write(
            project, files={"extra.txt": "extra\n", "server.js": files["server.js"] + "// edited\n"}
        )
    )
    restored = ok(lc.restore(project, snap))
    assert ok(lc.read(project, ["extra.txt"]))["missing"] == ["extra.txt"]
    assert read_text(lc, project, "server.js") == files["server.js"]
    assert answers(restored["preview_url"])

    sandbox_id = lc.get_workspace(project)["sandbox_id"]
    ok(lc.destroy(project))
    assert lc.get_workspace(project)["status"] == "destroyed"
    assert not (Path(env["WORKSPACE_ROOT"]) / sandbox_id).exists()
    assert not answers(restored["preview_url"])


# --- commands -----------------------------------------------------------------------------------


def test_command_timeout_kills_the_process_group(lc: WorkspaceClient, project: str) -> None:
    marker = f"sleep {800 + uuid.uuid4().int % 99}"
    result = ok(lc.command(project, f"echo before; {marker} & {marker}; echo never", timeout_s=1))
    assert result["timed_out"] is True and result["exit_code"] == 124
    assert result["stdout"] == "before\n" and result["duration_ms"] < 10_000
    assert host_processes_with(marker) == []  # the background child went with the group


def test_command_output_over_the_limit_is_truncated(lc: WorkspaceClient, project: str) -> None:
    result = ok(lc.command(project, "head -c 100000 /dev/zero | tr '\\0' x; echo done >&2"))
    assert result["exit_code"] == 0 and result["truncated"] is True
    assert 0 < len(result["stdout"]) <= MAX_OUTPUT and set(result["stdout"]) == {"x"}
    assert result["stderr"] == "done\n"
    small = ok(lc.command(project, "echo short"))
    assert small["truncated"] is False and small["stdout"] == "short\n"
    ok(lc.destroy(project))


def test_any_bytes_are_data_nul_in_output_reads_and_logs(lc: WorkspaceClient, project: str) -> None:
    """Output, files and logs may hold any bytes. A NUL (which Postgres' jsonb cannot store)
    used to leave the action running with its lease held until recovery called it lost."""
    dev = "node -e \"process.stdout.write('ready\\0\\n'); require('http').createServer((q, r) => r.end('ok')).listen(process.env.PORT)\""
    ok(lc.ensure(project, dev_command=dev))
    out = ok(lc.command(project, "printf 'a\\0b'; printf 'x\\0y' >&2"))
    assert (out["stdout"], out["stderr"], out["exit_code"]) == ("a\ufffdb", "x\ufffdy", 0)
    listing = ok(lc.command(project, "find . -maxdepth 1 -name '*.json' -print0"))
    assert "\ufffd" in listing["stdout"] or listing["stdout"] == ""
    utf16 = "h\u00e9llo".encode("utf-16")
    nul_text = b"plain\x00text"
    ok(lc.write(project, files={"utf16.txt": utf16, "nul.txt": nul_text}))
    got = {f["path"]: f for f in ok(lc.read(project, ["utf16.txt", "nul.txt"]))["files"]}
    for path, raw in (("utf16.txt", utf16), ("nul.txt", nul_text)):
        assert got[path]["encoding"] == "base64"
        assert base64.b64decode(got[path]["content"]) == raw and got[path]["size"] == len(raw)
    assert "ready\ufffd" in ok(lc.logs(project))["text"]
    assert ok(lc.command(project, "echo still usable"))["stdout"] == "still usable\n"
