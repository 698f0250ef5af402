"""Running the gateway: HAProxy on the public port in front of an aiohttp server on uvloop
(or the aiohttp server alone), with an access log that holds no token."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from qai_jobs.config import Settings
from qai_jobs.gateway import haproxy

log = logging.getLogger("qai_jobs.gateway.access")


class AccessLogger(AbstractAccessLogger):
    """``host method path status seconds``: the query is left out (it may hold ``qai_token``,
    and apps put secrets there too), and no header is logged (cookies, authorization)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        # Behind the gateway's HAProxy (a Unix socket: no peer address) the client is the last
        # X-Forwarded-For entry, which HAProxy added.
        remote = request.remote or request.headers.get("X-Forwarded-For", "").rsplit(",")[-1]
        self.logger.info(
            "%s %s %s %s %d %.4f",
            remote.strip(),
            request.host,
            request.method,
            request.path + ("?…" if request.query_string else ""),
            response.status,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class _BatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Access lines go out in batches: a write per request cost as much as proxying it. The
    buffer is flushed every ``FLUSH_SECONDS`` (and when it fills, and at exit)."""

    def __init__(self) -> None:
        raw = open(sys.stderr.fileno(), "wb", buffering=1 << 16, closefd=False)  # noqa: SIM115
        super().__init__(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))

    def flush(self) -> None:  # called after every record: not now
        pass

    def flush_now(self) -> None:
        with self.lock or contextlib.nullcontext():
            self.stream.flush()


FLUSH_SECONDS = 0.5


async def _flush_every(handler: _BatchedHandler) -> None:
    try:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            handler.flush_now()
    finally:
        handler.flush_now()


def _data_plane(settings: Settings) -> str | None:
    """The haproxy binary to serve the public port with, or None: aiohttp serves it alone."""
    mode = settings.workspace_gateway_data_plane
    if mode == "aiohttp":
        return None
    if settings.workspace_preview_auth == "token":
        # Every request needs its cookie checked, which only the Python side does.
        if mode == "haproxy":
            logging.getLogger("qai_jobs.gateway").warning(
                "token mode: previews are served by the Python side alone, not HAProxy"
            )
        return None
    exe = haproxy.binary()
    if exe is None and mode == "haproxy":
        raise RuntimeError("WORKSPACE_GATEWAY_DATA_PLANE=haproxy, but haproxy is not installed")
    if exe is None:
        logging.getLogger("qai_jobs.gateway").warning(
            "haproxy is not installed: the gateway proxies every request itself (slower)"
        )
    return exe


async def _watch(proc: subprocess.Popen[bytes]) -> None:
    """HAProxy gone: so is the gateway (its supervisor restarts both)."""
    while proc.poll() is None:
        await asyncio.sleep(0.5)
    logging.getLogger("qai_jobs.gateway").error("HAProxy exited (%s): stopping", proc.returncode)
    os.kill(os.getpid(), signal.SIGTERM)


def serve(settings: Settings, host: str, port: int, access_log: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the gateway runs on plain asyncio, only slower
        pass
    from qai_jobs.gateway.app import Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    exe = _data_plane(settings)
    run_dir = Path(tempfile.mkdtemp(prefix="qai-gateway-")) if exe else None  # mode 0700
    gateway = Gateway(settings, run_dir)
    log.setLevel(logging.INFO if access_log else logging.WARNING)
    log.propagate = False
    handler = _BatchedHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    log.addHandler(handler)
    app = gateway.application()

    async def flusher(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(_flush_every(handler))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(flusher)
    logging.getLogger("qai_jobs.gateway").info(
        "gateway for *.%s on http://%s:%d (auth: %s, data plane: %s)",
        settings.workspace_preview_domain,
        host,
        port,
        settings.workspace_preview_auth,
        "haproxy" if exe else "aiohttp",
    )
    options: dict[str, Any] = {
        "access_log": log,
        "access_log_class": AccessLogger,
        "print": None,
        "keepalive_timeout": 75,
        "shutdown_timeout": 5,
    }
    if exe is None or run_dir is None:
        web.run_app(app, host=host, port=port, **options)
        return
    proc = haproxy.start(exe, run_dir, host, port, settings.workspace_preview_scheme, access_log)

    async def watcher(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(_watch(proc))
        yield
        task.cancel()

    app.cleanup_ctx.append(watcher)
    try:
        sockets = [str(run_dir / haproxy.APP_SOCKET), str(run_dir / haproxy.RETRY_SOCKET)]
        web.run_app(app, path=sockets, **options)
    finally:
        haproxy.stop(proc)
        shutil.rmtree(run_dir, ignore_errors=True)
