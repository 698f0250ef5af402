"""Waiting for an action inside the API without holding a thread (``?wait=``, the legacy route).

An async Redis subscription wakes the waiter; Postgres, read in the threadpool, stays the truth
and is re-read at least every ``SAFETY_RECHECK_SECONDS`` in case a notification was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import redis
import redis.asyncio as aredis
from starlette.concurrency import run_in_threadpool

from qai_jobs.client.direct import WorkspaceClient
from qai_jobs.constants import TERMINAL
from qai_jobs.notify import channel

SAFETY_RECHECK_SECONDS = 2.0


class Waiter:
    """Waits for an action to become terminal without holding a thread: an async Redis
    subscription wakes it, Postgres (read in the threadpool) stays the truth."""

    def __init__(self, client: WorkspaceClient, redis_url: str):
        self.client = client
        self.redis: Any = aredis.Redis.from_url(
            redis_url, socket_connect_timeout=3, socket_timeout=30
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def wait(self, action_id: uuid.UUID | str, timeout: float) -> dict[str, Any]:
        """The action once terminal, or as it stands after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        pubsub: Any = None
        try:
            if timeout > 0:
                pubsub = await self._subscribe(action_id)
            while True:
                action: dict[str, Any] = await run_in_threadpool(self.client.get_action, action_id)
                remaining = deadline - loop.time()
                if action["status"] in TERMINAL or remaining <= 0:
                    return action
                await self._until_done(pubsub, min(remaining, SAFETY_RECHECK_SECONDS))
        finally:
            if pubsub is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()

    async def _subscribe(self, action_id: uuid.UUID | str) -> Any:
        try:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(channel(action_id))
            return pubsub
        except (redis.RedisError, OSError):
            return None  # degrade to the safety re-check

    @staticmethod
    async def _until_done(pubsub: Any, seconds: float) -> None:
        """Return when a 'done' notification arrives or ``seconds`` pass."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        if pubsub is None:
            await asyncio.sleep(seconds)
            return
        while (left := until - loop.time()) > 0:
            try:
                raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            except (redis.RedisError, OSError):
                await asyncio.sleep(left)
                return
            if raw is None or raw.get("type") != "message":
                continue
            try:
                if json.loads(raw["data"]).get("type") == "done":
                    return
            except (TypeError, ValueError, AttributeError):
                continue
