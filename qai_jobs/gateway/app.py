"""The gateway's aiohttp application: route by Host, admit, bring the preview back, forward.

Answers: the dev server's own response when it is up; ``401`` without a valid token (token
mode); ``404`` for an unknown preview id, ``410`` for a destroyed workspace (neither enqueues
anything); ``503`` with ``Retry-After`` when the workspace could not be brought back within the
wait (a browser asking for HTML gets a small page that reloads itself); ``502`` when the dev
server fails mid-request. Requests for the gateway's own host serve ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aredis
import sqlalchemy as sa
from aiohttp import web

from qai_jobs.api.waiter import Waiter
from qai_jobs.client import WorkspaceClient
from qai_jobs.config import Settings
from qai_jobs.gateway import auth, haproxy, proxy
from qai_jobs.gateway.activity import Activity
from qai_jobs.gateway.fastpath import FastPath
from qai_jobs.gateway.metrics import GatewayMetrics
from qai_jobs.gateway.routes import Route, Routes, lookup, lookup_many
from qai_jobs.gateway.tokens import signing_key
from qai_jobs.gateway.urls import preview_id_of
from qai_jobs.gateway.wake import Reviver

log = logging.getLogger("qai_jobs.gateway")

UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
RETRY_AFTER_SECONDS = 5
_RELOAD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{after}">
<title>Starting the preview</title></head>
<body><p>{message}</p><p>This page reloads itself.</p></body></html>
"""


