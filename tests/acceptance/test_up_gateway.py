"""`qai-jobs up` with WORKSPACE_PREVIEW_DOMAIN set runs the gateway too: the demo's page at its
gateway URL, and Ctrl-C stops the gateway with everything else."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.acceptance.test_up import _alive, _descendants, _free_port, _start_up
from tests.support.procs import REPO


def test_up_serves_the_demo_at_its_gateway_url(isolated_env: dict[str, str], log_dir: Path) -> None:
    gateway_port = _free_port()
    env = {
        **isolated_env,
        "WORKSPACE_RUNTIME": "local",
        "WORKSPACE_PREVIEW_DOMAIN": f"preview.localhost:{gateway_port}",
    }
    up, _ = _start_up(env, log_dir / "up-gateway.log")
    try:
        project = f"demo-{uuid.uuid4().hex[:6]}"
        out = subprocess.run(
            [sys.executable, "-m", "qai_jobs", "ensure", project, "--dir", "examples/hello"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stderr
        url = out.stdout.strip().splitlines()[-1]
        host = url.split("/")[2]
        assert host.endswith(f".preview.localhost:{gateway_port}"), url
        page = httpx.get(f"http://127.0.0.1:{gateway_port}/", headers={"Host": host}, timeout=30)
        assert page.status_code == 200 and "Hello from qai-jobs" in page.text
        running = _descendants(up.pid)
        assert any(" gateway" in cmd for cmd in running.values()), running
        # Dev servers are meant to outlive `up`: stop this one first.
        done = subprocess.run(
            [sys.executable, "-m", "qai_jobs", "destroy", project],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        up.popen.send_signal(signal.SIGINT)
        assert up.popen.wait(timeout=60) == 0
        left = {pid: cmd for pid, cmd in running.items() if _alive(pid, cmd)}
        assert not left, f"outlived `up`: {left}\n{up.log()[-3000:]}"
    finally:
        if up.popen.poll() is None:
            up.kill()
