"""A real `qai-jobs gateway` (and local-provider worker) for the gateway tests.

httpx cannot resolve ``*.localhost`` here (browsers do): requests go to the gateway's
loopback address with the preview's Host header, which is all a name lookup would change.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from qai_jobs.client import WorkspaceClient
from tests.integration.api_helpers import free_port
from tests.support.procs import QAI, REPO, Proc

HELLO = REPO / "examples" / "hello"
ECHO = Path(__file__).parent / "assets" / "echo"
WAIT = 120  # hang guard only


def files_of(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.iterdir() if p.is_file()}


def gateway_env(env: dict[str, str], port: int, **extra: str) -> dict[str, str]:
    return {
        **env,
        "WORKSPACE_RUNTIME": "local",
        "WORKSPACE_PREVIEW_DOMAIN": f"preview.localhost:{port}",
        "WORKSPACE_DEV_SERVER_TIMEOUT_SECONDS": "30",
        **extra,
    }


@dataclass
class Gateway:
    proc: Proc
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self, preview_url: str, path: str = "/") -> tuple[str, dict[str, str]]:
        """(URL to send to, headers) for ``path`` under ``preview_url``."""
        parts = urlsplit(preview_url)
        return self.base + path, {"Host": parts.netloc}

    def get(self, preview_url: str, path: str = "/", **kw: Any) -> httpx.Response:
        url, headers = self.target(preview_url, path)
        return httpx.get(url, headers={**headers, **kw.pop("headers", {})}, timeout=60, **kw)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's /metrics (0 when absent)."""
        text = httpx.get(self.base + "/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if match and match.group(1) == name:
                got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
                if got == want:
                    return float(match.group(3))
        return 0.0


def start_gateway(env: dict[str, str], log_dir: Path, port: int) -> Gateway:
    log = log_dir / f"gateway-{port}-{time.monotonic_ns()}.log"
    proc = Proc([*QAI, "gateway", "--port", str(port)], env, log)
    proc.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
    return Gateway(proc, port)


def running_gateway(env: dict[str, str], log_dir: Path, port: int) -> Iterator[Gateway]:
    gateway = start_gateway(env, log_dir, port)
    try:
        yield gateway
    finally:
        gateway.proc.stop()


def kinds(client: WorkspaceClient, project: str) -> list[str]:
    return [a["kind"] for a in client.list_actions(project)]


def dev_pid(client: WorkspaceClient, project: str) -> int:
    with client.engine.connect() as conn:
        proc = conn.execute(
            sa.text("SELECT dev_process FROM workspaces WHERE project_id = :p"), {"p": project}
        ).scalar_one()
    return int(proc["pid"])


def destroy_quietly(client: WorkspaceClient, project: str) -> None:
    """Stop a test's dev server: sandboxes outlive the processes that started them."""
    try:
        client.destroy(project).wait(60)
    except Exception as exc:  # cleanup only: report, never mask the test's own outcome
        print(f"cleanup: destroy {project} failed: {exc}")


def free_gateway_port() -> int:
    return free_port()
