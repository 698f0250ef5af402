"""What the HTTP clients (``HttpWorkspaceClient`` and its asyncio twin) share, free of I/O:
which answers are worth retrying and after how long, how an error answer maps onto the
package's exceptions, how an enqueue request is built, and how one events-stream event reads.

Keeping these pure is what lets the two clients differ only in how they wait (a thread that
sleeps or a coroutine that awaits): the retry and idempotency semantics cannot drift apart.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryCallState, wait_exponential_jitter

from qai_jobs.errors import (
    ApiUnavailable,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
)
from qai_jobs.schemas import check_project_id
from qai_jobs.validation import PayloadLimits, payload_to_json, validate_payload

# One long-poll lasts at most this long; ``wait`` loops until its own deadline.
POLL_SECONDS = 30.0
# Retry-After values beyond this are capped: a client should not stall for minutes on a hint.
MAX_RETRY_AFTER = 30.0
# No byte on an events stream (not even a heartbeat, every 15 s by default) for this long:
# the stream is dead.
READ_TIMEOUT_SECONDS = 60.0
EVENT_KINDS = ("progress", "output")


def retryable(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Backoff:
    """Exponential backoff with jitter, unless the server said how long with Retry-After."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            hint = retry_after(outcome.result())
            if hint is not None:
                return min(hint, MAX_RETRY_AFTER)
        return float(self.backoff(state))


def gave_up(state: RetryCallState) -> httpx.Response:
    """tenacity's ``retry_error_callback``: a network error that outlived the retries becomes
    ApiUnavailable; the last 429/5xx is returned for ``raise_for_error`` to map."""
    outcome = state.outcome
    assert outcome is not None
    if outcome.failed:
        exc = outcome.exception()
        raise ApiUnavailable(f"the API is unreachable: {type(exc).__name__}: {exc}") from exc
    response: httpx.Response = outcome.result()
    return response


def raise_for_error(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded, else the package's exception for its error body."""
    if response.status_code < 400:
        return response
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = str(error.get("message") or f"HTTP {response.status_code}")
    details = error.get("details") or {}
    status = response.status_code
    if status == 401:
        raise Unauthorized(message)
    if status == 404:
        raise NotFound(message)
    if status == 409:
        raise Conflict(message)
    if status == 413:
        raise PayloadTooLarge(message, field=details.get("field"))
    if status == 422:
        raise ValidationFailed(message, field=details.get("field"))
    raise ApiUnavailable(message, code=str(error.get("code") or "api_unavailable"))


@dataclass(frozen=True)
class EnqueueRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def enqueue_request(
    project_id: str,
    kind: str,
    payload: dict[str, Any],
    idempotency_key: str | None,
    limits: PayloadLimits,
) -> EnqueueRequest:
    """Validate locally (a bad request fails without a round trip) and build the POST. The
    ``Idempotency-Key`` is the caller's or a fresh uuid4, reused by every retry of this one
    request, so a retry whose first answer was lost never enqueues twice."""
    check_project_id(project_id)
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
        raise ValidationFailed("idempotency_key: 1 to 255 characters", field="idempotency_key")
    payload = {k: v for k, v in payload.items() if v is not None}
    parsed = validate_payload(kind, payload, limits)
    return EnqueueRequest(
        path=f"/v1/projects/{project_id}/actions",
        body={**payload_to_json(parsed), "kind": kind},
        headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
    )


def list_params(limit: int, status: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    return params


class TransientStatus(Exception):
    """An events stream answered 429 or 5xx: reconnect after a pause."""

    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def stream_params(action_id: str, timeout: float | None, deadline: float | None) -> dict[str, Any]:
    """The events stream's query: the server ends it at the caller's deadline, so a wait
    never outlives its timeout on a stream kept busy by heartbeats."""
    if deadline is None:
        return {}
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"action {action_id} did not finish within {timeout}s")
    return {"timeout": round(max(remaining, 0.001), 3)}


def reconnect_pause(initial: float, maximum: float, failures: int, deadline: float | None) -> float:
    pause = min(maximum, initial * 2 ** (failures - 1))
    pause = random.uniform(0, pause)  # full jitter: reconnecting clients do not stampede
    if deadline is not None:
        pause = min(pause, max(0.0, deadline - time.monotonic()))
    return pause


def read_event(event: str, data: str) -> tuple[str, dict[str, Any]] | None:
    """("done", the action) or (kind, the event as ``on_event`` gets it); None to skip."""
    if event == "done":
        action: dict[str, Any] = json.loads(data)
        return "done", action
    if event in EVENT_KINDS:
        return event, {"type": event, **json.loads(data)}
    return None
