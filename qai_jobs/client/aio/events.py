"""Follow one action's events stream from asyncio, for ``AsyncHttpWorkspaceClient.wait``.

The twin of ``events.follow``: the same reconnection with ``Last-Event-ID`` (the server then
sends at least the ``done``), the same deadline handed to the server as ``?timeout=``, the same
bounded reconnect budget; only the waiting is a coroutine's.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from qai_jobs.client.aio.handle import AsyncEventFn
from qai_jobs.client.transport import (
    READ_TIMEOUT_SECONDS,
    TransientStatus,
    raise_for_error,
    read_event,
    reconnect_pause,
    retryable,
    stream_params,
)
from qai_jobs.errors import ApiUnavailable

if TYPE_CHECKING:
    from qai_jobs.client.aio.client import AsyncHttpWorkspaceClient


async def follow(
    client: AsyncHttpWorkspaceClient,
    action_id: str,
    timeout: float | None,
    on_event: AsyncEventFn,
) -> dict[str, Any]:
    """The action once terminal (any terminal status); TimeoutError after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last_id: str | None = None
    failures = 0
    while True:
        params = stream_params(action_id, timeout, deadline)
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            async with aconnect_sse(
                client.http,
                "GET",
                f"/v1/actions/{action_id}/events",
                params=params,
                headers=headers,
                timeout=httpx.Timeout(client.timeout, read=READ_TIMEOUT_SECONDS),
            ) as source:
                response = source.response
                if response.status_code >= 400:
                    await response.aread()
                    if retryable(response):
                        raise TransientStatus(response)
                    raise_for_error(response)
                async for sse in source.aiter_sse():
                    failures = 0
                    if sse.id:
                        last_id = sse.id
                    got = read_event(sse.event, sse.data)
                    if got is None:
                        continue
                    if got[0] == "done":
                        return got[1]
                    outcome = on_event(got[1])
                    if inspect.isawaitable(outcome):
                        await outcome
        except (httpx.TransportError, SSEError, TransientStatus) as exc:
            failures += 1
            if failures > client.max_retries:
                raise ApiUnavailable(f"the events stream kept failing: {exc}") from exc
            await asyncio.sleep(
                reconnect_pause(client.backoff_initial, client.backoff_max, failures, deadline)
            )
        # A stream that ended without a done: the deadline came, or the server went away.
