"""`qai-jobs up`'s supervisor: run worker, beat and api together and stop all of them together.

Each child leads its own process group, so the supervisor can reach what a child started (the
worker's pool processes) even when the child itself is gone, and a terminal's Ctrl-C reaches only
the supervisor, which then stops the children in order instead of everyone at once. Dev servers
of local sandboxes run in sessions of their own and are meant to outlive all of this.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

GRACE_SECONDS = 20.0  # a warm shutdown lets running actions finish; after this they are killed
POLL_SECONDS = 0.1
REAP_SECONDS = 2.0  # how long to wait for killed processes to disappear


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
        self.signals += 1
        if self.signals == 2:
            self.say("qai-jobs up: stopping now (second signal)")

    def run(self) -> int:
        """Start every command, wait for a signal or a child's exit, stop all; the exit code."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            for name, cmd in self.commands.items():
                self.procs[name] = subprocess.Popen(
                    list(cmd), stdin=subprocess.DEVNULL, process_group=0
                )
            return self._watch()
        finally:
            self.stop()

    def _watch(self) -> int:
        while not self.signals:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.say(f"qai-jobs up: {name} exited with {proc.returncode}; stopping")
                    return proc.returncode or 1
            time.sleep(POLL_SECONDS)
        return 0

    def stop(self) -> None:
        """SIGTERM each child (Celery's warm shutdown), wait up to the grace period (a second
        signal cuts it short), then SIGKILL whatever is left in each child's process group."""
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
                self.say(f"qai-jobs up: {name} did not stop in {self.grace:.0f}s; killing it")
            _kill_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=REAP_SECONDS)
        deadline = time.monotonic() + REAP_SECONDS
        while any(_group_alive(p.pid) for p in self.procs.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS / 10)


def _kill_group(pgid: int) -> None:
    """Kill what is left of a child's group: after a clean exit normally nothing, after a kill
    the worker's orphaned pool processes."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether the group still has a live member; zombies waiting for init do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
