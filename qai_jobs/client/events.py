"""Follow one action through ``GET /v1/actions/{id}/events`` for ``HttpWorkspaceClient.wait``.

``on_event`` gets what the direct client's ``wait`` gives it: ``{"type": "progress", ...}`` and
``{"type": "output", ...}`` as they happen. A dropped connection is resumed with
``Last-Event-ID``; the server then sends at least the ``done``, so the end is never missed
(output produced while disconnected is: its offsets show the gap, and the result keeps it).
The server is asked to end the stream at the caller's deadline (``?timeout=``), so a wait
never outlives its timeout on a stream kept busy by heartbeats.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import SSEError, connect_sse

from qai_jobs.errors import ApiUnavailable

if TYPE_CHECKING:
    from qai_jobs.client.http import HttpWorkspaceClient

# No byte (not even a heartbeat, every 15 s by default) for this long: the stream is dead.
READ_TIMEOUT_SECONDS = 60.0


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
        params: dict[str, Any] = {}
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"action {action_id} did not finish within {timeout}s")
            params["timeout"] = round(max(remaining, 0.001), 3)
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
                if response.status_code == 429 or response.status_code >= 500:
                    response.read()
                    raise _Transient(response)
                if response.status_code >= 400:
                    response.read()
                    client._check(response)
                for sse in source.iter_sse():
                    failures = 0
                    if sse.id:
                        last_id = sse.id
                    if sse.event == "done":
                        action: dict[str, Any] = json.loads(sse.data)
                        return action
                    if sse.event in ("progress", "output"):
                        on_event({"type": sse.event, **json.loads(sse.data)})
        except (httpx.TransportError, SSEError, _Transient) as exc:
            failures += 1
            if failures > client.max_retries:
                raise ApiUnavailable(f"the events stream kept failing: {exc}") from exc
            time.sleep(_pause(client, failures, deadline))
        # A stream that ended without a done: the deadline came, or the server went away.


class _Transient(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _pause(client: HttpWorkspaceClient, failures: int, deadline: float | None) -> float:
    pause = min(client.backoff_max, client.backoff_initial * 2 ** (failures - 1))
    pause = random.uniform(0, pause)  # full jitter: reconnecting clients do not stampede
    if deadline is not None:
        pause = min(pause, max(0.0, deadline - time.monotonic()))
    return pause
