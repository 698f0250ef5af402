"""`qai-jobs up`'s supervisor: run worker, beat and api together and stop all of them together.

The children stay in the supervisor's process group, so a terminal treats them as one job:
Ctrl-C, Ctrl-Z and a closing terminal reach all of them. The supervisor is a child subreaper,
so what a child leaves behind when it is killed (the worker's pool processes) is re-parented to
it and can still be found and killed. Processes in sessions of their own are left alone: local
sandboxes run commands and dev servers that way, and dev servers are meant to outlive `up`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence

from qai_jobs.proctab import PPID, SESSION, STATE, descendants, stat_fields

GRACE_SECONDS = 20.0  # a warm shutdown lets running actions finish; after this they are killed
POLL_SECONDS = 0.1
REAP_SECONDS = 2.0  # how long to wait for killed processes to disappear
REAP_EVERY_SECONDS = 5.0
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Supervisor:
    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        say: Callable[[str], None],
        grace: float = GRACE_SECONDS,
    ) -> None:
        self.commands = commands
        self.say = say
        self.grace = grace
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.signals = 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Ctrl-\ (SIGQUIT) means "now"; anything else twice does too.
        self.signals += 2 if signum == signal.SIGQUIT else 1
        if self.signals >= 2:
            self.say("qai-jobs up: stopping now")

    def run(self) -> int:
        """Start every command, wait for a signal or a child's exit, stop all; the exit code."""
        _become_subreaper()
        for signum in (*_STOP_SIGNALS, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        try:
            for name, cmd in self.commands.items():
                self.procs[name] = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL)
            return self._watch()
        finally:
            self.stop()

    def _watch(self) -> int:
        next_reap = time.monotonic() + REAP_EVERY_SECONDS
        while not self.signals:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.say(f"qai-jobs up: {name} exited with {proc.returncode}; stopping")
                    code = proc.returncode
                    return 128 - code if code < 0 else code or 1
            if time.monotonic() > next_reap:
                # A dev server whose worker process is gone is re-parented to us: collect
                # it when it exits, as init would have.
                _reap(keep={proc.pid for proc in self.procs.values()})
                next_reap = time.monotonic() + REAP_EVERY_SECONDS
            time.sleep(POLL_SECONDS)
        return 0

    def stop(self) -> None:
        """SIGTERM every child (Celery's warm shutdown), wait up to the grace period (a second
        signal cuts it short), then SIGKILL whatever is left below this process."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while self.signals < 2 and time.monotonic() < deadline:
            if all(proc.poll() is not None for proc in self.procs.values()):
                break
            time.sleep(POLL_SECONDS)
        for name, proc in self.procs.items():
            if proc.poll() is None:
                self.say(f"qai-jobs up: {name} did not stop in time; killing it")
                proc.kill()
                proc.wait()
        # What the children left: pool processes of a killed worker, re-parented to us.
        deadline = time.monotonic() + REAP_SECONDS
        while leftovers := _descendants_in_session():
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap()
            if time.monotonic() > deadline:
                self.say(f"qai-jobs up: processes {sorted(leftovers)} would not die")
                break
            time.sleep(POLL_SECONDS / 10)
        _reap()


def _become_subreaper() -> None:
    """Orphans of our children are re-parented to us instead of init (Linux 3.4+)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap(keep: Collection[int] = ()) -> None:
    """Collect exited orphans re-parented to us, but not ``keep``: those are Popen's to wait
    for, and reaping them here would lose their exit status."""
    me = os.getpid()
    for pid in descendants(me) - set(keep):
        fields = stat_fields(pid)
        if fields is not None and fields[STATE] == "Z" and int(fields[PPID]) == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _descendants_in_session() -> set[int]:
    """Live processes below this one and in its session (not zombies)."""
    session = os.getsid(0)
    found: set[int] = set()
    for pid in descendants(os.getpid()):
        fields = stat_fields(pid)
        if fields is not None and fields[STATE] != "Z" and int(fields[SESSION]) == session:
            found.add(pid)
    return found
