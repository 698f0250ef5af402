"""`qai-jobs bench --scenarios gateway`: the preview gateway beside the direct URL, same run.

A real worker (local provider) runs examples/hello; a real `qai-jobs gateway` fronts it. One
load generator (aiohttp's client on uvloop, keep-alive connections, in this process) measures:

* latency of a small page, one request at a time, alternating direct and gateway so both see
  the same machine; the gateway's added latency is the difference of the medians;
* throughput with 16 concurrent clients for a fixed time, direct and gateway alternated over
  several rounds (the median round of each);
* wake-on-request: the workspace is put to sleep, then one plain GET through the gateway is
  timed until the page arrives (enqueue of the wake, the wake, the dev server's start).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from qai_jobs.config import Settings

Log = Callable[[str], None]
HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"
CLIENTS = 16
TARGET_ADDED_MS = 1.0
TARGET_RATIO = 0.8


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_gateway(settings: Settings, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    from qai_jobs.bench.run import process_env

    env = process_env(
        settings, WORKSPACE_RUNTIME="local", WORKSPACE_PREVIEW_DOMAIN=f"preview.localhost:{port}"
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qai_jobs", "gateway", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench gateway exited: {log_path.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("bench gateway did not start")


class _Target:
    """Where to send requests: (url, Host header) — *.localhost is not resolved here."""

    def __init__(self, url: str, host: str | None = None):
        self.url = url
        self.headers = {"Host": host} if host else {}


async def _latency(direct: _Target, gateway: _Target, samples: int) -> dict[str, list[float]]:
    import aiohttp

    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as session:
        for _ in range(samples):
            for name, target in (("direct", direct), ("gateway", gateway)):
                started = time.perf_counter()
                async with session.get(target.url, headers=target.headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{name} answered {response.status}")
                times[name].append(time.perf_counter() - started)
    return times


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its live children (the gateway's
    HAProxy) so far."""
    total = 0.0
    for one in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


async def _throughput(target: _Target, seconds: float) -> tuple[float, int, int]:
    """Requests per second from CLIENTS keep-alive connections; (rate, errors, requests)."""
    import aiohttp

    done = errors = 0
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done, errors
            while time.perf_counter() < end:
                async with session.get(target.url, headers=target.headers) as response:
                    await response.read()
                    done += 1
                    errors += response.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return done / (time.perf_counter() - started), errors, done


def _wakes(client: Any, project: str, gateway: _Target, samples: int, log: Log) -> list[float]:
    log(f"gateway: wake-on-request of a slept examples/hello, {samples} times")
    times: list[float] = []
    for _ in range(samples):
        client.sleep(project).wait(120)
        started = time.perf_counter()
        page = httpx.get(gateway.url, headers=gateway.headers, timeout=60)
        times.append(time.perf_counter() - started)
        if page.status_code != 200 or "Hello from qai-jobs" not in page.text:
            raise RuntimeError(f"woken preview answered {page.status_code}")
    return times


