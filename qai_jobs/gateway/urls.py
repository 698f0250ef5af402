"""Preview ids and the public preview URL built from them.

A preview id is 32 random lowercase hex digits: a DNS label whatever the project id looks like
(project ids may hold ``_``, ``.`` and capitals), and not derivable from it. It lives on the
workspace row from the row's creation, and a destroyed workspace that comes back gets a new one,
so a URL handed out for the old workspace never reaches the new one.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from qai_jobs.events import Event

if TYPE_CHECKING:
    from qai_jobs.config import Settings

PREVIEW_ID = re.compile(r"^[0-9a-f]{32}$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def new_preview_id() -> str:
    return secrets.token_hex(16)


def check_domain(value: str) -> str:
    """``preview.example.com`` or ``preview.localhost:8080``, lower-cased; ValueError otherwise."""
    domain = value.strip().lower().rstrip(".")
    host, _, port = domain.partition(":")
    labels = host.split(".")
    if not host or not all(_LABEL.match(label) for label in labels):
        raise ValueError("must be a host name such as preview.example.com (optionally :port)")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("the port after ':' must be a number from 1 to 65535")
    if len(host) + 33 > 253:
        raise ValueError("too long to put a preview id in front of it")
    return domain


def domain_port(settings: Settings) -> int | None:
    """The port named in WORKSPACE_PREVIEW_DOMAIN, if any."""
    domain = settings.workspace_preview_domain or ""
    _, _, port = domain.partition(":")
    return int(port) if port else None


def gateway_url(settings: Settings, preview_id: str) -> str | None:
    """``<scheme>://<preview id>.<domain>/``, or None when no gateway is configured."""
    domain = settings.workspace_preview_domain
    if not domain:
        return None
    return f"{settings.workspace_preview_scheme}://{preview_id}.{domain}/"


def preview_id_of(host: str, domain: str) -> str | None:
    """The preview id a Host header names under ``domain`` (both lower-cased), else None.

    The port is compared only when the domain names one: behind a TLS terminator or a port
    mapping the Host the gateway sees may carry another port, or none.
    """
    host = host.strip().lower()
    want_host, _, want_port = domain.partition(":")
    name, _, port = host.partition(":")
    if want_port and port and port != want_port:
        return None
    prefix, dot, rest = name.partition(".")
    if not dot or rest.rstrip(".") != want_host or not PREVIEW_ID.match(prefix):
        return None
    return prefix


def public_preview(settings: Settings, preview_id: str | None, upstream: str | None) -> str | None:
    """What a producer sees as ``preview_url``: the gateway's when it is configured (and the
    workspace has a preview at all), else the provider's own."""
    if upstream is None or preview_id is None:
        return upstream
    return gateway_url(settings, preview_id) or upstream


def publish_result(
    settings: Settings,
    preview_id: str | None,
    result: dict[str, Any],
    events: list[Event],
) -> dict[str, Any]:
    """Swap the provider's URL for the gateway's in an action's result and webhook events: the
    provider's URL may change with every sandbox (and bypasses the gateway's auth)."""
    if not settings.workspace_preview_domain or preview_id is None:
        return result
    for i, event in enumerate(events):
        if event.data.get("preview_url"):
            data = {**event.data, "preview_url": gateway_url(settings, preview_id)}
            events[i] = Event(event.type, data)
    if result.get("preview_url"):
        result = {**result, "preview_url": gateway_url(settings, preview_id)}
    return result
