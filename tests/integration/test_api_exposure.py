"""An API without a token answers on loopback only, however it was started: through the CLI
(which refuses the bind) or straight from uvicorn's factory on 0.0.0.0 (which must refuse every
request that reaches it on another address of the host)."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.api_helpers import TOKEN, free_port
from tests.support.procs import QAI, Proc


def host_address() -> str:
    """This host's address on its default route (no packet is sent by a UDP connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        address = str(s.getsockname()[0])
    assert not ipaddress.ip_address(address).is_loopback, "this host has no non-loopback address"
    return address


def uvicorn_factory(env: dict[str, str], log_dir: Path, port: int) -> Proc:
    args = [sys.executable, "-m", "uvicorn", "--factory", "qai_jobs.api:app_from_env"]
    args += ["--host", "0.0.0.0", "--port", str(port), "--log-level", "warning"]
    proc = Proc(args, env, log_dir / f"uvicorn-{port}-{time.monotonic_ns()}.log")
    proc.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
    return proc


def test_without_a_token_the_api_answers_on_loopback_only(
    base_env: dict[str, str], log_dir: Path
) -> None:
    address = host_address()
    env = {k: v for k, v in base_env.items() if k != "WORKSPACE_TOKEN"}
    refused = subprocess.run(
        [*QAI, "api", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "WORKSPACE_TOKEN" in refused.stderr

    port = free_port()
    open_api = uvicorn_factory(env, log_dir, port)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200
        for path in ("/openapi.json", "/healthz", "/docs", "/v1/projects/p-1"):
            outside = httpx.get(f"http://{address}:{port}{path}")
            assert outside.status_code == 401, (path, outside.text)
            error = outside.json()["error"]
            assert error["code"] == "unauthorized" and "WORKSPACE_TOKEN" in error["message"]
        posted = httpx.post(
            f"http://{address}:{port}/v1/projects/p-1/actions", json={"kind": "command"}
        )
        assert posted.status_code == 401
    finally:
        open_api.stop()

    port = free_port()
    guarded = uvicorn_factory({**env, "WORKSPACE_TOKEN": TOKEN}, log_dir, port)
    try:
        url = f"http://{address}:{port}/openapi.json"
        assert httpx.get(url).status_code == 401
        authed = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert authed.status_code == 200, authed.text
    finally:
        guarded.stop()


def test_flower_refuses_a_public_address_without_basic_auth(base_env: dict[str, str]) -> None:
    env = {k: v for k, v in base_env.items() if not k.startswith("FLOWER_")}
    refused = subprocess.run(
        [*QAI, "flower", "--address", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr
