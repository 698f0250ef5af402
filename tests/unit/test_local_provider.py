"""The local provider's own promises: isolation, symlink safety, ports, detached dev servers.

Real bwrap, real processes, real HTTP; each test's workspaces live under its tmp_path and are
destroyed afterwards. Behaviour shared with every provider is in tests/conformance.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.errors import PermanentError, TransientError
from qai_jobs.providers.base import CreateSpec, Sandbox, SandboxStatus
from qai_jobs.providers.local import LocalProvider
from qai_jobs.providers.local.layout import Layout
from qai_jobs.providers.local.limits import SandboxLimits, _cgroup_bases
from qai_jobs.sync import sha256
from tests.conformance.conftest import make_settings
from tests.support.netns import lose_sandbox

REPO = Path(__file__).resolve().parents[2]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing")


class Local:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.made: list[tuple[LocalProvider, Sandbox]] = []

    def provider(self, **extra: Any) -> LocalProvider:
        extra.setdefault("workspace_local_isolation", "bwrap")
        return LocalProvider(make_settings(self.tmp, **extra))

    def sandbox(self, provider: LocalProvider | None = None, project: str = "p") -> Sandbox:
        provider = provider or self.provider()
        sb = provider.create(CreateSpec(project, uuid.uuid4().hex, 3000))
        self.made.append((provider, sb))
        return sb

    def pair(self, **extra: Any) -> tuple[LocalProvider, Sandbox]:
        provider = self.provider(**extra)
        return provider, self.sandbox(provider)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    helper = Local(tmp_path)
    try:
        yield helper
    finally:
        for provider, sb in helper.made:
            with contextlib.suppress(Exception):
                provider.destroy(sb)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def sh(cmd: str) -> list[str]:
    return ["bash", "-lc", cmd]


# -- isolation -------------------------------------------------------------------------------
@needs_bwrap
def test_sandbox_sees_only_its_workspace_and_a_readonly_system(
    local: Local, tmp_path: Path
) -> None:
    provider, sb = local.pair()
    neighbour = local.sandbox(provider, "other")
    provider.write_files(neighbour, [("secret.txt", b"neighbour")])
    host_tmp = Path("/tmp") / f"qai-host-{uuid.uuid4().hex}"
    host_tmp.write_text("host")
    other_tree = Layout(Path(neighbour.state["dir"])).tree
    try:
        checks = {
            "root_home": "test -e /root",
            "host_tmp": f"test -e {host_tmp}",
            "neighbour": f"test -e {other_tree}/secret.txt",
            "workspace_root": f"test -e {tmp_path}",
            "usr_writable": "touch /usr/qai-probe",
            "shadow": "test -r /etc/shadow",
        }
        for name, check in checks.items():
            assert provider.run(sb, sh(check)).exit_code != 0, name
        result = provider.run(
            sb, sh("pwd; echo $HOME; ls /proc | grep -c '^[0-9]'; cat /proc/1/comm")
        )
        cwd, home, nprocs, init = result.stdout.split()
        assert (cwd, home, init) == ("/workspace", "/home/qai", "bwrap")
        assert int(nprocs) < 10  # its own PID namespace: no host processes
        caps = provider.run(sb, sh("grep CapEff /proc/self/status")).stdout
        assert caps.split()[1] == "0000000000000000"
        assert provider.run(sb, sh("touch /workspace/ok && echo > /tmp/t")).exit_code == 0
    finally:
        host_tmp.unlink()


@needs_bwrap
def test_env_cannot_reach_bwrap_itself(local: Local, tmp_path: Path) -> None:
    """A user's LD_PRELOAD is set inside the sandbox, not on the host-side bwrap process."""
    provider, sb = local.pair()
    result = provider.run(sb, ["sh", "-c", "echo $LD_PRELOAD"], env={"LD_PRELOAD": "/nope.so"})
    assert result.exit_code == 0 and result.stdout == "/nope.so\n"
    # Only the sandboxed sh complains about the missing library: bwrap itself never saw it.
    assert result.stderr.count("cannot be preloaded") == 1


