"""Forwarding one request (or WebSocket) to a dev server, with aiohttp on both sides.

Bodies stream both ways through aiohttp's flow control: a slow client pauses the upstream read
and a slow upstream pauses the client's upload, so memory stays bounded whatever the sizes.
Small responses of known length take a buffered path (one write instead of a stream). Hop-by-hop
headers stay on their own hop; ``X-Forwarded-For/Proto/Host`` tell the dev server who asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

# RFC 9110 7.6.1, plus what proxies conventionally drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Expect: the gateway's own server answers 100-continue; the upstream request needs none.
REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# Handshake headers aiohttp's WebSocket client writes itself.
WS_DROP = REQUEST_DROP | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
}
BUFFERED_MAX = 64 * 1024


class UpstreamUnreachable(Exception):
    """The dev server refused or did not accept the connection (nothing was sent)."""


def _connection_tokens(headers: Any) -> set[str]:
    """Headers named in Connection are hop-by-hop too."""
    return {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}


def upstream_headers(
    request: web.Request,
    scheme: str,
    drop: frozenset[str] = REQUEST_DROP,
    behind_proxy: bool = False,
) -> CIMultiDict[str]:
    """``behind_proxy``: the peer is the gateway's own HAProxy, which has added the client's
    address to ``X-Forwarded-For`` already (and is the only one that can connect)."""
    skip = drop | _connection_tokens(request.headers)
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in skip
    )
    if not behind_proxy:
        peer = request.remote or ""
        prior = ", ".join(request.headers.getall("X-Forwarded-For", []))
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


def _response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    extra = _connection_tokens(upstream.headers)
    return CIMultiDict(
        (k, v)
        for k, v in upstream.headers.items()
        if k.lower() not in _RESPONSE_DROP and k.lower() not in extra
    )


def is_websocket(request: web.Request) -> bool:
    return request.headers.get(
        "Upgrade", ""
    ).lower() == "websocket" and "upgrade" in _connection_tokens(request.headers)


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: CIMultiDict[str],
    body: Any,
) -> aiohttp.ClientResponse:
    """The upstream's response. A connection closed before any answer, with nothing of the
    request consumed, is tried once more (a pooled connection may have gone stale), then
    counts as unreachable: a port forward (a local sandbox's namespace) accepts connections
    for a dev server that is gone and closes them at once."""
    for attempt in (1, 2):
        try:
            return await session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(str(exc)) from exc
        except aiohttp.ServerTimeoutError:
            raise
        except aiohttp.ClientConnectionError as exc:  # reset, disconnected: no answer at all
            if body is not None:
                raise
            if attempt == 2:
                raise UpstreamUnreachable(str(exc)) from exc
    raise AssertionError("unreachable")


async def forward_http(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    extra_response_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    body = request.content if request.body_exists else None
    upstream = await _send(session, request.method, url, headers, body)
    try:
        out = _response_headers(upstream)
        if extra_response_headers:
            out.extend(extra_response_headers)
        length = upstream.content_length
        if request.method == "HEAD" or upstream.status in (204, 304):
            if length is not None:
                out["Content-Length"] = str(length)
            return web.Response(status=upstream.status, reason=upstream.reason, headers=out)
        # Known and small, or already complete (a short chunked response usually arrives with
        # its headers): one write to the client instead of headers, chunks and an end.
        complete = length is None and upstream.content.is_eof()
        if complete or (length is not None and length <= BUFFERED_MAX):
            data = await upstream.read()
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=out, body=data
            )
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (aiohttp.ClientError, ConnectionResetError):
            # Headers are out: all that is left is to cut the client's response short too.
            if request.transport is not None:
                request.transport.close()
        return response
    finally:
        upstream.release()


async def forward_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    on_message: Callable[[], None] = lambda: None,
    extra_headers: dict[str, str] | None = None,
) -> web.WebSocketResponse:
    """Open the upstream WebSocket first (so its subprotocol choice can be passed on), then
    accept the client's (with ``extra_headers`` on its 101) and relay messages both ways until
    either side closes."""
    protocols = [
        p.strip()
        for v in request.headers.getall("Sec-WebSocket-Protocol", [])
        for p in v.split(",")
        if p.strip()
    ]
    try:
        upstream = await session.ws_connect(
            url, headers=headers, protocols=protocols, autoping=False, max_msg_size=0
        )
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(str(exc)) from exc
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (), autoping=False, max_msg_size=0
    )
    client.headers.update(extra_headers or {})
    try:
        await client.prepare(request)
        await asyncio.gather(
            _relay(client, upstream, on_message), _relay(upstream, client, on_message)
        )
    finally:
        await upstream.close()
        await client.close()
    return client


async def _relay(source: Any, sink: Any, on_message: Callable[[], None]) -> None:
    """Copy messages from ``source`` to ``sink``; a close on one side closes the other."""
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
        async for message in source:
            on_message()
            if message.type == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == WSMsgType.PONG:
                await sink.pong(message.data)
            elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.ERROR):
                break
    code = source.close_code or 1000
    await sink.close(code=code if 1000 <= code < 5000 and code not in (1005, 1006) else 1000)
