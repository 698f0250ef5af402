"""Processes of the local provider: the bubblewrap jail, captured runs, detached dev servers.

Exit codes follow the shell everywhere: a command killed by signal N reports 128+N (bwrap
already does so; without isolation the negative Popen code is converted), and a command stopped
by its timeout reports 124 with ``timed_out`` set, like coreutils ``timeout``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from qai_jobs.cancel import Cancel
from qai_jobs.errors import ErrorCode, PermanentError, TransientError
from qai_jobs.proctab import START, STATE, descendants, stat_fields
from qai_jobs.providers.base import ExecResult, OutputCallback, safe_text
from qai_jobs.providers.local.fs import os_error
from qai_jobs.providers.local.jail import Launch, resolve_program

TIMEOUT_EXIT_CODE = 124
GRACE_SECONDS = 3.0


def _popen(launch: Launch, confine: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``launch`` behind the ``confine`` shell (Limits.confine) in a new session.

    Without a preexec_fn CPython spawns with vfork(), which costs the same whatever the worker's
    size; the shell reports on its stdin (a pipe) whether it could confine itself. Without
    isolation the shell gets the command's own environment: it runs as the worker's user and
    unconfined anyway, the limits are there against accidents, not against that user.
    """
    try:
        argv = [*confine, resolve_program(launch.argv[0], launch.env, launch.cwd), *launch.argv[1:]]
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


LOG_TAIL_BYTES = 256 * 1024  # what is read of a log's end, however large it grew


def tail_log(logs: Path, path: Path, tail: int) -> str:
    """The last ``tail`` lines of ``path``, only if it is a log directly in ``logs``."""
    if path.resolve().parent != logs.resolve() or tail <= 0:
        return ""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(safe_text(data).splitlines()[-tail:])


def stop_recorded(procs: Path) -> None:
    """Stop every process recorded in ``procs`` (``<pid>.json`` records), then forget them."""
    records = []
    for path in procs.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            rec = json.loads(path.read_bytes())
            records.append((int(rec["pid"]), int(rec["started_at"])))
    stop_tree(records)
    for path in procs.glob("*.json"):
        path.unlink(missing_ok=True)
