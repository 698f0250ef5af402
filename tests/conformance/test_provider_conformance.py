"""Behaviour every provider must show (see conftest.py for the provider registry).

Commands in the shared tests use only what the fake provider's interpreter understands
(true, false, exit N, echo, sleep, cat); real-shell behaviour is gated by capabilities.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from qai_jobs.errors import PermanentError, SandboxGone
from qai_jobs.providers.base import SandboxStatus
from qai_jobs.sync import sha256
from tests.conformance.conftest import Harness

BINARY = bytes(range(256)) * 4
FILES = [
    ("README.md", "héllo wörld\n".encode()),
    ("src/app/page.tsx", b"export default 1\n"),
    ("assets/deep/er/logo.bin", BINARY),
]


def sh(cmd: str) -> list[str]:
    return ["bash", "-lc", cmd]


# -- lifecycle -------------------------------------------------------------------------------
def test_create_status_destroy(h: Harness) -> None:
    sb = h.create()
    assert sb.provider == h.provider.name
    assert json.loads(json.dumps(sb.to_json())) == sb.to_json()
    assert h.provider.status(sb) is SandboxStatus.RUNNING
    h.provider.destroy(sb)
    assert h.provider.status(sb) is SandboxStatus.GONE
    h.provider.destroy(sb)  # already gone: not an error


def test_adopt_finds_existing_and_refuses_unknown(h: Harness) -> None:
    sb = h.create()
    h.provider.write_files(sb, [("a.txt", b"1")])
    again = h.provider.adopt(sb.sandbox_id, h.spec())
    assert again.sandbox_id == sb.sandbox_id
    assert h.provider.read_files(again, ["a.txt"]) == {"a.txt": b"1"}
    with pytest.raises(SandboxGone):
        h.provider.adopt("no-such-sandbox-0000", h.spec())


def test_adopt_refuses_another_projects_sandbox(h: Harness) -> None:
    theirs = h.create("someone-else")
    h.provider.write_files(theirs, [("secret.txt", b"theirs")])
    with pytest.raises(PermanentError) as refused:
        h.provider.adopt(theirs.sandbox_id, h.spec("intruder"))
    assert refused.value.code == "sandbox_not_found"
    # Untouched, and still its owner's to adopt.
    again = h.provider.adopt(theirs.sandbox_id, h.spec("someone-else"))
    assert h.provider.read_files(again, ["secret.txt"]) == {"secret.txt": b"theirs"}


# -- files -----------------------------------------------------------------------------------
def test_files_round_trip_binary_and_nested(h: Harness) -> None:
    sb = h.create()
    h.provider.write_files(sb, FILES)
    got = h.provider.read_files(sb, [p for p, _ in FILES] + ["missing.txt"])
    assert got == {**dict(FILES), "missing.txt": None}
    expected = {p: sha256(d) for p, d in FILES}
    assert h.provider.hashes(sb) == expected
    assert h.provider.hashes(sb, ["README.md", "nope"]) == {"README.md": expected["README.md"]}


def test_overwrite_and_delete(h: Harness) -> None:
    sb = h.create()
    h.provider.write_files(sb, FILES)
    h.provider.write_files(sb, [("README.md", b"v2")])
    assert h.provider.read_files(sb, ["README.md"]) == {"README.md": b"v2"}
    deleted = h.provider.delete_files(sb, ["README.md", "never-existed.txt"])
    assert deleted == ["README.md"]
    assert h.provider.read_files(sb, ["README.md"]) == {"README.md": None}
    assert "README.md" not in h.provider.hashes(sb)


def test_a_file_becomes_a_directory_and_back(h: Harness) -> None:
    """What a delta sync does when a tree turns `lib` into `lib/index.js`: delete, then write."""
    sb = h.create()
    h.provider.write_files(sb, [("lib", b"a file")])
    assert h.provider.hashes(sb, ["lib/index.js"]) == {}  # a parent that is a file: missing
    assert h.provider.delete_files(sb, ["lib"]) == ["lib"]
    h.provider.write_files(sb, [("lib/index.js", b"now a directory")])
    assert h.provider.hashes(sb) == {"lib/index.js": sha256(b"now a directory")}
    # Deleting a directory's last file leaves no directory in the way of a file of its name.
    assert h.provider.delete_files(sb, ["lib/index.js"]) == ["lib/index.js"]
    h.provider.write_files(sb, [("lib", b"a file again")])
    assert h.provider.read_files(sb, ["lib"]) == {"lib": b"a file again"}


def test_whole_tree_hashes_skip_ignored_paths(h: Harness) -> None:
    sb = h.create()
    ignored = [("node_modules/x/index.js", b"x"), (".next/cache", b"c"), ("debug.log", b"l")]
    h.provider.write_files(sb, [("index.js", b"i"), *ignored])
    assert h.provider.hashes(sb) == {"index.js": sha256(b"i")}
    # Ignored means "not synced", not "unreadable".
    assert h.provider.read_files(sb, ["node_modules/x/index.js"])["node_modules/x/index.js"] == b"x"


def test_reads_are_refused_by_size_before_reading(h: Harness) -> None:
    sb = h.create()
    settings = h.provider.settings
    settings.workspace_max_file_bytes, settings.workspace_max_action_bytes = 1000, 1500
    h.provider.write_files(sb, [("a", b"a" * 800), ("b", b"b" * 800), ("big", b"x" * 1001)])
    with pytest.raises(PermanentError) as info:
        h.provider.read_files(sb, ["a", "big"])
    assert info.value.code == "file_too_large" and "'big'" in info.value.message
    with pytest.raises(PermanentError) as info:
        h.provider.read_files(sb, ["a", "b"])
    assert info.value.code == "read_too_large"
    assert h.provider.read_files(sb, ["a", "nope"]) == {"a": b"a" * 800, "nope": None}


def test_hashes_leave_out_files_over_the_cap(h: Harness) -> None:
    sb = h.create()
    settings = h.provider.settings
    settings.workspace_max_file_bytes, settings.workspace_snapshot_max_file_bytes = 500, 1000
    h.provider.write_files(sb, [("small", b"s" * 1000), ("big", b"x" * 1001)])
    assert h.provider.hashes(sb) == {"small": sha256(b"s" * 1000)}
    assert h.provider.hashes(sb, ["small", "big"]) == {"small": sha256(b"s" * 1000)}


# -- commands --------------------------------------------------------------------------------
@pytest.mark.parametrize(("cmd", "code"), [("true", 0), ("false", 1), ("exit 7", 7)])
def test_run_exit_codes(h: Harness, cmd: str, code: int) -> None:
    sb = h.create()
    result = h.provider.run(sb, sh(cmd))
    assert (result.exit_code, result.timed_out, result.truncated) == (code, False, False)


def test_run_output_is_live_and_kept(h: Harness) -> None:
    sb = h.create()
    chunks: list[tuple[str, bytes]] = []
    result = h.provider.run(
        sb, sh("echo hello world"), on_output=lambda s, c: chunks.append((s, c))
    )
    assert result.stdout == "hello world\n"
    assert b"".join(c for s, c in chunks if s == "stdout") == b"hello world\n"
    assert result.duration_ms >= 0


def test_run_sees_written_files(h: Harness) -> None:
    sb = h.create()
    h.provider.write_files(sb, [("notes.txt", b"from the host\n")])
    assert h.provider.run(sb, sh("cat notes.txt")).stdout == "from the host\n"


def test_run_timeout(h: Harness) -> None:
    sb = h.create()
    started = time.monotonic()
    result = h.provider.run(sb, sh("sleep 5"), timeout_s=0.3)
    assert result.timed_out
    assert result.exit_code == 124  # the contract of every provider: like coreutils timeout
    assert time.monotonic() - started < 3


def test_run_cwd_env_stderr(h: Harness) -> None:
    h.require("real_shell")
    sb = h.create()
    h.provider.write_files(sb, [("sub/dir/f.txt", b"x")])
    seen: list[str] = []
    result = h.provider.run(
        sb,
        sh('ls; echo "$GREETING"; echo oops >&2; exit 3'),
        cwd="sub/dir",
        env={"GREETING": "hi there"},
        on_output=lambda s, c: seen.append(s),
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "f.txt\nhi there\n", "oops\n")
    assert "stderr" in seen


def test_run_never_sees_worker_environment(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.require("real_shell")
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret@db/x")
    sb = h.create()
    result = h.provider.run(sb, ["env"])
    assert "secret" not in result.stdout
    assert re.search(r"^PATH=", result.stdout, re.M)


def test_run_truncates_and_keeps_draining(h: Harness) -> None:
    h.require("real_shell")
    sb = h.create()
    cap = h.provider.settings.workspace_max_output_bytes
    got: list[bytes] = []
    # 8x the cap on both streams: a child blocked on a full pipe would hit the timeout.
    script = f"head -c {cap * 8} /dev/zero | tr '\\0' a; head -c {cap * 8} /dev/zero >&2; echo"
    result = h.provider.run(sb, sh(script), timeout_s=20, on_output=lambda s, c: got.append(c))
    assert result.truncated and not result.timed_out and result.exit_code == 0
    assert len(result.stdout) == cap and set(result.stdout) == {"a"}
    assert len(result.stderr) == cap
    assert sum(map(len, got)) == 2 * cap


def test_run_decodes_invalid_utf8_with_replacement(h: Harness) -> None:
    h.require("real_shell")
    sb = h.create()
    assert h.provider.run(sb, sh("printf 'a\\377b'")).stdout == "a\ufffdb"


# -- processes -------------------------------------------------------------------------------
def test_start_process_alive_log_stop(h: Harness) -> None:
    sb = h.create()
    proc = h.provider.start_process(sb, "echo marker-4217; sleep 30")
    assert json.loads(json.dumps(proc)) == proc
    assert {"pid", "started_at"} <= proc.keys()
    assert h.provider.process_alive(sb, proc)
    assert h.wait_for(lambda: "marker-4217" in h.provider.read_log(sb, proc, 50))
    h.provider.stop_process(sb, proc)
    assert h.wait_for(lambda: not h.provider.process_alive(sb, proc), 5)
    h.provider.stop_process(sb, proc)  # stopping a stopped process is harmless


def test_read_log_tail(h: Harness) -> None:
    h.require("real_processes")
    sb = h.create()
    proc = h.provider.start_process(sb, "for i in 1 2 3 4 5; do echo line-$i; done; sleep 30")
    assert h.wait_for(lambda: "line-5" in h.provider.read_log(sb, proc, 2))
    assert h.provider.read_log(sb, proc, 2).splitlines() == ["line-4", "line-5"]
    h.provider.stop_process(sb, proc)


def test_dead_process_is_not_alive(h: Harness) -> None:
    h.require("real_processes")
    sb = h.create()
    proc = h.provider.start_process(sb, "exit 0")
    assert h.wait_for(lambda: not h.provider.process_alive(sb, proc), 5)
    assert not h.provider.process_alive(sb, {**proc, "started_at": proc["started_at"] + 1})


def test_preview_answers_http(h: Harness) -> None:
    sb = h.create()
    port = h.provider.dev_port(sb, 3000)
    assert 0 < port < 65536
    url = h.provider.preview_url(sb, port)
    assert url.startswith(("http://", "https://"))
    server = f"cd /tmp && echo conformance-ok > index.html && exec python3 -m http.server {port}"
    proc = h.provider.start_process(sb, server)
    assert h.wait_for(lambda: h.provider.port_ready(sb, port), 10)
    if h.caps.real_http:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert b"conformance-ok" in resp.read()
    h.provider.stop_process(sb, proc)
    if h.caps.real_http:
        assert h.wait_for(lambda: not h.provider.port_ready(sb, port), 5)


# -- sleep, snapshots ------------------------------------------------------------------------
def test_sleep_stops_processes_and_wake_keeps_files(h: Harness) -> None:
    sb = h.create()
    h.provider.write_files(sb, FILES)
    proc = h.provider.start_process(sb, "sleep 30")
    slept = h.provider.sleep(sb)
    assert h.provider.status(slept.sandbox) is SandboxStatus.SLEEPING
    assert not h.provider.process_alive(sb, proc)
    woken = h.provider.wake(slept.sandbox)
    assert h.provider.status(woken) is SandboxStatus.RUNNING
    assert h.provider.read_files(woken, [p for p, _ in FILES]) == dict(FILES)
    assert h.provider.run(woken, sh("true")).exit_code == 0


def test_snapshot_restore_is_exact(h: Harness) -> None:
    sb = h.create()
    h.provider.write_files(sb, FILES)
    before = h.provider.hashes(sb)
    snapshot_id = h.provider.snapshot(sb)
    h.provider.write_files(sb, [("README.md", b"changed"), ("extra/new.txt", b"new")])
    h.provider.delete_files(sb, ["src/app/page.tsx"])
    h.provider.restore(sb, snapshot_id)
    assert h.provider.hashes(sb) == before
    assert h.provider.read_files(sb, ["extra/new.txt"]) == {"extra/new.txt": None}


def test_create_from_snapshot(h: Harness) -> None:
    first = h.create()
    h.provider.write_files(first, FILES)
    snapshot_id = h.provider.snapshot(first)
    second = h.create(snapshot_id=snapshot_id)
    assert second.sandbox_id != first.sandbox_id
    assert h.provider.read_files(second, [p for p, _ in FILES]) == dict(FILES)


def test_unknown_snapshot_is_snapshot_not_found(h: Harness) -> None:
    sb = h.create()
    with pytest.raises(PermanentError) as err:
        h.provider.restore(sb, "snap-does-not-exist")
    assert err.value.code == "snapshot_not_found"
    with pytest.raises(PermanentError) as err:
        h.provider.create(h.spec(snapshot_id="snap-does-not-exist"))
    assert err.value.code == "snapshot_not_found"


# -- git -------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    done = subprocess.run(
        ["git", *ident, *args], cwd=repo, env=env, check=True, capture_output=True
    )
    return done.stdout.decode().strip()


def test_git_sync_returns_head(h: Harness) -> None:
    sb = h.create()
    if not h.caps.real_git:
        assert re.fullmatch(r"[0-9a-f]{40}", h.provider.git_sync(sb, "file:///repo", "main"))
        return
    repo = h.tmp / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "app.js").write_text("v1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    head = h.provider.git_sync(sb, str(repo), "main")
    assert head == _git(repo, "rev-parse", "HEAD")
    assert h.provider.read_files(sb, ["app.js"]) == {"app.js": b"v1\n"}
    (repo / "app.js").write_text("v2\n")
    _git(repo, "commit", "-qam", "two")
    head = h.provider.git_sync(sb, f"file://{repo}", "main")
    assert head == _git(repo, "rev-parse", "HEAD")
    assert h.provider.read_files(sb, ["app.js"]) == {"app.js": b"v2\n"}
    with pytest.raises(PermanentError) as err:
        h.provider.git_sync(sb, str(h.tmp / "no-such-repo"), "main")
    assert err.value.code == "repo_unavailable"
