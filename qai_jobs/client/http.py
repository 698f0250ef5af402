"""``HttpWorkspaceClient``: the producer API of ``WorkspaceClient``, over the HTTP API.

For services that cannot reach Postgres and Redis. Payloads are validated locally first (a bad
request fails at once, without a round trip); transient failures (network errors, 429, 5xx) are
retried with exponential backoff and jitter, honouring ``Retry-After``. Every enqueue carries an
``Idempotency-Key`` (a fresh uuid4 unless the caller gives one), reused across those retries,
so a request whose answer was lost can be sent again without enqueueing twice.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)

from qai_jobs.client.events import follow
from qai_jobs.client.handle import ActionHandle, EventFn
from qai_jobs.client.kinds import KindMethods
from qai_jobs.constants import TERMINAL
from qai_jobs.errors import (
    ApiUnavailable,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
)
from qai_jobs.schemas import check_project_id
from qai_jobs.sync import Syncing
from qai_jobs.validation import PayloadLimits, payload_to_json, validate_payload

# One long-poll lasts at most this long; ``wait`` loops until its own deadline.
POLL_SECONDS = 30.0
# Retry-After values beyond this are capped: a client should not stall for minutes on a hint.
MAX_RETRY_AFTER = 30.0


def _retryable(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def _retry_after(response: httpx.Response) -> float | None:
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


class _Backoff:
    """Exponential backoff with jitter, unless the server said how long with Retry-After."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            hint = _retry_after(outcome.result())
            if hint is not None:
                return min(hint, MAX_RETRY_AFTER)
        return float(self.backoff(state))


# The handle every client returns; kept under its old name too.
HttpActionHandle = ActionHandle


class HttpWorkspaceClient(KindMethods, Syncing):
    """Enqueue workspace actions and inspect them through ``qai-jobs api``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 8,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        limits: PayloadLimits | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.limits = limits or PayloadLimits()
        self._backoff = _Backoff(backoff_initial, backoff_max)
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpWorkspaceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        retrying = Retrying(
            retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(_retryable),
            wait=self._backoff,
            stop=stop_after_attempt(self.max_retries + 1),
            retry_error_callback=self._gave_up,
            reraise=False,
        )
        response: httpx.Response = retrying(self.http.request, method, path, **kwargs)
        return self._check(response)

    @staticmethod
    def _gave_up(state: RetryCallState) -> httpx.Response:
        outcome = state.outcome
        assert outcome is not None
        if outcome.failed:
            exc = outcome.exception()
            raise ApiUnavailable(f"the API is unreachable: {type(exc).__name__}: {exc}") from exc
        response: httpx.Response = outcome.result()
        return response  # the last 429/5xx: _check turns it into an error

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        try:
            error = response.json().get("error") or {}
        except ValueError:
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

    # -- enqueue -----------------------------------------------------------------------------
    def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> ActionHandle[Any]:
        """Validate locally, then enqueue; retried safely under one idempotency key."""
        check_project_id(project_id)
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
            raise ValidationFailed("idempotency_key: 1 to 255 characters", field="idempotency_key")
        payload = {k: v for k, v in payload.items() if v is not None}
        parsed = validate_payload(kind, payload, self.limits)
        key = idempotency_key or str(uuid.uuid4())
        response = self._request(
            "POST",
            f"/v1/projects/{project_id}/actions",
            json={**payload_to_json(parsed), "kind": kind},
            headers={"Idempotency-Key": key},
        )
        return ActionHandle(self, str(response.json()["action_id"]), project_id, kind)

    # -- inspection --------------------------------------------------------------------------
    def get_action(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", f"/v1/actions/{action_id}").json()
        return data

    def list_actions(
        self, project_id: str, limit: int = 100, status: str | None = None
    ) -> list[dict[str, Any]]:
        check_project_id(project_id)
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        body = self._request("GET", f"/v1/projects/{project_id}/actions", params=params).json()
        actions: list[dict[str, Any]] = body["actions"]
        return actions

    def get_workspace(self, project_id: str) -> dict[str, Any]:
        check_project_id(project_id)
        data: dict[str, Any] = self._request("GET", f"/v1/projects/{project_id}").json()
        return data

    def preview_token(self, project_id: str, ttl_s: float = 3600) -> dict[str, Any]:
        """A gateway URL with a short-lived token (``WorkspaceClient.preview_token``)."""
        check_project_id(project_id)
        path = f"/v1/projects/{project_id}/preview-token"
        data: dict[str, Any] = self._request("POST", path, json={"ttl_s": ttl_s}).json()
        return data

    def get_manifest(self, project_id: str) -> dict[str, Any]:
        """What the project's syncs left in its workspace (``WorkspaceClient.get_manifest``)."""
        check_project_id(project_id)
        data: dict[str, Any] = self._request("GET", f"/v1/projects/{project_id}/manifest").json()
        return data

    def cancel(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        """Cancel a queued action; Conflict if it is running or already finished."""
        data: dict[str, Any] = self._request("POST", f"/v1/actions/{action_id}/cancel").json()
        return data

    def wait_for(
        self,
        action_id: str | uuid.UUID,
        timeout: float | None = None,
        on_event: EventFn | None = None,
    ) -> dict[str, Any]:
        """Block until the action is terminal; return it. With ``on_event`` the action's events
        stream is followed (live progress and output); without, ``?wait=`` is long-polled."""
        if on_event is not None:
            return follow(self, str(action_id), timeout, on_event)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = POLL_SECONDS
            if deadline is not None:
                chunk = min(chunk, max(0.0, deadline - time.monotonic()))
            action: dict[str, Any] = self._request(
                "GET",
                f"/v1/actions/{action_id}",
                params={"wait": round(chunk, 3)},
                timeout=chunk + self.timeout,
            ).json()
            if action["status"] in TERMINAL:
                return action
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"action {action_id} is still {action['status']} after {timeout}s"
                )
