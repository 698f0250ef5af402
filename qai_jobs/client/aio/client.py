"""``AsyncHttpWorkspaceClient``: ``HttpWorkspaceClient`` for asyncio producers (FastAPI, ...).

The same methods, each a coroutine, on ``httpx.AsyncClient``: local validation first, then
transient failures (network errors, 429, 5xx) retried with exponential backoff and jitter,
honouring ``Retry-After`` (tenacity's ``AsyncRetrying``), every enqueue under one
``Idempotency-Key`` across its retries. Enqueueing methods return an ``AsyncActionHandle``:
``await handle.wait(timeout)`` gives the kind's typed result. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, retry_if_result, stop_after_attempt

from qai_jobs.client.aio.events import follow
from qai_jobs.client.aio.handle import AsyncActionHandle, AsyncEventFn
from qai_jobs.client.aio.kinds import AsyncKindMethods
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
from qai_jobs.errors import ActionFailed, ErrorCode
from qai_jobs.schemas import check_project_id
from qai_jobs.sync import sync_parts
from qai_jobs.validation import PayloadLimits


class AsyncHttpWorkspaceClient(AsyncKindMethods):
    """Enqueue workspace actions and inspect them through ``qai-jobs api``, from asyncio.

    Use it as ``async with AsyncHttpWorkspaceClient(url, token) as client:`` (or call
    ``await client.aclose()``); one client holds one connection pool for its event loop.
    """

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
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.limits = limits or PayloadLimits()
        self._backoff = Backoff(backoff_initial, backoff_max)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncHttpWorkspaceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- transport ---------------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(retryable),
            wait=self._backoff,
            stop=stop_after_attempt(self.max_retries + 1),
            retry_error_callback=gave_up,
            reraise=False,
        )
        response: httpx.Response = await retrying(self.http.request, method, path, **kwargs)
        return raise_for_error(response)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._request(method, path, **kwargs)).json()

    # -- enqueue -----------------------------------------------------------------------------
    async def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> AsyncActionHandle[Any]:
        """Validate locally, then enqueue; retried safely under one idempotency key."""
        request = enqueue_request(project_id, kind, payload, idempotency_key, self.limits)
        body = await self._json("POST", request.path, json=request.body, headers=request.headers)
        return AsyncActionHandle(self, str(body["action_id"]), project_id, kind)

    # -- inspection --------------------------------------------------------------------------
    async def get_action(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        data: dict[str, Any] = await self._json("GET", f"/v1/actions/{action_id}")
        return data

    async def list_actions(
        self, project_id: str, limit: int = 100, status: str | None = None
    ) -> list[dict[str, Any]]:
        check_project_id(project_id)
        path = f"/v1/projects/{project_id}/actions"
        body = await self._json("GET", path, params=list_params(limit, status))
        actions: list[dict[str, Any]] = body["actions"]
        return actions

    async def get_workspace(self, project_id: str) -> dict[str, Any]:
        check_project_id(project_id)
        data: dict[str, Any] = await self._json("GET", f"/v1/projects/{project_id}")
        return data

    async def get_manifest(self, project_id: str) -> dict[str, Any]:
        """What the project's syncs left in its workspace (``WorkspaceClient.get_manifest``)."""
        check_project_id(project_id)
        data: dict[str, Any] = await self._json("GET", f"/v1/projects/{project_id}/manifest")
        return data

    async def cancel(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        """Cancel a queued action; Conflict if it is running or already finished."""
        data: dict[str, Any] = await self._json("POST", f"/v1/actions/{action_id}/cancel")
        return data

    async def wait_for(
        self,
        action_id: str | uuid.UUID,
        timeout: float | None = None,
        on_event: AsyncEventFn | None = None,
    ) -> dict[str, Any]:
        """The action once terminal. With ``on_event`` the action's events stream is followed
        (live progress and output); without, ``?wait=`` is long-polled."""
        if on_event is not None:
            return await follow(self, str(action_id), timeout, on_event)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            chunk = POLL_SECONDS
            if deadline is not None:
                chunk = min(chunk, max(0.0, deadline - loop.time()))
            action: dict[str, Any] = await self._json(
                "GET",
                f"/v1/actions/{action_id}",
                params={"wait": round(chunk, 3)},
                timeout=chunk + self.timeout,
            )
            if action["status"] in TERMINAL:
                return action
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(
                    f"action {action_id} is still {action['status']} after {timeout}s"
                )

    # -- delta sync --------------------------------------------------------------------------
    async def sync(
        self,
        project_id: str,
        files: Any,
        *,
        kind: str = "ensure",
        delete_missing: bool = True,
        timeout: float | None = None,
        on_event: AsyncEventFn | None = None,
        **payload: Any,
    ) -> dict[str, Any]:
        """``ensure`` (or ``write``) ``files``, sending only those that differ from the
        workspace's manifest, and wait for the result: ``WorkspaceClient.sync``'s rules (on
        ``manifest_stale`` the full tree goes, and the sandbox's hashes decide)."""

        async def submit(part: dict[str, Any]) -> dict[str, Any]:
            handle = await self.enqueue_payload(project_id, kind, {**payload, **part})
            result: dict[str, Any] = await handle.wait(timeout=timeout, on_event=on_event)
            return result

        recorded = await self.get_manifest(project_id)
        parts = sync_parts(recorded, files, payload, delete_missing=delete_missing)
        if parts.delta is not None:
            try:
                result = await submit(parts.delta)
            except ActionFailed as exc:
                if exc.code != ErrorCode.MANIFEST_STALE:
                    raise
            else:
                return parts.counted(result)
        return await submit(parts.full)
