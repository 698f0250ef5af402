"""Running the gateway: an aiohttp server on uvloop, with an access log that holds no token."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from qai_jobs.config import Settings

log = logging.getLogger("qai_jobs.gateway.access")


class AccessLogger(AbstractAccessLogger):
    """``host method path status seconds``: the query is left out (it may hold ``qai_token``,
    and apps put secrets there too), and no header is logged (cookies, authorization)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %d %.4f",
            request.remote,
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


def serve(settings: Settings, host: str, port: int, access_log: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the gateway runs on plain asyncio, only slower
        pass
    from qai_jobs.gateway.app import Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    gateway = Gateway(settings)
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
        "gateway for *.%s on http://%s:%d (auth: %s)",
        settings.workspace_preview_domain,
        host,
        port,
        settings.workspace_preview_auth,
    )
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=log,
        access_log_class=AccessLogger,
        print=None,
        keepalive_timeout=75,
        shutdown_timeout=5,
    )
