"""A real `qai-jobs api` process for the HTTP API tests (fixtures imported by test_api*.py)."""

from __future__ import annotations

import base64
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.procs import QAI, Proc

TOKEN = "tok-" + secrets.token_hex(16)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
# Small limits so the 413 paths are cheap to reach: bodies over 2*64 KiB + 1 MiB are refused
# unread, files over 64 KiB an action are refused by validation.
API_LIMITS = {"WORKSPACE_MAX_ACTION_BYTES": "65536"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    proc: Proc
    url: str
    env: dict[str, str]

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def start_api(env: dict[str, str], log_dir: Path, port: int | None = None, *extra: str) -> Api:
    port = port or free_port()
    log = log_dir / f"api-{port}-{time.monotonic_ns()}.log"
    proc = Proc([*QAI, "api", "--port", str(port), "--log-level", "warning", *extra], env, log)
    url = f"http://127.0.0.1:{port}"
    proc.wait_for_http(url + "/healthz", timeout=60)
    return Api(proc, url, env)


def api_env(base_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **base_env,
        "WORKSPACE_TOKEN": TOKEN,
        "WORKSPACE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        **API_LIMITS,
        **extra,
    }


@pytest.fixture(scope="module")
def api(base_env: dict[str, str], log_dir: Path, shared_worker: Proc) -> Iterator[Api]:
    started = start_api(api_env(base_env), log_dir)
    yield started
    started.proc.stop()


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with api.http() as client:
        yield client