@needs_bwrap
def test_sandbox_etc_is_a_read_only_copy_of_the_allowlist(local: Local) -> None:
    provider, sb = local.pair()
    script = "cat /etc/passwd; test -e /etc/shadow && echo shadow; ls /proc/self/fd | wc -l"
    passwd, fds = provider.run(sb, sh(script)).stdout.rsplit("\n", 2)[:2]
    assert passwd + "\n" == Path("/etc/passwd").read_text()
    assert int(fds) == 4  # 0-2 and ls's own: none of the descriptors /etc was copied from
    for probe in ("touch /etc/qai-probe", "echo x >> /etc/passwd"):
        assert provider.run(sb, sh(probe)).exit_code != 0, probe


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_a_process_that_cannot_join_its_cgroup_never_runs(
    local: Local, isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isolation == "bwrap" and not shutil.which("bwrap"):
        pytest.skip("bubblewrap missing")
    provider, sb = local.pair(workspace_local_isolation=isolation)
    missing = local.tmp / "no-such-cgroup"
    monkeypatch.setattr(SandboxLimits, "prepare", lambda self: [("pids", missing)])
    with pytest.raises(TransientError, match="cannot confine"):
        provider.run(sb, sh("touch ran"))
    with pytest.raises(TransientError, match="cannot confine"):
        provider.start_process(sb, "touch started")
    tree = Layout(Path(sb.state["dir"])).tree
    assert not (tree / "ran").exists() and not (tree / "started").exists()


def test_a_missing_program_is_an_error_not_an_exit_code(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    with pytest.raises(PermanentError) as err:
        provider.run(sb, ["qai-no-such-program"])
    assert err.value.code == "exec_failed"


def test_invalid_env_and_cwd_are_refused(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    with pytest.raises(PermanentError):
        provider.run(sb, ["true"], env={"A=B": "x"})
    with pytest.raises(PermanentError) as err:
        provider.run(sb, ["true"], cwd="missing/dir")
    assert err.value.code == "invalid_cwd"


# -- symlinks planted by sandboxed code ------------------------------------------------------
@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_host_file_io_never_follows_symlinks_out(local: Local, isolation: str) -> None:
    if isolation == "bwrap" and not shutil.which("bwrap"):
        pytest.skip("bubblewrap missing")
    provider, sb = local.pair(workspace_local_isolation=isolation)
    target = local.tmp / "outside"
    target.mkdir()
    (target / "victim.txt").write_text("untouched")
    # Under bwrap the link targets are host paths the sandbox cannot see; they still exist
    # as links in the tree, which is what the host side must not follow.
    plant = f"ln -s {target} evil; ln -s {target}/victim.txt link; mkdir d; ln -s {target} d/up"
    assert provider.run(sb, sh(plant + "; mkfifo fifo")).exit_code == 0
    refused: list[Callable[[], object]] = [
        lambda: provider.write_files(sb, [("evil/victim.txt", b"pwned")]),
        lambda: provider.write_files(sb, [("evil/new.txt", b"pwned")]),
        lambda: provider.write_files(sb, [("link", b"pwned")]),
        lambda: provider.write_files(sb, [("d/up/victim.txt", b"pwned")]),
        lambda: provider.read_files(sb, ["evil/victim.txt"]),
        lambda: provider.read_files(sb, ["link"]),
        lambda: provider.delete_files(sb, ["evil/victim.txt"]),
        lambda: provider.hashes(sb, ["d/up/victim.txt"]),
    ]
    for attempt in refused:
        with pytest.raises(PermanentError) as err:
            attempt()
        assert err.value.code == "path_outside_workspace"
    assert (target / "victim.txt").read_text() == "untouched"
    assert sorted(os.listdir(target)) == ["victim.txt"]
    assert provider.hashes(sb) == {}  # links and the FIFO are not files; no hang on the FIFO
    with pytest.raises(PermanentError):
        provider.read_files(sb, ["fifo"])
    # Deleting a link removes the link itself, never its target.
    assert provider.delete_files(sb, ["link", "evil"]) == ["link", "evil"]
    assert (target / "victim.txt").read_text() == "untouched"


def test_restore_replaces_planted_links(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    provider.write_files(sb, [("src/a.txt", b"a")])
    snapshot_id = provider.snapshot(sb)
    outside = local.tmp / "outside2"
    outside.mkdir()
    provider.run(sb, sh(f"rm -r src && ln -s {outside} src"))
    provider.restore(sb, snapshot_id)
    assert provider.read_files(sb, ["src/a.txt"]) == {"src/a.txt": b"a"}
    assert os.listdir(outside) == []


def _snapshot_files(local: Local) -> set[str]:
    return {p.name for p in (local.tmp / "snapshots").glob("snap-*")}


def _files_of(*ids: str) -> set[str]:
    return {f"{i}{ext}" for i in ids for ext in (".tar.gz", ".json")}


def test_sleeps_keep_their_newest_snapshots_and_explicit_ones_stay(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none", workspace_local_snapshots_kept=3)
    explicit = provider.snapshot(sb)
    slept = []
    for i in range(5):
        provider.write_files(sb, [("a.txt", str(i).encode())])
        slept.append(provider.sleep(sb).snapshot_id)
        sb = provider.wake(sb)
    for gone in slept[:2]:
        with pytest.raises(PermanentError) as info:
            provider.restore(sb, gone)
        assert info.value.code == "snapshot_not_found"
    provider.restore(sb, slept[2])
    assert provider.read_files(sb, ["a.txt"]) == {"a.txt": b"2"}
    # a producer's own snapshot outlives any number of sleeps
    provider.restore(sb, explicit)
    assert provider.read_files(sb, ["a.txt"]) == {"a.txt": None}
    assert _snapshot_files(local) == _files_of(explicit, *slept[2:])
    provider.destroy(sb)
    assert _snapshot_files(local) == set()


def test_a_snapshot_restored_elsewhere_outlives_the_sandbox_that_took_it(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    other = local.sandbox(provider, project="other")
    provider.write_files(other, [("theirs.txt", b"theirs")])
    theirs = provider.snapshot(other)
    provider.restore(sb, theirs)
    clone = provider.create(
        CreateSpec("clone", "c0ffee00-0000-0000-0000-000000000000", 0, {}, theirs)
    )
    provider.destroy(other)
    # a rebuild of either restores from it again
    provider.write_files(sb, [("theirs.txt", b"changed")])
    provider.restore(sb, theirs)
    assert provider.read_files(sb, ["theirs.txt"]) == {"theirs.txt": b"theirs"}
    provider.destroy(sb)
    provider.restore(clone, theirs)
    assert provider.read_files(clone, ["theirs.txt"]) == {"theirs.txt": b"theirs"}
    provider.destroy(clone)
    assert _snapshot_files(local) == set()


def test_restoring_a_sleep_snapshot_keeps_it_past_later_sleeps(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none", workspace_local_snapshots_kept=1)
    provider.write_files(sb, [("a.txt", b"first")])
    first = provider.sleep(sb).snapshot_id
    sb = provider.wake(sb)
    provider.restore(sb, first)
    provider.write_files(sb, [("a.txt", b"second")])
    provider.sleep(sb)  # keeps one sleep snapshot: without the hold, `first` would go
    sb = provider.wake(sb)
    provider.restore(sb, first)
    assert provider.read_files(sb, ["a.txt"]) == {"a.txt": b"first"}


def test_a_failed_rebuild_keeps_what_the_vanished_sandbox_held(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    provider.write_files(sb, [("a.txt", b"kept")])
    explicit = provider.snapshot(sb)
    slept = provider.sleep(sb).snapshot_id
    lose_sandbox(local.tmp / "workspaces" / sb.sandbox_id)  # lost behind our back
    spec = CreateSpec(sb.state["project_id"], sb.state["workspace_id"], 3000, {}, slept)

    def broken(*_: object) -> None:
        raise TransientError("disk hiccup")

    with monkeypatch.context() as patch:
        patch.setattr(provider.snapshots, "restore_into", broken)
        with pytest.raises(TransientError):
            provider.create(spec)
    rebuilt = provider.create(spec)  # the retry
    local.made.append((provider, rebuilt))
    assert rebuilt.sandbox_id == sb.sandbox_id
    assert provider.read_files(rebuilt, ["a.txt"]) == {"a.txt": b"kept"}
    provider.write_files(rebuilt, [("a.txt", b"changed")])
    provider.restore(rebuilt, explicit)
    assert provider.read_files(rebuilt, ["a.txt"]) == {"a.txt": b"kept"}


# -- ports -----------------------------------------------------------------------------------
def _two_free_ports() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65535:
            with socket.socket() as s2:
                try:
                    s2.bind(("0.0.0.0", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two consecutive free ports")


def test_ports_are_unique_skip_busy_ones_and_are_freed(local: Local) -> None:
    low = _two_free_ports()
    provider = local.provider(
        workspace_local_isolation="none",
        workspace_local_port_min=low,
        workspace_local_port_max=low + 1,
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", low))
        busy.listen()
        first = local.sandbox(provider)
        assert provider.dev_port(first, 3000) == low + 1
    second = local.sandbox(provider)
    assert provider.dev_port(second, 3000) == low
    assert provider.preview_url(second, low) == f"http://127.0.0.1:{low}"
    # A second provider object (another worker process) sees the same allocations.
    other = local.provider(
        workspace_local_isolation="none",
        workspace_local_port_min=low,
        workspace_local_port_max=low + 1,
    )
    assert other.adopt(first.sandbox_id, CreateSpec("p", "w", 3000)).state["port"] == low + 1
    provider.destroy(second)
    assert provider.ports.owner_of(low) is None
    third = local.sandbox(provider)
    assert provider.dev_port(third, 3000) == low


# -- processes -------------------------------------------------------------------------------
@needs_bwrap
def test_dev_server_outlives_the_process_that_started_it(local: Local) -> None:
    provider, sb = local.pair()
    port = provider.dev_port(sb, 3000)
    script = textwrap.dedent(
        f"""
        import json, sys
        from qai_jobs.providers.base import Sandbox
        from qai_jobs.providers.local import LocalProvider
        from tests.conformance.conftest import make_settings
        from pathlib import Path
        settings = make_settings(Path({str(local.tmp)!r}), workspace_local_isolation="bwrap")
        p = LocalProvider(settings)
        sb = Sandbox.from_json(json.loads(sys.argv[1]))
        print(json.dumps(p.start_process(sb, "exec python3 -m http.server {port}")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(sb.to_json())],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=30,
    )
    proc = json.loads(out.stdout)
    assert wait_for(lambda: provider.port_ready(sb, port))
    assert provider.process_alive(sb, proc)
    provider.stop_process(sb, proc)
    assert not provider.process_alive(sb, proc)


def test_sleep_stops_processes_that_left_their_session(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    if not _cgroup_bases():
        pytest.skip("no writable cgroup: escaped processes cannot be found")
    marker = f"qai-escape-{uuid.uuid4().hex[:8]}"
    provider.start_process(sb, f"setsid bash -c 'exec -a {marker} sleep 300' & sleep 300")
    assert wait_for(lambda: _running(marker), 5)
    provider.sleep(sb)
    assert wait_for(lambda: not _running(marker), 5)


def _running(name: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(name.encode()):
                return True
    return False


@needs_bwrap
def test_run_timeout_kills_the_whole_sandbox(local: Local) -> None:
    provider, sb = local.pair()
    marker = f"qai-bg-{uuid.uuid4().hex[:8]}"
    result = provider.run(sb, sh(f"(exec -a {marker} sleep 300) & sleep 300"), timeout_s=0.5)
    assert result.timed_out and result.exit_code == 124
    assert wait_for(lambda: not _running(marker), 3)


# -- sleep / wake ----------------------------------------------------------------------------
def test_wake_repairs_files_lost_or_changed_while_asleep(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    provider.write_files(sb, [("a.txt", b"a"), ("dir/b.txt", b"b")])
    slept = provider.sleep(sb).sandbox
    tree = Layout(Path(sb.state["dir"])).tree
    (tree / "a.txt").write_text("corrupted")
    (tree / "dir" / "b.txt").unlink()
    provider.wake(slept)
    assert provider.read_files(sb, ["a.txt", "dir/b.txt"]) == {"a.txt": b"a", "dir/b.txt": b"b"}
    # A whole workspace directory lost while asleep comes back from the sleep snapshot.
    slept = provider.sleep(sb).sandbox
    lose_sandbox(Path(sb.state["dir"]))
    assert provider.status(slept) is SandboxStatus.GONE
    provider.wake(slept)
    assert provider.status(slept) is SandboxStatus.RUNNING
    assert provider.read_files(slept, ["dir/b.txt"]) == {"dir/b.txt": b"b"}


def test_restore_keeps_ignored_dirs(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    provider.write_files(sb, [("package.json", b"{}")])
    snapshot_id = provider.snapshot(sb)
    provider.write_files(sb, [("node_modules/x/i.js", b"x"), ("stray.txt", b"s")])
    provider.restore(sb, snapshot_id)
    got = provider.read_files(sb, ["node_modules/x/i.js", "stray.txt"])
    assert got == {"node_modules/x/i.js": b"x", "stray.txt": None}


# -- git -------------------------------------------------------------------------------------
@needs_bwrap
def test_git_sync_runs_nothing_planted_in_the_tree_on_the_host(local: Local) -> None:
    """A planted .git/config is the sandbox's own: only git inside the jail reads it, where
    the host's paths (``pwned``) do not exist."""
    provider, sb = local.pair(workspace_repo_schemes="https,file")
    repo = local.tmp / "repo"
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"}
    ident = ["-c", "user.name=t", "-c", "user.email=t@e", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q", str(repo)],):
        subprocess.run(["git", *ident, *args], check=True, env=env)
    (repo / "f.txt").write_text("f")
    subprocess.run(["git", *ident, "add", "-A"], cwd=repo, check=True, env=env)
    subprocess.run(["git", *ident, "commit", "-qm", "c"], cwd=repo, check=True, env=env)
    pwned = local.tmp / "pwned"
    hook = f"[core]\n\tfsmonitor = touch {pwned}\n\thooksPath = .git/hooks\n"
    provider.write_files(
        sb, [(".git/config", hook.encode()), (".git/HEAD", b"ref: refs/heads/x\n")]
    )
    provider.git_sync(sb, str(repo), "main")
    provider.git_sync(sb, str(repo), "main")
    assert not pwned.exists()
    assert provider.read_files(sb, ["f.txt"]) == {"f.txt": b"f"}


# -- the example app -------------------------------------------------------------------------
@needs_bwrap
def test_example_hello_installs_and_serves_through_npm(local: Local) -> None:
    if not shutil.which("npm"):
        pytest.skip("npm missing")
    provider, sb = local.pair()
    example = REPO / "examples" / "hello"
    provider.write_files(sb, [(f.name, f.read_bytes()) for f in example.iterdir() if f.is_file()])
    install = provider.run(sb, sh("npm ci"), timeout_s=60)
    assert install.exit_code == 0, install.stderr
    port = provider.dev_port(sb, 3000)
    command = provider.settings.workspace_dev_command.format(port=port)
    proc = provider.start_process(sb, command)
    assert wait_for(lambda: provider.port_ready(sb, port), 15), provider.read_log(sb, proc, 20)
    with urllib.request.urlopen(provider.preview_url(sb, port), timeout=5) as resp:
        assert b"Hello from qai-jobs" in resp.read()
    assert f"--port {port}" in provider.read_log(sb, proc, 20)
    provider.stop_process(sb, proc)


def test_dev_server_gets_its_port_in_the_environment(local: Local) -> None:
    provider, sb = local.pair(workspace_local_isolation="none")
    port = provider.dev_port(sb, 3000)
    proc = provider.start_process(sb, "echo port=$PORT; sleep 5")
    assert wait_for(lambda: f"port={port}" in provider.read_log(sb, proc, 5), 5)
    provider.stop_process(sb, proc)


def test_hash_cache_sees_every_change_and_never_follows_symlinks(tmp_path: Path) -> None:
    """Hashes come from a stat-keyed cache on the second call; edits, deletions and a file
    swapped for a symlink are still seen."""
    import hashlib
    import os

    from qai_jobs.config import Settings
    from qai_jobs.providers.base import CreateSpec
    from qai_jobs.providers.local import LocalProvider

    provider = LocalProvider(
        Settings(workspace_root=tmp_path / "ws", workspace_local_isolation="none")
    )
    sb = provider.create(CreateSpec("hc", "w1", 3000))
    try:
        files = [(f"d{i % 7}/f{i}.txt", f"content {i}".encode()) for i in range(50)]
        provider.write_files(sb, files)
        paths = [p for p, _ in files]
        first = provider.hashes(sb, paths)
        assert first == {p: hashlib.sha256(d).hexdigest() for p, d in files}
        assert provider.hashes(sb, paths) == first  # from the cache
        provider.write_files(sb, [("d0/f0.txt", b"changed")])
        provider.delete_files(sb, ["d1/f1.txt"])
        tree = Layout(Path(sb.state["dir"])).tree
        (tree / "d2/f2.txt").unlink()
        os.symlink("/etc/passwd", tree / "d2/f2.txt")
        again = provider.hashes(sb, paths)
        assert again["d0/f0.txt"] == hashlib.sha256(b"changed").hexdigest()
        assert "d1/f1.txt" not in again and "d2/f2.txt" not in again
        assert again["d3/f3.txt"] == first["d3/f3.txt"]
    finally:
        provider.destroy(sb)


def test_hashing_a_tree_of_many_directories_needs_few_descriptors(local: Local) -> None:
    import resource

    provider, sb = local.pair(workspace_local_isolation="none")
    files = [(f"pkg{i}/index.js", f"{i}".encode()) for i in range(600)]
    provider.write_files(sb, files)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # fewer than the directories
    try:
        assert len(provider.hashes(sb, [p for p, _ in files])) == 600
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_writes_fill_the_hash_cache_so_the_next_sync_only_stats(local: Local) -> None:
    from qai_jobs.providers.local.hashcache import HashCache

    provider, sb = local.pair(workspace_local_isolation="none")
    files = [(f"d{i % 5}/f{i}.txt", f"content {i}".encode()) for i in range(100)]
    provider.write_files(sb, files)
    cache = HashCache.at(Path(sb.state["dir"]) / "hashcache.json")
    assert {p: cache.entries[p][1] for p, _ in files} == {p: sha256(d) for p, d in files}
    # A file the sandbox rewrites afterwards is not taken for ours.
    (Layout(Path(sb.state["dir"])).tree / "d0/f0.txt").write_bytes(b"changed by the sandbox")
    assert provider.hashes(sb, ["d0/f0.txt"]) == {"d0/f0.txt": sha256(b"changed by the sandbox")}
