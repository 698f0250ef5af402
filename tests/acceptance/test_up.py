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

from tests.support.procs import REPO, Proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        up.popen.send_signal(signal.SIGINT)
        assert up.popen.wait(timeout=60) == 0
        time.sleep(0.5)
        children = subprocess.run(["pgrep", "-g", str(up.pid)], capture_output=True, text=True)
        assert children.stdout.strip() == "", "worker, beat or api outlived `up`"
    finally:
        if up.popen.poll() is None:
            up.kill()