def run_gateway_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    from qai_jobs.bench.run import Worker, summarize
    from qai_jobs.celery_app import app
    from qai_jobs.client import WorkspaceClient

    root = Path(tempfile.mkdtemp(prefix="qai-bench-gateway-"))
    port = _free_port()
    domain = f"preview.localhost:{port}"
    gsettings = settings.model_copy(update={"workspace_preview_domain": domain})
    worker = Worker(
        settings,
        2,
        settings.workspace_queue,
        root / "worker.log",
        extra_env={
            "WORKSPACE_RUNTIME": "local",
            "WORKSPACE_ROOT": str(root / "workspaces"),
            "WORKSPACE_PREVIEW_DOMAIN": domain,
        },
    )
    client = WorkspaceClient(gsettings)
    project = f"bench-gateway-{uuid.uuid4().hex[:6]}"
    samples = max(200, min(2000, n))
    rounds, seconds = 3, 4.0
    gateway_proc = None
    try:
        worker.wait_ready(app)
        gateway_proc = _start_gateway(settings, port, root / "gateway.log")
        files = {p.name: p.read_text() for p in sorted(HELLO.iterdir()) if p.is_file()}
        result = client.ensure(project, files=files).wait(300)
        upstream = client.get_workspace(project)["upstream_url"]
        direct = _Target(upstream.rstrip("/") + "/")
        gateway = _Target(f"http://127.0.0.1:{port}/", urlsplit(str(result["preview_url"])).netloc)
        asyncio.run(_latency(direct, gateway, 200))  # warm-up: connections, caches
        log(f"gateway: small page, one request at a time, {samples} each, alternated")
        latency = asyncio.run(_latency(direct, gateway, samples))
        log(f"gateway: {CLIENTS} concurrent clients, {rounds} rounds of {seconds:g}s each way")
        rates: dict[str, list[float]] = {"direct": [], "gateway": []}
        errors = 0
        # CPU per request, which the shared machine's noise does not move: the gateway's
        # process, and this load generator's own (what any client pays, direct or not).
        cpu = {"gateway": 0.0, "client": 0.0}
        counts = {"gateway": 0, "client": 0}
        for _ in range(rounds):
            for name, target in (("direct", direct), ("gateway", gateway)):
                gateway_cpu, client_cpu = _cpu_seconds(gateway_proc.pid), time.process_time()
                rate, failed, requests = asyncio.run(_throughput(target, seconds))
                if name == "gateway":
                    cpu["gateway"] += _cpu_seconds(gateway_proc.pid) - gateway_cpu
                    counts["gateway"] += requests
                else:
                    cpu["client"] += time.process_time() - client_cpu
                    counts["client"] += requests
                rates[name].append(rate)
                errors += failed
        wakes = _wakes(client, project, gateway, 7, log)
    finally:
        try:
            client.destroy(project).wait(60)
        except Exception as exc:  # report, and clean up the rest
            log(f"gateway: destroy {project} failed: {exc}")
        if gateway_proc is not None:
            gateway_proc.terminate()
            gateway_proc.wait(timeout=20)
        worker.stop()
        client.engine.dispose()
        shutil.rmtree(root / "workspaces", ignore_errors=True)
    direct_ms = summarize(latency["direct"])
    gateway_ms = summarize(latency["gateway"])
    added = gateway_ms["p50_ms"] - direct_ms["p50_ms"]
    direct_rate = statistics.median(rates["direct"])
    gateway_rate = statistics.median(rates["gateway"])
    ratio = gateway_rate / direct_rate
    wake = summarize(wakes)
    log(
        f"gateway: small page p50 direct {direct_ms['p50_ms']:.3f} ms, via gateway "
        f"{gateway_ms['p50_ms']:.3f} ms: added {added:.3f} ms (target <= {TARGET_ADDED_MS:g})"
    )
    log(
        f"gateway: {CLIENTS} clients direct {direct_rate:.0f} req/s, via gateway "
        f"{gateway_rate:.0f} req/s: {ratio:.2f}x (target >= {TARGET_RATIO:g}x), {errors} errors"
    )
    per_request = {k: round(cpu[k] / counts[k] * 1e6, 1) for k in cpu if counts[k]}
    log(
        f"gateway: CPU per request: the gateway {per_request.get('gateway')} us, the load "
        f"generator {per_request.get('client')} us"
    )
    log(f"gateway: wake-on-request p50 {wake['p50_ms']:.0f} ms, p99 {wake['p99_ms']:.0f} ms")
    return {
        "latency_direct": {k: round(v, 3) for k, v in direct_ms.items()},
        "latency_gateway": {k: round(v, 3) for k, v in gateway_ms.items()},
        "added_p50_ms": round(added, 3),
        "samples": samples,
        "throughput": {
            "clients": CLIENTS,
            "direct_per_second": round(direct_rate, 1),
            "gateway_per_second": round(gateway_rate, 1),
            "rounds": {k: [round(r) for r in v] for k, v in rates.items()},
            "ratio": round(ratio, 3),
            "errors": errors,
            "cpu_us_per_request": per_request,
        },
        "wake_on_request": {k: round(v, 1) for k, v in wake.items()} | {"samples": len(wakes)},
        "targets_met": {"added_latency": added <= TARGET_ADDED_MS, "throughput": ratio >= 0.8},
        "logs": str(root),
    }
