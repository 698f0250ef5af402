"""The HTTP API's plumbing: uniform error bodies, the auth and body-size gate, async waiting.

Every error leaves as ``{"error": {"code", "message", "details"?}}`` (CONTRACT 7). The gate is a
plain ASGI middleware rather than a dependency so that it also covers ``/docs``,
``/openapi.json`` and unknown paths, and so a too-large body is refused before anything reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import uuid
from typing import Any, Protocol

import redis
import redis.asyncio as aredis
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qai_jobs.client.direct import WorkspaceClient
from qai_jobs.constants import TERMINAL
from qai_jobs.errors import Conflict, NotFound, PayloadTooLarge, QaiJobsError, ValidationFailed
from qai_jobs.notify import channel

log = logging.getLogger("qai_jobs.api")

# Paths that answer without the bearer token: the health probe, and the provider hook, which
# proves itself with a Standard Webhooks signature instead (providers cannot send our token).
OPEN_PATHS = frozenset({"/healthz", "/api/workspaces/events"})
# A waiter re-reads Postgres at least this often, in case a notification was lost.
SAFETY_RECHECK_SECONDS = 2.0


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    """('body', 'files', 0, 'path') -> 'files[0].path'; the 'body'/'query'/'path' prefix goes."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i == 0 and part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ValidationFailed)
    async def _invalid(_: Request, exc: ValidationFailed) -> JSONResponse:
        status = 413 if isinstance(exc, PayloadTooLarge) else 422
        details = {"field": exc.field} if exc.field else None
        return error_response(status, exc.code, exc.message, details)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, exc.code, exc.message)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error_response(409, exc.code, exc.message)

    @app.exception_handler(QaiJobsError)
    async def _ours(_: Request, exc: QaiJobsError) -> JSONResponse:
        return error_response(500, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        # The message only: pydantic's "input" would echo what was sent (it may be a secret).
        message = f"{field}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}"
        return error_response(422, "invalid_request", message, {"field": field})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(sa.exc.OperationalError)
    async def _db_down(_: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("Postgres unavailable: %s", str(exc.orig).splitlines()[0] if exc.orig else exc)
        return error_response(
            503,
            "database_unavailable",
            "Postgres is unreachable; retry later",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("Redis unavailable: %s", exc)
        return error_response(
            503,
            "redis_unavailable",
            "Redis is unreachable; retry later",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error (see the API's log)")


class _TooLarge(Exception):
    pass


class SubGate(Protocol):
    """Another way in for the paths it ``covers`` (the operator page's session cookie)."""

    def covers(self, path: str) -> bool: ...

    def admits(self, path: str, headers: dict[str, bytes]) -> bool: ...

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class GateMiddleware:
    """Bearer token on every path but OPEN_PATHS (and what a ``sub_gate`` admits on its own
    paths only); request bodies capped at ``max_body`` bytes, by Content-Length up front and
    by counting a streamed body as it arrives."""

    def __init__(
        self, app: ASGIApp, token: str | None, max_body: int, sub_gate: SubGate | None = None
    ):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.sub_gate = sub_gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        path = scope["path"]
        sub = self.sub_gate if self.sub_gate is not None and self.sub_gate.covers(path) else None
        if (
            sub is not None
            and self.token is not None
            and not self._authorized(headers)
            and not sub.admits(path, headers)
        ):
            await sub.refuse(scope, receive, send)
            return
        if (
            self.token is not None
            and sub is None
            and path not in OPEN_PATHS
            and not self._authorized(headers)
        ):
            await self._reply(
                scope,
                receive,
                send,
                error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <WORKSPACE_TOKEN>)",
                    headers={"WWW-Authenticate": "Bearer"},
                ),
            )
            return
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            await self._reply(scope, receive, send, _too_large(self.max_body))
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await _too_large(self.max_body)(scope, receive, send)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        assert self.token is not None
        scheme, _, presented = headers.get("authorization", b"").partition(b" ")
        # Compare even when the scheme is wrong, so timing says nothing about the token.
        same = hmac.compare_digest(presented.strip(), self.token)
        return same and scheme.lower() == b"bearer"

    @staticmethod
    async def _reply(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
        await response(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return error_response(
        413,
        "payload_too_large",
        f"request body exceeds the limit of {limit} bytes",
        {"limit": limit},
        headers={"Connection": "close"},
    )


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or ValidationFailed naming what is wrong."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise ValidationFailed("body: not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise ValidationFailed("body: must be a JSON object", field="body")
    return body


def reject_nul(value: Any, field: str = "") -> None:
    """Postgres cannot store NUL in JSON text: refuse it up front as a 422 naming the field,
    rather than failing at insert time (binary file content belongs in base64)."""
    if isinstance(value, str):
        if "\x00" in value:
            name = field or "body"
            raise ValidationFailed(
                f"{name}: contains a NUL character (send binary content base64-encoded)",
                field=name,
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_nul(key, field or "body")
            reject_nul(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            reject_nul(item, f"{field}[{i}]")


class Waiter:
    """Waits for an action to become terminal without holding a thread: an async Redis
    subscription wakes it, Postgres (read in the threadpool) stays the truth."""

    def __init__(self, client: WorkspaceClient, redis_url: str):
        self.client = client
        self.redis: Any = aredis.Redis.from_url(redis_url, socket_connect_timeout=3)

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
