"""`qai-jobs up`: migrate, then worker + beat + api in the foreground; Ctrl-C stops all."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.procs import REPO, Proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``, with its start time and command line."""
    out = subprocess.run(
        ["ps", "-ww", "-e", "-o", "pid=,ppid=,lstart=,args="],
        capture_output=True,
        text=True,
        check=True,
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


def _network_helper(start_and_args: str, env: dict[str, str]) -> bool:
    args = start_and_args.split(None, 5)[-1]  # after the five words of the start time
    root = env["WORKSPACE_ROOT"].rstrip("/") + "/"
    return args.startswith(("pasta ", "dnsmasq ")) and root in args


def _alive(pid: int, start_and_args: str) -> bool:
    """Still running (not a zombie) and the same process: same start, not a reused pid (the
    command line may have changed since, by an exec)."""
    out = subprocess.run(
        ["ps", "-ww", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True
    ).stdout.strip()
    if not out or out.startswith("Z"):
        return False
    started = start_and_args.split(None, 5)[:5]  # lstart is five words: Mon Nov 23 16:26:26 2026
    return out.split(None, 1)[1].split() == started


def _start_up(env: dict[str, str], log: Path, *extra: str) -> tuple[Proc, int]:
    port = _free_port()
    argv = ["up", "--port", str(port), "--concurrency", "2", *extra]
    up = Proc([sys.executable, "-m", "qai_jobs", *argv], env, log)
    try:
        up.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        up.wait_for_log(" ready.", timeout=60)
    except BaseException:
        up.kill()
        raise
    return up, port


def test_up_runs_everything_and_ctrl_c_stops_all(
    isolated_env: dict[str, str], log_dir: Path
) -> None:
    env = {**isolated_env, "WORKSPACE_TOKEN": "up-token"}
    up, port = _start_up(env, log_dir / "up.log")
    try:
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


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_up_kills_what_does_not_stop_in_time(
    isolated_env: dict[str, str], log_dir: Path, isolation: str
) -> None:
    """A running action holds the worker's warm shutdown; after the grace everything goes,
    the sandboxed command included (it dies with the pool process that ran it)."""
    env = {  # up's default runtime: real sandboxes
        **isolated_env,
        "WORKSPACE_RUNTIME": "local",
        "WORKSPACE_LOCAL_ISOLATION": isolation,
    }
    up, _ = _start_up(env, log_dir / f"up-grace-{isolation}.log", "--grace", "2")
    project = f"upg-{uuid.uuid4().hex[:6]}"
    client = subprocess.Popen(
        [sys.executable, "-m", "qai_jobs", "run", project, "--", "sleep", "120"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(log_dir / f"up-grace-run-{isolation}.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 60
        running = _descendants(up.pid)
        while not any(cmd.endswith("sleep 120") for cmd in running.values()):
            assert time.monotonic() < deadline, (
                f"never started: {running}\n"
                f"{(log_dir / f'up-grace-run-{isolation}.log').read_text()}"
                f"\n{up.log()[-3000:]}"
            )
            time.sleep(0.1)
            running = _descendants(up.pid)
        up.popen.send_signal(signal.SIGINT)
        assert up.popen.wait(timeout=60) == 0
        assert "qai-jobs up: worker did not stop in time; killing it" in up.log()
        time.sleep(0.5)  # the sandbox's PID namespace tears down after its parent is gone
        left = {pid: cmd for pid, cmd in running.items() if _alive(pid, cmd)}
        # The workspace stays awake, and so does its network (pasta, dnsmasq): like a dev
        # server, it is meant to outlive `up`.
        network = {pid for pid, cmd in left.items() if _network_helper(cmd, env)}
        assert len(network) == (2 if isolation == "bwrap" else 0), left
        left = {pid: cmd for pid, cmd in left.items() if pid not in network}
        assert not left, f"outlived `up`: {left}\n{up.log()[-3000:]}"
    finally:
        client.kill()
        client.wait()
        if up.popen.poll() is None:
            up.kill()
