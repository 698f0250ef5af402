"""``WORKSPACE_PREVIEW_AUTH=token``: refused without a token, admitted once by the minted URL,
then by the cookie it sets; minted by the API route and both Python clients."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx
import pytest

from qai_jobs.client import HttpWorkspaceClient, WorkspaceClient
from qai_jobs.errors import NotFound
from tests.conftest import settings_for
from tests.integration.api_helpers import TOKEN, Api, api_env, start_api
from tests.integration.gateway_support import (
    ECHO,
    HELLO,
    WAIT,
    Gateway,
    destroy_quietly,
    files_of,
    free_gateway_port,
    gateway_env,
    running_gateway,
)
from tests.support.procs import Proc, start_worker


@pytest.fixture(scope="module")
def port() -> int:
    return free_gateway_port()


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str], port: int) -> dict[str, str]:
    return gateway_env(api_env(isolated_env), port, WORKSPACE_PREVIEW_AUTH="token")


@pytest.fixture(scope="module")
def worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir, concurrency=1, name="gateway-token-worker")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(env: dict[str, str], log_dir: Path, port: int, worker: Proc) -> Iterator[Gateway]:
    yield from running_gateway(env, log_dir, port)


@pytest.fixture(scope="module")
def api(env: dict[str, str], log_dir: Path) -> Iterator[Api]:
    started = start_api(env, log_dir)
    yield started
    started.proc.stop()


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> WorkspaceClient:
    return WorkspaceClient(settings_for(env))


@pytest.fixture(scope="module")
def preview(client: WorkspaceClient, gateway: Gateway) -> Iterator[tuple[str, str]]:
    project = f"tok-{uuid.uuid4().hex[:8]}"
    url = client.ensure(project, files=files_of(HELLO)).wait(WAIT)["preview_url"]
    yield project, url
    destroy_quietly(client, project)


def _split(minted: str) -> tuple[str, str]:
    parts = urlsplit(minted)
    return f"{parts.scheme}://{parts.netloc}/", "/?" + parts.query


def test_without_a_token_the_preview_is_refused(gateway: Gateway, preview: tuple[str, str]) -> None:
    _, url = preview
    assert gateway.get(url).status_code == 401
    assert gateway.get(url, "/?qai_token=qpt1.nonsense.1.x").status_code == 401
    forged = {"Cookie": "qai_preview=qpc1." + "0" * 32 + ".9999999999.AAAA"}
    assert gateway.get(url, headers=forged).status_code == 401


def test_the_minted_url_is_accepted_once_then_the_cookie(
    gateway: Gateway, client: WorkspaceClient, preview: tuple[str, str]
) -> None:
    project, url = preview
    minted = client.preview_token(project, ttl_s=120)
    assert minted["url"].startswith(url) and minted["token"] in minted["url"]
    assert parse_qs(urlsplit(minted["url"]).query)["qai_token"] == [minted["token"]]
    assert datetime.fromisoformat(minted["expires_at"]) > datetime.now().astimezone()
    base, path = _split(minted["url"])
    first = gateway.get(base, path + "&x=1", follow_redirects=False)
    assert first.status_code == 302
    assert first.headers["location"] == "/?x=1"  # the token leaves the URL
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Domain" not in cookie
    assert minted["token"] not in cookie  # the cookie holds a token of its own kind
    value = cookie.split(";")[0]
    page = gateway.get(url, "/?x=1", headers={"Cookie": f"other=1; {value}"})
    assert page.status_code == 200 and "Hello from qai-jobs" in page.text
    # The link is spent: a second use is refused, and the cookie is no link token.
    assert gateway.get(base, path).status_code == 401
    cookie_value = value.split("=", 1)[1]
    assert gateway.get(url, f"/?qai_token={cookie_value}").status_code == 401
    # The same browser reloading the minted URL (an iframe keeps its src) gets in by the cookie.
    assert gateway.get(base, path, headers={"Cookie": value}).status_code == 200
    # An unknown preview is unknown whatever the cookie says (contract §7a: 404).
    other = "http://" + "f" * 32 + f".preview.localhost:{gateway.port}/"
    assert gateway.get(other, headers={"Cookie": value}).status_code == 404
    assert minted["token"] not in gateway.proc.log()
    assert cookie_value not in gateway.proc.log()


def test_a_browser_following_the_redirect_keeps_its_cookie(
    gateway: Gateway, client: WorkspaceClient, preview: tuple[str, str]
) -> None:
    project, _ = preview
    base, path = _split(client.preview_token(project)["url"])
    target, headers = gateway.target(base, path)
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        page = browser.get(target, headers=headers)
        assert page.status_code == 200 and "Hello from qai-jobs" in page.text
        again = browser.get(gateway.base + "/", headers=headers)
        assert again.status_code == 200


def test_a_websocket_opened_with_the_minted_url_is_admitted(
    gateway: Gateway, client: WorkspaceClient
) -> None:
    """A handshake cannot follow the redirect a page load gets: the link admits it at once."""
    project = f"tokws-{uuid.uuid4().hex[:8]}"
    try:
        handle = client.ensure(
            project, files=files_of(ECHO), dev_command="node server.js --port {port}"
        )
        handle.wait(WAIT)
        base, query = _split(client.preview_token(project, ttl_s=120)["url"])
        target, headers = gateway.target(base, "/socket" + query[1:])

        async def talk() -> tuple[str, str]:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(target, headers=headers, protocols=["echo.v1"]) as ws,
            ):
                await ws.send_str("hello with a token")
                echoed = str((await ws.receive(timeout=10)).data)
                # The handshake earned the cookie: a reconnect by the same URL gets in by it.
                cookie = ws._response.headers.get("Set-Cookie", "").split(";")[0]
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(target, headers={**headers, "Cookie": cookie}) as ws,
            ):
                await ws.send_str("again")
                return echoed, str((await ws.receive(timeout=10)).data)

        assert asyncio.run(talk()) == ("hello with a token", "again")
        refused = gateway.get(base, "/socket")  # and without one, still refused
        assert refused.status_code == 401
    finally:
        destroy_quietly(client, project)


def test_the_api_and_http_client_mint_tokens(
    api: Api, gateway: Gateway, preview: tuple[str, str]
) -> None:
    project, url = preview
    with api.http() as http:
        minted = http.post(f"/v1/projects/{project}/preview-token", json={"ttl_s": 60})
        assert minted.status_code == 200, minted.text
        assert set(minted.json()) == {"url", "token", "expires_at"}
        assert minted.json()["url"].startswith(url)
        default = http.post(f"/v1/projects/{project}/preview-token")
        assert default.status_code == 200
        bad = http.post(f"/v1/projects/{project}/preview-token", json={"ttl_s": 0})
        assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "ttl_s"
        unknown = http.post("/v1/projects/nobody-here/preview-token")
        assert unknown.status_code == 404
    assert httpx.post(api.url + f"/v1/projects/{project}/preview-token").status_code == 401
    with HttpWorkspaceClient(api.url, TOKEN) as remote:
        minted_remotely = remote.preview_token(project, ttl_s=30)
        with pytest.raises(NotFound):
            remote.preview_token("nobody-here")
    base, path = _split(minted_remotely["url"])
    assert gateway.get(base, path, follow_redirects=False).status_code == 302
