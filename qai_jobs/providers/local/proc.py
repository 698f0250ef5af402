"""Processes of the local provider: the bubblewrap jail, captured runs, detached dev servers.

Exit codes follow the shell everywhere: a command killed by signal N reports 128+N (bwrap
already does so; without isolation the negative Popen code is converted), and a command stopped
by its timeout reports 124 with ``timed_out`` set, like coreutils ``timeout``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qai_jobs.cancel import Cancel
from qai_jobs.errors import ErrorCode, PermanentError, TransientError
from qai_jobs.proctab import START, STATE, descendants, stat_fields
from qai_jobs.providers.base import ExecResult, OutputCallback, safe_text
from qai_jobs.providers.local.fs import os_error

TIMEOUT_EXIT_CODE = 124
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_HOME = "/home/qai"
# The worker's environment holds secrets (DATABASE_URL, tokens): a sandbox starts from this.
BASE_ENV = {
    "PATH": SAFE_PATH,
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "TMPDIR": "/tmp",  # noqa: S108 - the sandbox's private tmpfs
    "USER": "qai",
    # npm must not phone home for advisories/funding/updates on every install.
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}
# What a sandbox sees of the host's /etc: enough for bash, node, npm (TLS, DNS) and git, and not
# /etc/shadow, SSH host keys or service configs, which uid 0 could read even without caps.
# Files are copied into the sandbox's own read-only /etc, directories bound (see _etc).
ETC_ALLOWLIST = (
    "passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf", "host.conf",
    "gai.conf", "protocols", "services", "networks", "ssl", "ca-certificates",
    "ca-certificates.conf", "pki", "crypto-policies", "alternatives", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "locale.alias", "profile",
    "profile.d", "bash.bashrc", "inputrc", "os-release", "lsb-release", "debian_version",
    "mime.types", "fonts", "terminfo", "gitconfig",
)  # fmt: skip
# Merged-/usr systems make these symlinks into /usr; older layouts have real directories.
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Host trees a sandbox sees unchanged at the same path: a link into them can stay a link.
SHARED_TREES = ("/usr/", "/opt/")
GRACE_SECONDS = 3.0


@dataclass
class Launch:
    """What to spawn, and the descriptors bwrap copies files from (closed once it has them)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path | None
    fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Close our copies of the descriptors: the child has its own once it is spawned."""
        while self.fds:
            os.close(self.fds.pop())


@dataclass(frozen=True)
class Jail:
    """How to run a command for one workspace: with bubblewrap, or directly (``none``)."""

    isolation: str
    tree: Path
    home: Path
    # The workspace's network namespace (net.py) and the resolv.conf that points into it.
    netns: Path | None = None
    resolv: Path | None = None

    def command(
        self,
        argv: Sequence[str],
        cwd: str | None,
        env: Mapping[str, str],
        *,
        foreground: bool,
    ) -> Launch:
        """What to hand to Popen; the caller must spawn it or ``release()`` it."""
        if self.isolation != "bwrap":
            full = {**BASE_ENV, "HOME": str(self.home), **env}
            where = self.tree / cwd if cwd else self.tree
            if foreground and _SETPRIV:
                # What bubblewrap's --die-with-parent does below: a command dies with its
                # worker (here only the command's own process, not what it started).
                program = _resolve(argv[0], full, where)
                argv = [_SETPRIV, "--pdeathsig", "KILL", "--", program, *argv[1:]]
            return Launch(list(argv), full, where)
        inner = {**BASE_ENV, "HOME": SANDBOX_HOME, **env}
        # bwrap joins no network namespace itself: nsenter puts it in the workspace's first.
        args = ["nsenter", f"--net={self.netns}", "--", "bwrap"] if self.netns else ["bwrap"]
        if foreground:
            # A dev server must outlive the worker; a command must not.
            args.append("--die-with-parent")
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--hostname", "sandbox", "--cap-drop", "ALL"]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in ROOT_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        if os.path.isdir("/opt"):
            args += ["--ro-bind", "/opt", "/opt"]
        args += ["--bind", str(self.tree), "/workspace", "--bind", str(self.home), SANDBOX_HOME]
        # Fresh tmpfs mounts: nothing of the host's /tmp is visible.
        args += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]  # noqa: S108
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--chdir", f"/workspace/{cwd}" if cwd else "/workspace", "--clearenv"]
        # Values go through --setenv, never bwrap's own environment: bwrap runs on the host as
        # root before it sandboxes anything, so a user's LD_PRELOAD must not reach it.
        for key, value in inner.items():
            args += ["--setenv", key, value]
        etc, fds = _etc(self.resolv)
        return Launch([*args, *etc, "--", *argv], {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, None, fds)


def _etc(resolv: Path | None = None) -> tuple[list[str], list[int]]:
    """bwrap arguments for the sandbox's /etc: the allowlist on a tmpfs, read-only once filled.

    A bind mount costs bwrap two mount calls and a parse of its mount table, which grows with
    every bind: the 30-odd per-file binds of the allowlist were a third of a sandbox's start.
    So regular files are copied in from descriptors opened here (``--file``, no mount), links
    into /usr or /opt stay links, and only directories are bound. A copy is taken at start, like
    a bind of a file that the host later replaces by rename (how /etc files are updated).
    ``resolv`` replaces the host's resolv.conf (a sandbox in its own namespace has its own).
    """
    args = ["--tmpfs", "/etc"]
    dirs: list[str] = []
    fds: list[int] = []
    try:
        for name in ETC_ALLOWLIST:
            path = f"/etc/{name}"
            try:
                if name == "resolv.conf" and resolv is not None:
                    fd = os.open(resolv, os.O_RDONLY | os.O_CLOEXEC)
                    fds.append(fd)
                    args += ["--perms", "644", "--file", str(fd), path]
                    continue
                if os.path.islink(path):
                    real = os.path.realpath(path)
                    if real.startswith(SHARED_TREES):
                        args += ["--symlink", real, path]
                        continue
                info = os.stat(path)
                if stat.S_ISDIR(info.st_mode):
                    dirs += ["--ro-bind-try", path, path]
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # absent on this host, as --ro-bind-try would skip it
            fds.append(fd)
            args += ["--perms", f"{stat.S_IMODE(os.fstat(fd).st_mode):o}", "--file", str(fd), path]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    args += dirs
    if os.path.isdir("/etc/ssl/private"):
        args += ["--tmpfs", "/etc/ssl/private"]
    # Not recursive: the directory binds are read-only already, the private-key mask stays empty.
    args += ["--remount-ro", "/etc"]
    return args, fds


_SETPRIV = shutil.which("setpriv", path=SAFE_PATH)  # util-linux, on every Debian


def check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise PermanentError(
                f"invalid environment variable name {key!r}", code=ErrorCode.INVALID_ENV
            )


def _resolve(program: str, env: Mapping[str, str], cwd: Path | None) -> str:
    """The program to exec, looked up as Popen would: a missing one is an error of the action,
    not exit code 127 from the confining shell that would otherwise look it up."""
    if "/" in program:
        found = shutil.which(os.path.join(cwd or "", program))
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise PermanentError(f"cannot start {program!r}: not found", code=ErrorCode.EXEC_FAILED)
    return program if "/" in program else found


def _popen(launch: Launch, confine: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``launch`` behind the ``confine`` shell (Limits.confine) in a new session.

    Without a preexec_fn CPython spawns with vfork(), which costs the same whatever the worker's
    size; the shell reports on its stdin (a pipe) whether it could confine itself. Without
    isolation the shell gets the command's own environment: it runs as the worker's user and
    unconfined anyway, the limits are there against accidents, not against that user.
    """
    try:
        argv = [*confine, _resolve(launch.argv[0], launch.env, launch.cwd), *launch.argv[1:]]
        status_r, status_w = os.pipe()
        try:
            try:
                proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                    argv,
                    stdin=status_w,
                    env=launch.env,
                    cwd=launch.cwd,
                    pass_fds=launch.fds,
                    start_new_session=True,
                    **kwargs,
                )
            finally:
                os.close(status_w)
            failure = b""
            while chunk := os.read(status_r, 4096):  # EOF: the command was exec'd, or shell died
                failure += chunk
        finally:
            os.close(status_r)
    except FileNotFoundError as exc:
        program = launch.argv[0]
        raise PermanentError(
            f"cannot start {program!r}: not found", code=ErrorCode.EXEC_FAILED
        ) from exc
    except OSError as exc:
        raise os_error(exc, "start", launch.argv[0]) from None
    finally:
        launch.release()
    if failure:
        # The shell exits right after reporting; the sandbox cannot be bounded, so never run it.
        with contextlib.suppress(OSError):
            proc.kill()
        proc.communicate()
        message = "; ".join(failure.decode(errors="replace").split("\n")).strip("; ")
        raise TransientError(f"cannot confine the process: {message}")
    return proc


