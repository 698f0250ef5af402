"""`qai-jobs up`'s supervisor, driven in its own process with real children and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.procs import REPO

DRIVER = """
import json, sys
from qai_jobs.cli.supervise import Supervisor
commands, grace = json.loads(sys.argv[1]), float(sys.argv[2])
sys.exit(Supervisor(commands, say=lambda line: print(line, flush=True), grace=grace).run())
"""
# Ignores SIGTERM, like a worker stuck in its warm shutdown, and leaves a grandchild (a pool
# process) that ignores it too; both write their pids once their traps are set.
STUBBORN = (
    'trap "" TERM; (trap "" TERM; echo $BASHPID >> {pids}; sleep 600) & echo $$ >> {pids}; wait'
)
# Shuts down cleanly on SIGTERM, saying so.
POLITE = "trap 'echo term >> {out}; exit 0' TERM; echo $$ >> {pids}; while :; do sleep 0.05; done"


class Up:
    def __init__(self, commands: dict[str, str], grace: float = 20.0) -> None:
        argv = {name: ["bash", "-c", cmd] for name, cmd in commands.items()}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(argv), str(grace)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def finish(self, timeout: float = 30) -> tuple[int, str, float]:
        started = time.monotonic()
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, time.monotonic() - started


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pids(path: Path, count: int) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and len(lines := path.read_text().split()) >= count:
            return [int(p) for p in lines]
        time.sleep(0.02)
    raise TimeoutError(path.read_text() if path.exists() else "no pids")


def test_children_get_sigterm_first_and_the_grace_period_to_stop(tmp_path: Path) -> None:
    pids, out = tmp_path / "pids", tmp_path / "out"
    polite = POLITE.format(out=out, pids=pids)
    up = Up({"one": polite, "two": polite}, grace=60)
    children = _pids(pids, 2)
    up.signal(signal.SIGINT)
    code, said, elapsed = up.finish()
    assert code == 0 and said == ""
    assert out.read_text() == "term\nterm\n"  # each shut down on its own, nothing was killed
    assert elapsed < 30  # not the 60 s grace
    assert not [p for p in children if _alive(p)]


def test_a_child_that_ignores_sigterm_is_killed_with_what_it_left(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    up = Up({"stuck": STUBBORN.format(pids=pids), "fine": "sleep 600"}, grace=0.5)
    stuck = _pids(pids, 2)
    up.signal(signal.SIGTERM)
    code, said, _ = up.finish()
    assert code == 0
    assert "qai-jobs up: stuck did not stop in time; killing it" in said
    assert not [p for p in stuck if _alive(p)], said


def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    up = Up({"stuck": STUBBORN.format(pids=pids)})
    stuck = _pids(pids, 2)
    up.signal(signal.SIGINT)
    time.sleep(0.3)
    up.signal(signal.SIGINT)
    code, said, elapsed = up.finish()
    assert code == 0
    assert elapsed < 15  # the grace is 20 s: only the second signal explains an early end
    assert "qai-jobs up: stopping now" in said
    assert not [p for p in stuck if _alive(p)]


def test_a_closing_terminal_stops_everything(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    up = Up({"stuck": STUBBORN.format(pids=pids)}, grace=0.5)
    stuck = _pids(pids, 2)
    up.signal(signal.SIGHUP)
    assert up.finish()[0] == 0
    assert not [p for p in stuck if _alive(p)]


def test_a_child_exiting_stops_the_others_with_its_code(tmp_path: Path) -> None:
    up = Up({"quits": "sleep 0.3; exit 3", "waits": "echo $$; exec sleep 600"})
    code, said, _ = up.finish()
    assert code == 3
    waits = int(said.split()[0])
    assert not _alive(waits)
    assert "qai-jobs up: quits exited with 3; stopping" in said
    # killed by a signal: the shell's convention, 128 + the signal
    assert Up({"dies": "sleep 0.2; kill -9 $$"}).finish()[0] == 128 + signal.SIGKILL


def test_processes_in_their_own_session_outlive_it(tmp_path: Path) -> None:
    """Local sandboxes start dev servers in sessions of their own, to outlive the worker."""
    pids = tmp_path / "pids"
    up = Up({"spawner": f"setsid sleep 600 >/dev/null & echo $! >> {pids}; wait"}, grace=5)
    (server,) = _pids(pids, 1)
    try:
        up.signal(signal.SIGINT)
        assert up.finish()[0] == 0
        assert _alive(server)
    finally:
        os.kill(server, signal.SIGKILL)


def test_orphans_reparented_to_it_are_collected_while_it_runs(tmp_path: Path) -> None:
    """A dev server outliving the worker process that started it becomes ours to reap."""
    pids = tmp_path / "pids"
    orphan = f"(setsid sh -c 'echo $$ >> {pids}; sleep 0.3' &); exec sleep 600"
    up = Up({"worker": orphan}, grace=5)
    try:
        (pid,) = _pids(pids, 1)
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{pid}"):  # a zombie until its parent, up, collects it
            assert time.monotonic() < deadline, "the exited orphan was never collected"
            time.sleep(0.1)
        with open(f"/proc/{up.proc.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] != "Z"
    finally:
        up.signal(signal.SIGTERM)
        assert up.finish()[0] == 0
