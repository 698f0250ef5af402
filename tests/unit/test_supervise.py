"""`qai-jobs up`'s supervisor with real processes: nothing it started outlives it."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from qai_jobs.supervise import Supervisor

# Ignores SIGTERM, like a worker stuck in its warm shutdown, and leaves a grandchild (a pool
# process) that ignores it too; both write their pids so the test can look for them afterwards.
STUBBORN = (
    'trap "" TERM; (trap "" TERM; echo $BASHPID >> {pids}; sleep 600) & echo $$ >> {pids}; wait'
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pids(path: Path, count: int) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and len(lines := path.read_text().split()) >= count:
            return [int(p) for p in lines]
        time.sleep(0.02)
    raise TimeoutError(path.read_text() if path.exists() else "no pids")


def _signal_soon(sig: int, after: float) -> None:
    threading.Timer(after, os.kill, (os.getpid(), sig)).start()


def test_a_child_that_ignores_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    said: list[str] = []
    sup = Supervisor(
        {"stuck": ["bash", "-c", STUBBORN.format(pids=pids)], "fine": ["sleep", "600"]},
        say=said.append,
        grace=0.5,
    )
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        _signal_soon(signal.SIGINT, 1.0)
        started = time.monotonic()
        assert sup.run() == 0
        elapsed = time.monotonic() - started
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    stuck = _pids(pids, 2)
    assert not [p for p in stuck if _alive(p)], stuck
    assert not _alive(sup.procs["fine"].pid)
    assert any("stuck did not stop" in line for line in said), said
    assert elapsed < 10


def test_a_child_exiting_stops_the_others_with_its_code(tmp_path: Path) -> None:
    said: list[str] = []
    sup = Supervisor(
        {"quits": ["bash", "-c", "sleep 0.3; exit 3"], "waits": ["sleep", "600"]},
        say=said.append,
    )
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert sup.run() == 3
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert not _alive(sup.procs["waits"].pid)
    assert said == ["qai-jobs up: quits exited with 3; stopping"]


def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    said: list[str] = []
    sup = Supervisor({"stuck": ["bash", "-c", STUBBORN.format(pids=pids)]}, say=said.append)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        _signal_soon(signal.SIGINT, 0.5)
        _signal_soon(signal.SIGTERM, 1.0)
        started = time.monotonic()
        assert sup.run() == 0
        elapsed = time.monotonic() - started
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    # the default grace is 20 s: only the second signal explains an early end
    assert elapsed < 10
    assert not [p for p in _pids(pids, 2) if _alive(p)]
    assert "qai-jobs up: stopping now (second signal)" in said
