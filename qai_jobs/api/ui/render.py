"""How the operator page turns rows into HTML: one autoescaping Jinja2 environment, the
filters its templates use, and the headers every page carries.

Autoescaping is on for every template, whatever its name: the values are what sandboxes and
producers wrote. The filters add what escaping cannot: a link only to http(s) (a sandbox may
have set its preview URL to ``javascript:``), and webhook targets without their credentials.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from jinja2 import Environment, FileSystemLoader

HERE = Path(__file__).parent
STATIC = "/ui/static"
HEADERS = {
    # Nothing but this site's own script and style, ever: a value that slipped past escaping
    # still could not run.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
NONE = "\u2013"  # what an empty cell shows


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else NONE


def _ago(value: datetime | None) -> str:
    if value is None:
        return NONE
    seconds = int((datetime.now(UTC) - value).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def _took(started: datetime | None, finished: datetime | None) -> str:
    if started is None or finished is None:
        return NONE
    ms = (finished - started).total_seconds() * 1000
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _http_url(value: str | None) -> str | None:
    """A link only to http(s): a sandbox could have made its preview URL ``javascript:``."""
    if not value:
        return None
    try:
        scheme = urlsplit(value).scheme.lower()
    except ValueError:
        return None
    return value if scheme in ("http", "https") else None


def _redact_url(value: str) -> str:
    """A webhook target without the credentials it may carry in its userinfo or query."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "(unparseable URL)"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


def _query(params: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in params.items() if v is not None})


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=True, auto_reload=False
)
templates.filters.update(
    when=_when, ago=_ago, took=_took, http_url=_http_url, redact_url=_redact_url, query=_query
)


def render_fragment(name: str, **context: Any) -> str:
    return templates.get_template(name).render(static=STATIC, **context)
