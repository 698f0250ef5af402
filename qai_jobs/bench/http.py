"""`qai-jobs bench --scenarios http`: enqueue over the HTTP API (POST -> 202).

A real `qai-jobs api` process and a real worker run on this machine (so they compete for the
CPU as they would in production); client threads with keep-alive connections POST actions
spread over many projects, and every request's latency is measured from send to 202.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from qai_jobs.bench.run import Worker, process_env, summarize
from qai_jobs.config import Settings

Log = Callable[[str], None]
CLIENT_THREADS = 4
PROJECTS = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_api(
    settings: Settings, token: str, port: int, log_path: Path, workers: int = 1
) -> subprocess.Popen[bytes]:
    env = process_env(settings, WORKSPACE_TOKEN=token)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qai_jobs",
                "api",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so _stop can reach --workers children
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench api exited: {log_path.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("bench api did not start")


def _stop(api: subprocess.Popen[bytes]) -> None:
    api.terminate()
    try:
        api.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(api.pid, signal.SIGKILL)  # the supervisor and its server processes


def _burst(
    port: int, token: str, n: int, tag: str, threads: int = CLIENT_THREADS
) -> tuple[list[float], float, int]:
    """POST n actions from ``threads`` threads; (latencies in s, wall seconds, errors).

    The client is the standard library's keep-alive HTTPConnection rather than httpx: on a
    two-CPU machine the load generator shares the cores with the API and the worker, and the
    lighter client leaves more of them to what is being measured."""
    counts = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    body = json.dumps({"kind": "command", "cmd": "true"})

    def run(index: int) -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for i in range(counts[index]):
                project = f"bench-http-{tag}-{(index * 7919 + i) % PROJECTS}"
                headers = {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": str(uuid.uuid4()),
                }
                started = time.perf_counter()
                conn.request("POST", f"/v1/projects/{project}/actions", body, headers)
                response = conn.getresponse()
                response.read()
                latencies.append(time.perf_counter() - started)
                errors += response.status != 202
        finally:
            conn.close()
        return latencies, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(run, range(threads)))
    wall = time.perf_counter() - started
    return [v for lat, _ in results for v in lat], wall, sum(e for _, e in results)


def run_http_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    from qai_jobs.celery_app import app

    logs = Path(tempfile.mkdtemp(prefix="qai-bench-http-"))
    token = secrets.token_urlsafe(24)
    port = _free_port()
    queue = settings.workspace_queue
    worker = Worker(settings, 2, queue, logs / "worker.log")
    processes = max(2, os.cpu_count() or 1)
    try:
        worker.wait_ready(app)
        api = _start_api(settings, token, port, logs / "api.log")
        try:
            _burst(port, token, min(200, n), "warm")
            alone, _, _ = _burst(port, token, min(500, n), uuid.uuid4().hex[:6], threads=1)
            latencies, wall, errors = _burst(port, token, n, uuid.uuid4().hex[:6])
        finally:
            _stop(api)
        # The same burst against `qai-jobs api --workers N`, one server process per core.
        api = _start_api(settings, token, port, logs / "api-workers.log", workers=processes)
        try:
            _burst(port, token, min(200, n), "warm")
            _, multi_wall, multi_errors = _burst(port, token, n, uuid.uuid4().hex[:6])
        finally:
            _stop(api)
    finally:
        worker.stop()
    result: dict[str, Any] = {
        "requests": n,
        "client_threads": CLIENT_THREADS,
        "errors": errors,
        "seconds": round(wall, 3),
        "per_second": round(n / wall, 1) if wall else 0.0,
        **{k: round(v, 3) for k, v in summarize(latencies).items()},
        "one_client": {k: round(v, 3) for k, v in summarize(alone).items()},
        "api_processes": {
            "processes": processes,
            "per_second": round(n / multi_wall, 1) if multi_wall else 0.0,
            "errors": multi_errors,
        },
    }
    one = result["one_client"]
    log(
        f"http enqueue, one client: p50 {one['p50_ms']:.2f} ms, p99 {one['p99_ms']:.2f} ms; "
        f"{CLIENT_THREADS} clients: {result['per_second']:.0f} requests/s, p50 "
        f"{result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms ({n} POSTs, {errors} errors); "
        f"with --workers {processes}: {result['api_processes']['per_second']:.0f} requests/s"
    )
    return result
