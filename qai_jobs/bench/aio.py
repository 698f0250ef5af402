"""`qai-jobs bench --scenarios aio`: what the asyncio HTTP client costs beside the blocking one.

A real `qai-jobs api` and worker (fake provider). The same calls go through
``HttpWorkspaceClient`` and ``AsyncHttpWorkspaceClient`` in one run, alternating which goes
first, so both see the same load: ``get_action``, an enqueue, an enqueue followed by ``wait``
(long-poll), and a bare GET of the same route through each client's own ``httpx`` client (what
the transport alone costs, sync and async). Then what asyncio is for: many actions in flight
from one event loop, against the same number from a thread pool of blocking clients.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qai_jobs.bench.http import _free_port, _start_api, _stop
from qai_jobs.bench.run import Worker, summarize
from qai_jobs.client.aio import AsyncHttpWorkspaceClient
from qai_jobs.client.http import HttpWorkspaceClient
from qai_jobs.config import Settings

Log = Callable[[str], None]
FAN_OUT = 32


async def _measure(url: str, token: str, samples: int) -> dict[str, Any]:
    project = f"bench-aio-{uuid.uuid4().hex[:6]}"
    sync_times: dict[str, list[float]] = {
        "raw_httpx_get": [],
        "get_action": [],
        "enqueue": [],
        "enqueue_wait": [],
    }
    async_times: dict[str, list[float]] = {k: [] for k in sync_times}
    with HttpWorkspaceClient(url, token) as blocking:
        async with AsyncHttpWorkspaceClient(url, token) as aio:
            known = blocking.command(project, "true").id
            blocking.wait_for(known, timeout=30)

            path = f"/v1/actions/{known}"

            def sync_round() -> None:
                for name, call in (
                    ("raw_httpx_get", lambda: blocking.http.get(path)),
                    ("get_action", lambda: blocking.get_action(known)),
                    ("enqueue", lambda: blocking.command(project, "true")),
                    ("enqueue_wait", lambda: blocking.command(project, "true").wait(30)),
                ):
                    started = time.perf_counter()
                    call()
                    sync_times[name].append(time.perf_counter() - started)

            async def async_round() -> None:
                started = time.perf_counter()
                await aio.http.get(path)
                async_times["raw_httpx_get"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await aio.get_action(known)
                async_times["get_action"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await aio.command(project, "true")
                async_times["enqueue"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await (await aio.command(project, "true")).wait(30)
                async_times["enqueue_wait"].append(time.perf_counter() - started)

            for i in range(samples):
                # Blocking calls here stall the loop, which has nothing else to do meanwhile.
                if i % 2:
                    sync_round()
                    await async_round()
                else:
                    await async_round()
                    sync_round()
            fan_async = await _fan_out_async(aio)
    fan_threads = _fan_out_threads(url, token)
    out: dict[str, Any] = {"samples": samples}
    for name, values in sync_times.items():
        s, a = summarize(values), summarize(async_times[name])
        out[name] = {
            "sync_p50_ms": round(s["p50_ms"], 3),
            "async_p50_ms": round(a["p50_ms"], 3),
            "overhead_p50_ms": round(a["p50_ms"] - s["p50_ms"], 3),
        }
    out["fan_out"] = {
        "actions": FAN_OUT,
        "async_one_loop_s": round(fan_async, 3),
        "threads_s": round(fan_threads, 3),
    }
    return out


async def _fan_out_async(aio: AsyncHttpWorkspaceClient) -> float:
    tag = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    handles = await asyncio.gather(
        *(aio.command(f"bench-aio-fan-{tag}-{i}", "true") for i in range(FAN_OUT))
    )
    await asyncio.gather(*(h.wait(60) for h in handles))
    return time.perf_counter() - started


def _fan_out_threads(url: str, token: str) -> float:
    tag = uuid.uuid4().hex[:6]
    with HttpWorkspaceClient(url, token) as blocking:

        def one(i: int) -> None:
            blocking.command(f"bench-aio-thr-{tag}-{i}", "true").wait(60)

        started = time.perf_counter()
        with ThreadPoolExecutor(FAN_OUT) as pool:
            list(pool.map(one, range(FAN_OUT)))
        return time.perf_counter() - started


def run_aio_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    from qai_jobs.celery_app import app

    logs = Path(tempfile.mkdtemp(prefix="qai-bench-aio-"))
    token = secrets.token_urlsafe(24)
    port = _free_port()
    worker = Worker(settings, 2, settings.workspace_queue, logs / "worker.log")
    try:
        worker.wait_ready(app)
        api = _start_api(settings, token, port, logs / "api.log")
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(_measure(url, token, 20))  # warm-up
            result = asyncio.run(_measure(url, token, max(50, min(n, 300))))
        finally:
            _stop(api)
    finally:
        worker.stop()
    for name in ("raw_httpx_get", "get_action", "enqueue", "enqueue_wait"):
        r = result[name]
        log(
            f"aio: {name:13} sync p50 {r['sync_p50_ms']:7.2f} ms, async p50 "
            f"{r['async_p50_ms']:7.2f} ms ({r['overhead_p50_ms']:+.2f} ms)"
        )
    fan = result["fan_out"]
    log(
        f"aio: {fan['actions']} actions enqueued and awaited: one event loop "
        f"{fan['async_one_loop_s']:.2f} s, {fan['actions']} threads {fan['threads_s']:.2f} s"
    )
    return result
