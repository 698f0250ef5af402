"""The API's gate: the bearer token and the request body limit, before anything else runs.

A plain ASGI middleware rather than a dependency, so that it also covers ``/docs``,
``/openapi.json`` and unknown paths, and so that a too-large body is refused before anything
reads it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qai_jobs.api.errors import error_response
from qai_jobs.errors import ErrorCode, ValidationFailed

# Paths that answer without the bearer token: the health probe, and the provider hook, which
# proves itself with its provider's signature instead (providers cannot send our token).
OPEN_PATHS = frozenset({"/healthz", "/api/workspaces/events"})


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
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.token is None and not loopback_only(scope):
            await self._refuse_exposed(scope, receive, send)
            return
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
                    ErrorCode.UNAUTHORIZED,
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

    @staticmethod
    async def _refuse_exposed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = error_response(
            401,
            ErrorCode.UNAUTHORIZED,
            "this API has no WORKSPACE_TOKEN, so it answers on loopback only: "
            "set WORKSPACE_TOKEN, or bind to 127.0.0.1",
            headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
        )
        await response(scope, receive, send)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        assert self.token is not None
        scheme, _, presented = headers.get("authorization", b"").partition(b" ")
        # Compare even when the scheme is wrong, so timing says nothing about the token.
        same = hmac.compare_digest(presented.strip(), self.token)
        return same and scheme.lower() == b"bearer"

    @staticmethod
    async def _reply(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
        await response(scope, receive, send)


def _loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def loopback_only(scope: Scope) -> bool:
    """Whether the request came in on a loopback address from a loopback peer: what an API
    without a token may answer, however it was started (``uvicorn --host 0.0.0.0`` included).
    A Unix socket (no port) is reachable only through its file's permissions: local too."""
    server, client = scope.get("server"), scope.get("client")
    if server is not None and server[1] is None:
        return True
    if server is None or client is None:
        return False  # nothing says where it came from: not known to be local
    return _loopback(server[0]) and _loopback(client[0])


def _too_large(limit: int) -> JSONResponse:
    return error_response(
        413,
        ErrorCode.PAYLOAD_TOO_LARGE,
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