def run_captured(
    launch: Launch,
    *,
    confine: Sequence[str],
    timeout_s: float,
    max_bytes: int,
    on_output: OutputCallback | None,
    cancel: Cancel | None = None,
) -> ExecResult:
    """Run to completion, reading stdout and stderr together so neither pipe ever blocks."""
    started = time.monotonic()
    proc = _popen(launch, confine, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Killed from the canceller's thread at once: this one may be blocked handing on output.
    unregister = cancel.on_fire(lambda: kill_tree(proc.pid)) if cancel else lambda: None
    assert proc.stdout is not None and proc.stderr is not None
    kept = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = timed_out = False
    deadline = started + timeout_s
    give_up: float | None = None  # when to stop waiting for EOF after the process is done
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    try:
        while sel.get_map():
            now = time.monotonic()
            if not timed_out and now >= deadline:
                timed_out = True
                kill_tree(proc.pid)
                give_up = now + 2.0
            elif give_up is None and proc.poll() is not None:
                # Background children may still hold the pipes (bwrap kills them with its PID
                # namespace; without isolation we do it after a short grace).
                give_up = now + 0.5
            if give_up is not None and now >= give_up:
                kill_tree(proc.pid)
                if now >= give_up + 1.0:
                    break  # something escaped the group and keeps the pipe: stop reading
            wait = min(0.1, max(0.0, deadline - now)) if not timed_out else 0.1
            for key, _ in sel.select(wait):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = kept[key.data]
                room = max_bytes - len(buf)
                if room > 0:
                    buf += chunk[:room]
                    if on_output is not None:
                        on_output(key.data, chunk[:room])
                if len(chunk) > room:
                    truncated = True  # keep draining so the child never blocks on a full pipe
    except BaseException:
        kill_tree(proc.pid)
        raise
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        code = proc.wait()
        unregister()
    if cancel is not None:
        cancel.check()
    if code < 0:
        code = 128 - code
    return ExecResult(
        exit_code=TIMEOUT_EXIT_CODE if timed_out else code,
        stdout=safe_text(bytes(kept["stdout"])),
        stderr=safe_text(bytes(kept["stderr"])),
        duration_ms=int((time.monotonic() - started) * 1000),
        timed_out=timed_out,
        truncated=truncated,
    )


# Popen objects of dev servers this process started, kept so they are reaped, not GC-warned.
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn_detached(launch: Launch, *, confine: Sequence[str], log_path: Path) -> int:
    """Start a process in its own session, stdout+stderr appended to ``log_path``."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            del _children[pid]
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except BaseException:
        launch.release()
        raise
    try:
        proc = _popen(launch, confine, stdout=fd, stderr=fd)
    finally:
        os.close(fd)
    _children[proc.pid] = proc
    return proc.pid


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if gone or a zombie."""
    fields = stat_fields(pid)
    if fields is None or fields[STATE] in ("Z", "X"):
        return None
    return int(fields[START])


def alive(pid: int, started_at: int) -> bool:
    """Whether ``pid`` is still the process we started (a recycled pid has another start)."""
    if pid in _children:
        _children[pid].poll()  # reap it if it exited, so it does not linger as a zombie
    return start_time(pid) == started_at


def _signal(pids: set[int], group: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def kill_tree(pid: int) -> None:
    """SIGKILL the process, its group and every descendant (under bwrap, its PID namespace)."""
    _signal(descendants(pid) | {pid}, pid, signal.SIGKILL)


def stop_tree(pids: Sequence[tuple[int, int]], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each (pid, start) still ours with its group and descendants; SIGKILL after grace.

    A PID namespace's init (bwrap) ignores SIGTERM but dies with its last child, and SIGKILL
    of it tears the whole namespace down.
    """
    live = [(pid, start) for pid, start in pids if alive(pid, start)]
    trees = {pid: descendants(pid) | {pid} for pid, _ in live}
    # The outer bwrap dies on SIGTERM at once while the server inside may still be shutting
    # down: wait for every member of each tree, identified by its start time.
    members = {p: start_time(p) for tree in trees.values() for p in tree}
    for pid, tree in trees.items():
        _signal(tree, pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        alive_now = [p for p, s in members.items() if s is not None and alive(p, s)]
        if not alive_now:
            break
        # A process forked after the first signal (bwrap still setting up, a shell between
        # commands) has not had its SIGTERM yet.
        for pid in {d for p in alive_now for d in descendants(p)} - members.keys():
            members[pid] = start_time(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.05)
    left = {p for p, s in members.items() if s is not None and alive(p, s)}
    left |= {d for p in left for d in descendants(p)}
    for pid in trees:
        _signal(left, pid, signal.SIGKILL)
    for pid, _ in live:
        if pid in _children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                _children.pop(pid).wait(timeout=1)
