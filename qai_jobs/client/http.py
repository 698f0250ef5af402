"""``HttpWorkspaceClient``: the producer API of ``WorkspaceClient``, over the HTTP API.

For services that cannot reach Postgres and Redis. Payloads are validated locally first (a bad
request fails at once, without a round trip); transient failures (network errors, 429, 5xx) are
retried with exponential backoff and jitter, honouring ``Retry-After``. Every enqueue carries an
``Idempotency-Key`` (a fresh uuid4 unless the caller gives one), reused across those retries,
so a request whose answer was lost can be sent again without enqueueing twice.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt

from qai_jobs.client.events import follow
from qai_jobs.client.handle import ActionHandle, EventFn
from qai_jobs.client.kinds import KindMethods
from qai_jobs.client.transport import (
    POLL_SECONDS,
    Backoff,
    enqueue_request,
    gave_up,
    list_params,
    raise_for_error,
    retryable,
)
from qai_jobs.constants import TERMINAL
from qai_jobs.schemas import check_project_id
from qai_jobs.sync import Syncing
from qai_jobs.validation import PayloadLimits

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
        self._backoff = Backoff(backoff_initial, backoff_max)
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
            retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(retryable),
            wait=self._backoff,
            stop=stop_after_attempt(self.max_retries + 1),
            retry_error_callback=gave_up,
            reraise=False,
        )
        response: httpx.Response = retrying(self.http.request, method, path, **kwargs)
        return raise_for_error(response)

    # -- enqueue -----------------------------------------------------------------------------
    def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> ActionHandle[Any]:
        """Validate locally, then enqueue; retried safely under one idempotency key."""
        request = enqueue_request(project_id, kind, payload, idempotency_key, self.limits)
        response = self._request("POST", request.path, json=request.body, headers=request.headers)
        return ActionHandle(self, str(response.json()["action_id"]), project_id, kind)

    # -- inspection --------------------------------------------------------------------------
    def get_action(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", f"/v1/actions/{action_id}").json()
        return data

    def list_actions(
        self, project_id: str, limit: int = 100, status: str | None = None
    ) -> list[dict[str, Any]]:
        check_project_id(project_id)
        params = list_params(limit, status)
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
