"""Follow one action through ``GET /v1/actions/{id}/events`` for ``HttpWorkspaceClient.wait``.

``on_event`` gets what the direct client's ``wait`` gives it: ``{"type": "progress", ...}`` and
``{"type": "output", ...}`` as they happen. A dropped connection is resumed with
``Last-Event-ID``; the server then sends at least the ``done``, so the end is never missed
(output produced while disconnected is: its offsets show the gap, and the result keeps it).
The server is asked to end the stream at the caller's deadline (``?timeout=``), so a wait
never outlives its timeout on a stream kept busy by heartbeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import SSEError, connect_sse

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
    from qai_jobs.client.http import HttpWorkspaceClient


def follow(
    client: HttpWorkspaceClient,
    action_id: str,
    timeout: float | None,
    on_event: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """The action once terminal (any terminal status); TimeoutError after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last_id: str | None = None
    failures = 0
    while True:
        params = stream_params(action_id, timeout, deadline)
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(
                client.http,
                "GET",
                f"/v1/actions/{action_id}/events",
                params=params,
                headers=headers,
                timeout=httpx.Timeout(client.timeout, read=READ_TIMEOUT_SECONDS),
            ) as source:
                response = source.response
                if response.status_code >= 400:
                    response.read()
                    if retryable(response):
                        raise TransientStatus(response)
                    raise_for_error(response)
                for sse in source.iter_sse():
                    failures = 0
                    if sse.id:
                        last_id = sse.id
                    got = read_event(sse.event, sse.data)
                    if got is None:
                        continue
                    if got[0] == "done":
                        return got[1]
                    on_event(got[1])
        except (httpx.TransportError, SSEError, TransientStatus) as exc:
            failures += 1
            if failures > client.max_retries:
                raise ApiUnavailable(f"the events stream kept failing: {exc}") from exc
            time.sleep(
                reconnect_pause(client.backoff_initial, client.backoff_max, failures, deadline)
            )
        # A stream that ended without a done: the deadline came, or the server went away.
