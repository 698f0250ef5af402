"""The gateway's pure parts: preview ids and hosts, URLs in results, tokens, query/cookie hygiene."""

from __future__ import annotations

import time

import pytest
from yarl import URL

from qai_jobs.config import load_settings
from qai_jobs.errors import ConfigurationError, ValidationFailed
from qai_jobs.events import Event, EventType
from qai_jobs.gateway import tokens
from qai_jobs.gateway.auth import strip_cookie, strip_token
from qai_jobs.gateway.urls import (
    check_domain,
    new_preview_id,
    preview_id_of,
    public_preview,
    publish_result,
)

PID = "0123456789abcdef0123456789abcdef"


def settings(**kw: str):  # type: ignore[no-untyped-def]
    return load_settings(_env_file=None, **kw)


def test_preview_ids_are_random_dns_labels() -> None:
    ids = {new_preview_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and i == i.lower() and i.isalnum() for i in ids)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Preview.Example.COM", "preview.example.com"), ("preview.localhost:8080", None)],
)
def test_domains_are_normalised(value: str, expected: str | None) -> None:
    assert check_domain(value) == (expected or value)


@pytest.mark.parametrize("value", ["exa_mple.com", "-bad.com", "a..b", "host:0", "host:http"])
def test_bad_domains_fail_at_start_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match="WORKSPACE_PREVIEW_DOMAIN"):
        settings(workspace_preview_domain=value)
    with pytest.raises(ConfigurationError, match="WORKSPACE_PREVIEW_AUTH"):
        settings(workspace_preview_auth="open")


def test_hosts_map_to_preview_ids_only_under_the_domain() -> None:
    domain = "preview.localhost:8080"
    assert preview_id_of(f"{PID}.preview.localhost:8080", domain) == PID
    assert preview_id_of(f"{PID.upper()}.Preview.Localhost:8080", domain) == PID
    assert preview_id_of(f"{PID}.preview.localhost", domain) == PID  # behind a port mapping
    assert preview_id_of(f"{PID}.preview.localhost:9090", domain) is None
    assert preview_id_of("preview.localhost:8080", domain) is None
    assert preview_id_of(f"x.{PID}.preview.localhost:8080", domain) is None
    assert preview_id_of(f"{PID}.evil.example:8080", domain) is None
    assert preview_id_of("abc.preview.localhost:8080", domain) is None  # not an id


def test_results_and_events_carry_the_gateway_url_when_configured() -> None:
    on = settings(workspace_preview_domain="p.example.com", workspace_preview_scheme="https")
    off = settings()
    events = [Event(EventType.READY, {"preview_url": "http://127.0.0.1:41000", "x": 1})]
    result = publish_result(on, PID, {"preview_url": "http://127.0.0.1:41000"}, events)
    assert result["preview_url"] == f"https://{PID}.p.example.com/"
    assert events[0].data == {"preview_url": f"https://{PID}.p.example.com/", "x": 1}
    assert publish_result(off, PID, {"preview_url": "u"}, []) == {"preview_url": "u"}
    assert publish_result(on, PID, {"preview_url": None}, []) == {"preview_url": None}
    assert public_preview(on, PID, None) is None  # no preview at all: none to show
    assert public_preview(off, PID, "http://127.0.0.1:1") == "http://127.0.0.1:1"


def test_tokens_are_bound_to_kind_preview_and_expiry() -> None:
    key, other_key = b"k" * 32, b"o" * 32
    expires = int(time.time()) + 60
    link = tokens.mint(key, tokens.LINK, PID, expires)
    assert tokens.verify(key, tokens.LINK, link, PID) == expires
    assert tokens.verify(key, tokens.COOKIE, link, PID) is None
    assert tokens.verify(key, tokens.LINK, link, "f" * 32) is None
    assert tokens.verify(other_key, tokens.LINK, link, PID) is None
    assert tokens.verify(key, tokens.LINK, link, PID, now=expires + 1) is None
    forged = link.rsplit(".", 2)[0] + f".{expires + 3600}." + link.rsplit(".", 1)[1]
    assert tokens.verify(key, tokens.LINK, forged, PID) is None
    for junk in ("", "qpt1", "qpt1.a.b.c.d", f"qpt1.{PID}.soon.sig"):
        assert tokens.verify(key, tokens.LINK, junk, PID) is None


@pytest.mark.parametrize("ttl", [0, -1, 86401, "60", True, None])
def test_token_lifetimes_are_validated(ttl: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        tokens.check_ttl(ttl)
    assert info.value.field == "ttl_s"


def test_the_token_never_travels_upstream() -> None:
    assert strip_token(URL("/a/b?qai_token=T&x=1&y=%20")) == "/a/b?x=1&y=%20"
    assert strip_token(URL("/a?qai_token=T")) == "/a"
    assert strip_token(URL("/a?x=1")) == "/a?x=1"
    assert strip_cookie("a=1; qai_preview=secret; b=2") == "a=1; b=2"
    assert strip_cookie("qai_preview=secret") == ""
