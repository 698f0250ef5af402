"""Preview tokens: short-lived HMAC-signed grants to one workspace's gateway URL.

Two kinds share one format, ``<kind>.<preview id>.<expiry>.<signature>``: a *link* token
(``qpt1``), minted by the API for a URL's ``qai_token`` query and accepted there once, and the
*cookie* token (``qpc1``) the gateway sets in exchange, valid until the same expiry. A link
token is useless in a cookie and a cookie token useless in a link, so a leaked URL cannot be
replayed once its token was used. Keys derive from the deployment's shared secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from qai_jobs.config import Settings
from qai_jobs.db import previews
from qai_jobs.errors import Conflict, NotFound, ValidationFailed
from qai_jobs.gateway.urls import PREVIEW_ID, gateway_url
from qai_jobs.sealing import derived_key

LINK = "qpt1"
COOKIE = "qpc1"
QUERY_PARAM = "qai_token"
COOKIE_NAME = "qai_preview"
MAX_TTL_S = 24 * 3600
DEFAULT_TTL_S = 3600


def _sign(key: bytes, kind: str, preview_id: str, expires: int) -> str:
    mac = hmac.new(key, f"{kind}.{preview_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def signing_key(settings: Settings) -> bytes:
    return derived_key(settings, "preview token")


def mint(key: bytes, kind: str, preview_id: str, expires: int) -> str:
    return f"{kind}.{preview_id}.{expires}.{_sign(key, kind, preview_id, expires)}"


def verify(
    key: bytes, kind: str, token: str, preview_id: str, now: float | None = None
) -> int | None:
    """The token's expiry (epoch seconds) if it is a valid, unexpired ``kind`` token for
    ``preview_id``; None otherwise (never why: a prober learns nothing)."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != kind or parts[1] != preview_id or not parts[2].isdigit():
        return None
    expires = int(parts[2])
    if expires <= (time.time() if now is None else now):
        return None
    if not hmac.compare_digest(parts[3], _sign(key, kind, preview_id, expires)):
        return None
    return expires


def check_ttl(ttl_s: Any) -> float:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 1 <= ttl_s <= MAX_TTL_S:
        raise ValidationFailed(f"ttl_s: seconds from 1 to {MAX_TTL_S}", field="ttl_s")
    return float(ttl_s)


def mint_for_project(
    settings: Settings, conn: Connection, project_id: str, ttl_s: float = DEFAULT_TTL_S
) -> dict[str, Any]:
    """``{"url", "token", "expires_at"}``: the project's gateway URL with a link token."""
    ttl_s = check_ttl(ttl_s)
    if not settings.workspace_preview_domain:
        raise Conflict("no preview gateway is configured (set WORKSPACE_PREVIEW_DOMAIN)")
    row = conn.execute(
        previews.PREVIEW_OF,
        {"p": project_id},
    ).first()
    if row is None:
        raise NotFound(f"no workspace for project {project_id}")
    if row.status == "destroyed":
        raise Conflict(f"the workspace of project {project_id} is destroyed")
    assert PREVIEW_ID.match(row.preview_id)
    expires = int(time.time() + ttl_s)
    token = mint(signing_key(settings), LINK, row.preview_id, expires)
    base = gateway_url(settings, row.preview_id)
    return {
        "url": f"{base}?{QUERY_PARAM}={token}",
        "token": token,
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
    }
