"""``WORKSPACE_PREVIEW_AUTH=token``: who may see a preview.

A request is admitted with a valid cookie token for its preview id, or once with a valid link
token in ``qai_token`` (its use is recorded in Redis until it expires, so every gateway process
refuses a second use that does not bring the cookie the first one set). The link is answered
with a redirect to the same URL without the token (a WebSocket handshake, which cannot follow
one, is admitted as it is) and a cookie for exactly that host (no Domain attribute): HttpOnly,
and SameSite=Lax over http; over https SameSite=None; Secure; Partitioned, so it also works
inside another site's iframe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from qai_jobs.gateway import tokens


@dataclass(frozen=True)
class Admission:
    allowed: bool
    redirect: str | None = None  # answer with this Location (and the cookie) instead
    cookie: str | None = None  # a Set-Cookie value to add to the response


class TokenGate:
    def __init__(self, key: bytes, redis: Any, secure: bool):
        self.key = key
        self.redis = redis  # redis.asyncio client, shared by every gateway process
        self.secure = secure

    async def admit(
        self, request: web.Request, preview_id: str, *, websocket: bool = False
    ) -> Admission:
        link = request.query.get(tokens.QUERY_PARAM)
        if link is not None:
            expires = tokens.verify(self.key, tokens.LINK, link, preview_id)
            if expires is not None and await self._first_use(link, expires):
                cookie = self._cookie(preview_id, expires)
                # A WebSocket handshake cannot follow a redirect: it is admitted as it is.
                if request.method in ("GET", "HEAD") and not websocket:
                    redirect = _without_token(request.rel_url)
                    return Admission(True, redirect=redirect, cookie=cookie)
                return Admission(True, cookie=cookie)
            # A spent link with this preview's cookie beside it: the same browser reloading
            # the page it was given (an iframe's src keeps the link), admitted by the cookie.
        presented = request.cookies.get(tokens.COOKIE_NAME)
        if presented and tokens.verify(self.key, tokens.COOKIE, presented, preview_id):
            return Admission(True)
        return Admission(False)

    async def _first_use(self, link: str, expires: int) -> bool:
        signature = link.rsplit(".", 1)[-1]
        first = await self.redis.set(f"qai:gateway:link-used:{signature}", 1, nx=True, exat=expires)
        return bool(first)

    def _cookie(self, preview_id: str, expires: int) -> str:
        value = tokens.mint(self.key, tokens.COOKIE, preview_id, expires)
        max_age = max(0, expires - int(time.time()))
        attrs = f"{tokens.COOKIE_NAME}={value}; Path=/; Max-Age={max_age}; HttpOnly"
        if self.secure:
            return attrs + "; Secure; SameSite=None; Partitioned"
        return attrs + "; SameSite=Lax"


def _without_token(url: URL) -> str:
    """The request's path and query without ``qai_token``: a relative redirect target, so it
    stays on whatever host and port the client used."""
    # On the raw query, so the rest reaches the app exactly as the browser encoded it.
    kept = [
        part
        for part in url.raw_query_string.split("&")
        if part and part.split("=", 1)[0] != tokens.QUERY_PARAM
    ]
    return url.raw_path + ("?" + "&".join(kept) if kept else "")


def strip_token(url: URL) -> str:
    """The path and query to send upstream: never the token."""
    if tokens.QUERY_PARAM not in url.query:
        return url.raw_path_qs
    return _without_token(url)


def strip_cookie(header: str) -> str:
    """The Cookie header without the gateway's own cookie (the dev server never sees it)."""
    kept = [
        part
        for part in header.split(";")
        if part.strip() and part.strip().split("=", 1)[0] != tokens.COOKIE_NAME
    ]
    return ";".join(kept).strip()
