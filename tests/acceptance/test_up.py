"""`qai-jobs up`: migrate, then worker + beat + api in the foreground; Ctrl-C stops all."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.support.procs import REPO, Proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``, with its start time and command line."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,lstart=,args="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        pid, ppid, rest = line.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), rest))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, rest in children.get(todo.pop(), []):
            found[pid] = rest
            todo.append(pid)
    return found


def _alive(pid: int, start_and_args: str) -> bool:
    """Still running (not a zombie) and the same process, not a reused pid."""
    out = subprocess.run(
        ["ps", "-o", "stat=,lstart=,args=", "-p", str(pid)], capture_output=True, text=True
    ).stdout.strip()
    if not out or out.startswith("Z"):
        return False
    return out.split(None, 1)[1] == start_and_args


def test_up_runs_everything_and_ctrl_c_stops_all(
    isolated_env: dict[str, str], log_dir: Path
) -> None:
    port = _free_port()
    env = {**isolated_env, "WORKSPACE_TOKEN": "up-token"}
    up = Proc(
        [sys.executable, "-m", "qai_jobs", "up", "--port", str(port), "--concurrency", "2"],
        env,
        log_dir / "up.log",
    )
    try:
        up.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        up.wait_for_log(" ready.", timeout=60)
        project = f"up-{uuid.uuid4().hex[:6]}"
        out = subprocess.run(
            [sys.executable, "-m", "qai_jobs", "run", project, "--", "echo", "from-up"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == "from-up\n"
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200
        running = _descendants(up.pid)
        # worker, beat, api and the worker's two pool processes at least
        assert len(running) >= 5, running
        up.popen.send_signal(signal.SIGINT)
        assert up.popen.wait(timeout=60) == 0
        left = {pid: cmd for pid, cmd in running.items() if _alive(pid, cmd)}
        assert not left, f"outlived `up`: {left}\n{up.log()[-3000:]}"
    finally:
        if up.popen.poll() is None:
            up.kill()
