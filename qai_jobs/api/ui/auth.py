"""Who may use the operator's page, and proof that a form was sent by it.

A browser cannot attach a bearer token to a link, so the page trades the API's token for a
session cookie once, at a login form: signed and timestamped (itsdangerous), HttpOnly (no
script reads it), SameSite=Strict and scoped to ``/ui`` (never sent to the JSON API, which
keeps accepting only the bearer token). The cookie holds no secret, only a random nonce; its
signing key derives from the token, so a new token ends every session.

Every form POST carries a CSRF token bound to the session's nonce, and a browser's
``Origin``/``Sec-Fetch-Site`` must say same-origin. Requests with a valid bearer header need
neither: no browser adds that header to a cross-site request.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send

from qai_jobs.api.errors import error_response
from qai_jobs.config import Settings
from qai_jobs.sealing import derived_key

PREFIX = "/ui"
COOKIE = "qai_ui"
SESSION_SECONDS = 12 * 3600
LOGIN_PATH = "/ui/login"
# Reachable before login: the form itself and the files it needs.
_OPEN = frozenset({LOGIN_PATH})
_OPEN_PREFIX = "/ui/static/"


@dataclass(frozen=True)
class Session:
    nonce: str
    authenticated: bool


class UiAuth:
    """The ``/ui`` part of the API's gate (``GateMiddleware``), and the page's CSRF checks."""

    def __init__(self, settings: Settings):
        token = settings.workspace_token
        self.token = token.get_secret_value().encode() if token is not None else None
        if self.token is not None:
            key = hashlib.sha256(b"qai-jobs:ui-session\0" + self.token).digest()
        else:
            # No token: the page is as open as the API (loopback only), but its forms still
            # need a key that every server process of the deployment shares.
            key = derived_key(settings, "ui-session")
        self.key = key
        self.signer = URLSafeTimedSerializer(key, salt="qai-jobs-ui")

    # -- the gate's hook ---------------------------------------------------------------------
    @staticmethod
    def covers(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    def admits(self, path: str, headers: dict[str, bytes]) -> bool:
        if path in _OPEN or path.startswith(_OPEN_PREFIX):
            return True
        session = self.read(headers.get("cookie", b"").decode("latin-1"))
        return session is not None and session.authenticated

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """401, as for every route without the token (contract §7); a browser asking for a
        page is sent on to the login form by the page it gets, htmx by a header."""
        if scope["method"] in ("GET", "HEAD") and not _is_htmx(scope):
            target = html.escape(LOGIN_PATH + "?next=" + quote(scope["path"], safe="/"))
            body = (
                f'<!doctype html><meta http-equiv="refresh" content="0; url={target}">'
                f'<title>Log in</title><a href="{target}">Log in</a>'
            )
            headers = {"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"}
            await HTMLResponse(body, 401, headers)(scope, receive, send)
            return
        response = error_response(
            401, "unauthorized", "log in at /ui/login", headers={"HX-Redirect": LOGIN_PATH}
        )
        await response(scope, receive, send)

    # -- sessions ----------------------------------------------------------------------------
    def read(self, cookie_header: str) -> Session | None:
        value = cookie_parser(cookie_header).get(COOKIE)
        if not value:
            return None
        try:
            data: Any = self.signer.loads(value, max_age=SESSION_SECONDS)
        except BadSignature:  # also an expired one (SignatureExpired is a BadSignature)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        return Session(data["n"], bool(data.get("a")))

    def session_of(self, request: Request) -> Session | None:
        return self.read(request.headers.get("cookie", ""))

    @staticmethod
    def new_session(authenticated: bool) -> Session:
        """A fresh nonce: logging in never keeps the nonce from before (no fixation)."""
        return Session(secrets.token_urlsafe(18), authenticated)

    def set_cookie(self, response: Response, request: Request, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            self.signer.dumps({"n": session.nonce, "a": int(session.authenticated)}),
            max_age=SESSION_SECONDS,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def end(response: Response) -> None:
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")

    def token_matches(self, presented: str) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(presented.strip().encode(), self.token)

    def bearer_ok(self, request: Request) -> bool:
        if self.token is None:
            return False
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        same = hmac.compare_digest(presented.strip().encode(), self.token)
        return same and scheme.lower() == "bearer"

    # -- CSRF --------------------------------------------------------------------------------
    def csrf_token(self, session: Session) -> str:
        return hmac.new(self.key, b"csrf\0" + session.nonce.encode(), "sha256").hexdigest()

    def csrf_refusal(self, request: Request, form_token: object) -> Response | None:
        """A 403 for a POST that this page did not send; None when it did."""
        if self.bearer_ok(request):
            return None
        problem = None
        origin = request.headers.get("origin")
        session = self.session_of(request)
        expected = self.csrf_token(session) if session is not None else ""
        if request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            problem = "cross-site request refused"
        elif origin is not None and not _same_origin(origin, request):
            problem = "the request's Origin is not this site"
        elif not (
            isinstance(form_token, str)
            and expected
            and hmac.compare_digest(form_token.encode(), expected.encode())
        ):
            problem = "missing or stale form token; reload the page"
        if problem is None:
            return None
        return error_response(403, "csrf_failed", f"csrf: {problem}", {"field": "csrf"})


def _same_origin(origin: str, request: Request) -> bool:
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme == request.url.scheme and parts.netloc == host


def _is_htmx(scope: Scope) -> bool:
    return any(k == b"hx-request" for k, _ in scope["headers"])


def safe_next(value: str | None) -> str:
    """Where to go after login: a page of this UI only (never another site)."""
    if value and UiAuth.covers(value) and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX
