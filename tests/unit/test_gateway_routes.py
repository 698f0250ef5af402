"""The route cache: one query per preview id per expiry, however many requests wait for it."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from qai_jobs.gateway.routes import Route, Routes

PID = "0123456789abcdef0123456789abcdef"


def test_concurrent_misses_share_one_query_and_hits_need_none() -> None:
    calls: list[str] = []
    release = threading.Event()
    now = [0.0]

    def fetch(preview_id: str) -> Route | None:
        calls.append(preview_id)
        release.wait(5)  # every request arrives while the query is still running
        return Route(preview_id, "p", "ready", "http://127.0.0.1:1", True, None)

    async def scenario() -> None:
        routes = Routes(fetch, ThreadPoolExecutor(4), ttl=1.0, clock=lambda: now[0])
        waiting = [asyncio.ensure_future(routes.get(PID)) for _ in range(200)]
        await asyncio.sleep(0.05)
        release.set()
        got = await asyncio.gather(*waiting)
        assert len(calls) == 1 and all(r is got[0] for r in got)
        for _ in range(1000):
            await routes.get(PID)
        assert len(calls) == 1  # cached
        now[0] = 1.5  # expired
        await routes.get(PID)
        assert len(calls) == 2
        await routes.get(PID, fresh=True)  # a refused upstream asks again at once
        assert len(calls) == 3
        assert await routes.get("f" * 32) is not None and len(calls) == 4

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 5


def test_unknown_ids_are_cached_too() -> None:
    calls: list[str] = []

    def fetch(preview_id: str) -> Route | None:
        calls.append(preview_id)
        return None

    async def scenario() -> None:
        routes = Routes(fetch, ThreadPoolExecutor(1), ttl=60)
        for _ in range(100):
            assert await routes.get(PID) is None
        assert len(calls) == 1

    asyncio.run(scenario())