class Gateway:
    """``run_dir``: HAProxy serves the public port with its files there (see haproxy.py)."""

    def __init__(self, settings: Settings, run_dir: Path | None = None):
        assert settings.workspace_preview_domain, "the gateway needs WORKSPACE_PREVIEW_DOMAIN"
        self.settings = settings
        self.domain = settings.workspace_preview_domain
        self.scheme = settings.workspace_preview_scheme
        self.metrics = GatewayMetrics()
        self.client = WorkspaceClient(settings)
        self.executor = ThreadPoolExecutor(8, thread_name_prefix="qai-gateway-db")
        engine = self.client.engine
        self.routes = Routes(
            lambda pid: lookup(engine, pid), self.executor, settings.workspace_gateway_route_seconds
        )
        self.activity = Activity(
            engine,
            self.executor,
            settings.workspace_gateway_activity_seconds,
            self.metrics.activity_writes.inc,
        )
        self.redis: Any = aredis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
        self.gate: auth.TokenGate | None = None
        if settings.workspace_preview_auth == "token":
            self.gate = auth.TokenGate(signing_key(settings), self.redis, self.scheme == "https")
        self.session: aiohttp.ClientSession | None = None
        self.reviver: Reviver | None = None
        self.fast: FastPath | None = None
        self.retry_socket: str | None = None
        if run_dir is not None:
            self.retry_socket = str(run_dir / haproxy.RETRY_SOCKET)
            self.fast = FastPath(
                haproxy.RuntimeAPI(run_dir / haproxy.ADMIN_SOCKET),
                lambda ids: lookup_many(engine, ids),
                self.executor,
                self.activity.touch,
                settings.workspace_gateway_route_seconds,
                settings.workspace_gateway_activity_seconds,
                str(run_dir / haproxy.MAP_FILE),
            )
            fast = self.fast
            self.metrics.fast.source = lambda: fast.counters

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, _: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=UPSTREAM_TIMEOUT,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        waiter = Waiter(self.client, self.settings.redis_url)
        self.reviver = Reviver(
            self.client,
            waiter,
            self.routes,
            self.executor,
            self.metrics,
            self.settings.workspace_gateway_wake_seconds,
        )
        self.activity.start()
        if self.fast is not None:
            self.fast.start()

    async def stop(self, _: web.Application) -> None:
        if self.fast is not None:
            await self.fast.stop()
        await self.activity.stop()
        if self.session is not None:
            await self.session.close()
        if self.reviver is not None:
            await self.reviver.waiter.close()
        await self.redis.aclose()
        self.executor.shutdown(wait=False)

    def application(self) -> web.Application:
        app = web.Application(handler_args={"max_field_size": 16384})
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # -- requests ----------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        kind = "websocket" if proxy.is_websocket(request) else "http"
        try:
            response = await self._answer(request, kind)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("Postgres unavailable: %s", type(exc).__name__)
            response = _unavailable(request, "the gateway cannot reach its database", 1)
        self.metrics.request(kind, response.status, time.perf_counter() - started)
        return response

    async def _answer(self, request: web.Request, kind: str) -> web.StreamResponse:
        preview_id = preview_id_of(request.host, self.domain)
        if preview_id is None:
            return await self._own(request)
        host = request.host.lower()
        # HAProxy sends a request back here when its mapped upstream refused it: what
        # Postgres says now decides, and the fast path waits until it works again.
        fast_failed = self._from_fast_path(request)
        if fast_failed and self.fast is not None:
            self.fast.evict(host)
        route = await self.routes.get(preview_id, fresh=fast_failed)
        # Unknown or destroyed is said before any token is asked for (contract §7a): preview
        # ids are random, so this tells a stranger nothing they could use.
        if route is None or route.status == "destroyed":
            return _gone(route)
        cookie: str | None = None
        if self.gate is not None:
            try:
                admission = await self.gate.admit(
                    request, preview_id, websocket=kind == "websocket"
                )
            except aredis.RedisError:
                return _unavailable(request, "the gateway cannot check tokens right now", 1)
            if not admission.allowed:
                return _plain(401, "this preview needs a valid preview token")
            if admission.redirect is not None:
                headers = {"Location": admission.redirect, "Cache-Control": "no-store"}
                if admission.cookie:
                    headers["Set-Cookie"] = admission.cookie
                return web.Response(status=302, headers=headers)
            cookie = admission.cookie
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.workspace_gateway_wake_seconds
        if route.status == "sleeping":
            route = await self._revive(route, "wake", deadline)
        retried = False
        while True:
            if route is None or route.status == "destroyed":
                return _gone(route)
            if not route.proxiable:
                if route.status in ("ready", "error") and route.dev_server_wanted and not retried:
                    retried = True
                    route = await self._revive(route, "preview", deadline)
                    continue
                return _unavailable(request, "the preview is not running yet", RETRY_AFTER_SECONDS)
            self.activity.touch(route.project_id)
            try:
                response = await self._forward(request, kind, route, cookie)
            except proxy.UpstreamUnreachable:
                self.metrics.upstream_error("connect")
                if retried:
                    return _unavailable(request, "the preview is restarting", RETRY_AFTER_SECONDS)
                retried = True
                route = await self._recover(route, deadline)
                continue
            if self.fast is not None and kind == "http" and response.status < 500:
                self.fast.offer(host, route)
            return response

    def _from_fast_path(self, request: web.Request) -> bool:
        if self.retry_socket is None or request.transport is None:
            return False
        return bool(request.transport.get_extra_info("sockname") == self.retry_socket)

    async def _recover(self, stale: Route, deadline: float) -> Route | None:
        """The upstream refused: ask Postgres what is true now, and bring the preview back
        through the pipeline if it is asleep or its dev server died."""
        route = await self.routes.get(stale.preview_id, fresh=True)
        if route is None or route.status == "destroyed":
            return route
        if route.status == "sleeping":
            return await self._revive(route, "wake", deadline)
        if route.upstream != stale.upstream and route.proxiable:
            return route  # it moved (a new sandbox, another host): try the new place
        if route.dev_server_wanted:
            return await self._revive(route, "preview", deadline)
        return route

    async def _revive(self, route: Route, kind: str, deadline: float) -> Route | None:
        assert self.reviver is not None
        return (await self.reviver.revive(route, kind, deadline)).route

    async def _forward(
        self, request: web.Request, kind: str, route: Route, cookie: str | None
    ) -> web.StreamResponse:
        assert self.session is not None and route.upstream is not None
        target = route.upstream + auth.strip_token(request.rel_url)
        drop = proxy.WS_DROP if kind == "websocket" else proxy.REQUEST_DROP
        headers = proxy.upstream_headers(request, self.scheme, drop, self.fast is not None)
        if self.gate is not None and "Cookie" in headers:
            rest = auth.strip_cookie(headers.pop("Cookie"))
            if rest:
                headers["Cookie"] = rest
        # The cookie a link's first use earns rides on the answer: a page's, or a handshake's
        # (a client that opened the socket first reconnects by it).
        extra = {"Set-Cookie": cookie} if cookie else None
        try:
            if kind == "websocket":
                # Messages count as activity too (a marked set: free), so a preview that is
                # in use over its socket alone (hot reload's pings, an app's live data) stays
                # awake, while a forgotten idle socket does not.
                touch = partial(self.activity.touch, route.project_id)
                return await proxy.forward_websocket(
                    request, self.session, target, headers, touch, extra
                )
            return await proxy.forward_http(request, self.session, target, headers, extra)
        except proxy.UpstreamUnreachable:
            raise
        except aiohttp.WSServerHandshakeError as exc:
            self.metrics.upstream_error("websocket_handshake")
            return _plain(502 if exc.status < 400 else exc.status, "the dev server refused")
        except (TimeoutError, aiohttp.ServerTimeoutError):
            self.metrics.upstream_error("timeout")
            return _plain(504, "the dev server did not answer in time")
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            self.metrics.upstream_error("broken")
            log.info("[project_id=%s] upstream failed: %s", route.project_id, type(exc).__name__)
            return _plain(502, "the dev server closed the connection")

    async def _own(self, request: web.Request) -> web.StreamResponse:
        """The gateway's own host (not a preview's): metrics and health."""
        if request.path == "/metrics":
            body, content_type = self.metrics.render()
            return web.Response(body=body, headers={"Content-Type": content_type})
        if request.path == "/healthz":
            return web.json_response({"status": "ok"})
        return _plain(404, f"not a preview host: expected <preview id>.{self.domain}")


def _gone(route: Route | None) -> web.Response:
    """Unknown or destroyed: answered, never re-created by a request (contract §7a)."""
    if route is None:
        return _plain(404, "no such preview")
    return _plain(410, "this workspace was destroyed")


def _plain(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers={"Cache-Control": "no-store"})


def _unavailable(request: web.Request, message: str, after: int) -> web.Response:
    headers = {"Retry-After": str(after), "Cache-Control": "no-store"}
    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        page = _RELOAD_PAGE.format(after=after, message=message)
        return web.Response(status=503, text=page, content_type="text/html", headers=headers)
    return web.Response(status=503, text=message + "\n", headers=headers)
