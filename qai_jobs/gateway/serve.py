"""Running the gateway: an aiohttp server on uvloop, with an access log that holds no token."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from ..config import Settings

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


def serve(settings: Settings, host: str, port: int, access_log: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the gateway runs on plain asyncio, only slower
        pass
    from .app import Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    gateway = Gateway(settings)
    log.setLevel(logging.INFO if access_log else logging.WARNING)
    logging.getLogger("qai_jobs.gateway").info(
        "gateway for *.%s on http://%s:%d (auth: %s)",
        settings.workspace_preview_domain,
        host,
        port,
        settings.workspace_preview_auth,
    )
    web.run_app(
        gateway.application(),
        host=host,
        port=port,
        access_log=log,
        access_log_class=AccessLogger,
        print=None,
        keepalive_timeout=75,
        shutdown_timeout=5,
    )
