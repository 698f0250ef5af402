"""The operator's page in a real headless Chromium (Debian's ``chromium``, driven by
playwright): log in, see the workspace this test made, open its timeline, watch a command's
output arrive live, replay a dead webhook; screenshots are decoded and checked. Plus what a
browser test cannot show cheaply: the session cookie's scope, CSRF refusals, escaping."""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from qai_jobs.client import WorkspaceClient
from tests.integration.api_helpers import TOKEN, Api, start_api
from tests.integration.ops_support import (
    Receiver,
    env_for,
    isolated_env,
    settings_for,
    wait_until,
)
from tests.support.procs import Proc, start_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>&amp;"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def ui_env(base_env: dict[str, str], receiver: Receiver) -> Iterator[dict[str, str]]:
    for env in isolated_env(base_env):
        yield {**env, "WORKSPACE_TOKEN": TOKEN, **env_for(receiver.url("/down"))}


@pytest.fixture(scope="module")
def ui_worker(ui_env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(ui_env, log_dir, concurrency=2, name="ui-worker")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ui_api(ui_env: dict[str, str], log_dir: Path, ui_worker: Proc) -> Iterator[Api]:
    started = start_api(ui_env, log_dir)
    yield started
    started.proc.stop()


@pytest.fixture(scope="module")
def producer(ui_env: dict[str, str]) -> WorkspaceClient:
    return WorkspaceClient(settings_for(ui_env))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make install` installs it")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile each test
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def check_screenshot(png: bytes, where: Path) -> None:
    """The PNG decodes, has the viewport's size and is not blank (many colours, dark text)."""
    where.write_bytes(png)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.size == (1280, 900)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "a blank or near-blank screenshot"
    darkest = min(sum(rgb) for _, rgb in colours)
    assert darkest < 200, "no text drawn"


def log_in(page: Page, api: Api, token: str = TOKEN) -> None:
    page.goto(api.url + "/ui")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui$"))
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_login_workspaces_timeline_and_live_output(
    ui_api: Api, producer: WorkspaceClient, browser: BrowserContext, log_dir: Path
) -> None:
    project = f"ui-{uuid.uuid4().hex[:8]}"
    producer.ensure(project, files={"server.js": "1"}).wait(timeout=30)
    ran = producer.command(project, f"echo {HOSTILE}")
    ran.wait(timeout=30)
    page = browser.new_page()
    page.on("dialog", lambda d: d.dismiss())

    log_in(page, ui_api, token="not-the-token")
    expect(page.locator("#login-error")).to_be_visible()
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(ui_api.url + "/ui")
    row = page.locator(f'#workspaces tr[data-project="{project}"]')
    expect(row).to_contain_text("ready")
    expect(row).to_contain_text("fake")
    expect(row.locator("a[target=_blank]")).to_have_attribute("href", re.compile(r"^https?://"))
    check_screenshot(page.screenshot(), log_dir / "ui-workspaces.png")

    row.locator(f'a[href="/ui/projects/{project}"]').click()
    expect(page.locator("#project-id")).to_have_text(project)
    actions = page.locator("#actions tbody tr")
    expect(actions).to_have_count(2)
    expect(actions.nth(0)).to_contain_text("command")
    expect(actions.nth(1)).to_contain_text("ensure")
    check_screenshot(page.screenshot(), log_dir / "ui-timeline.png")

    # What the sandbox printed is shown as text, never run.
    actions.nth(0).locator("a").click()
    expect(page.locator("#stdout")).to_contain_text("<script>window.pwned=2</script>&amp;")
    assert page.locator("#stdout img, #stdout script").count() == 0
    assert page.evaluate("window.pwned") is None

    # A command queued behind a slow one: its page opens before it starts, and its output
    # arrives through the events stream as it runs.
    producer.command(project, "sleep 1.5")
    live = producer.command(project, "echo live-from-the-browser")
    page.goto(f"{ui_api.url}/ui/actions/{live.id}")
    expect(page.locator("#live")).to_be_attached()
    expect(page.locator("#output")).to_contain_text("live-from-the-browser", timeout=20_000)
    expect(page.locator("#summary")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#stage")).to_have_text("finished")
    check_screenshot(page.screenshot(), log_dir / "ui-live.png")
    dom = page.content()
    assert "http-equiv" not in dom and "https://unpkg" not in dom and "cdn" not in dom.lower()


def test_dead_webhook_replay_button(
    ui_api: Api,
    producer: WorkspaceClient,
    receiver: Receiver,
    browser: BrowserContext,
    log_dir: Path,
) -> None:
    project = f"ui-wh-{uuid.uuid4().hex[:8]}"
    producer.ensure(project, files={"a.txt": "a"}, start_dev_server=False).wait(timeout=30)

    def dead_ids() -> list[str]:
        with producer.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT id FROM webhook_events WHERE project_id = :p AND status = 'dead'"
                    ),
                    {"p": project},
                ).scalars()
            )

    dead = wait_until(dead_ids, what="the ready webhook dead (its receiver answers 500)")
    page = browser.new_page()
    log_in(page, ui_api)
    page.goto(ui_api.url + "/ui/webhooks")
    row = page.locator(f"#wh-{dead[0]}")
    expect(row).to_contain_text("workspace.ready")
    expect(row).to_contain_text(project)
    check_screenshot(page.screenshot(), log_dir / "ui-webhooks.png")

    receiver.down_ok = True
    try:
        row.locator("button").click()
        expect(page.locator(f"#wh-{dead[0]}")).to_contain_text("replaying")

        def delivered() -> bool:
            return any(r["status"] == 204 for r in receiver.attempts(dead[0]))

        wait_until(delivered, what="the replayed webhook delivered with the same webhook-id")
    finally:
        receiver.down_ok = False
    page.reload()
    expect(page.locator(f"#wh-{dead[0]}")).to_have_count(0)


def _sent_to_login(page: httpx.Response) -> bool:
    """Refused as the API refuses (401), with a page that sends a browser to the form."""
    return (
        page.status_code == 401
        and 'http-equiv="refresh"' in page.text
        and ("/ui/login?next=/ui" in page.text)
    )


def _logged_in(api: Api) -> tuple[httpx.Client, str]:
    """An httpx client holding a session, and a CSRF token from a page."""
    http = httpx.Client(base_url=api.url, timeout=10)
    form = http.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert form.status_code == 200 and csrf
    done = http.post("/ui/login", data={"token": TOKEN, "csrf": csrf.group(1), "next": "/ui"})
    assert done.status_code == 303 and done.headers["location"] == "/ui"
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/ui" in cookie and TOKEN not in cookie
    page = http.get("/ui/webhooks")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token
    return http, token.group(1)


def test_session_scope_csrf_and_headers(ui_api: Api) -> None:
    http, csrf = _logged_in(ui_api)
    try:
        session = http.cookies["qai_ui"]
        # The cookie opens /ui only: the JSON API still wants the bearer token.
        api_call = httpx.get(
            f"{ui_api.url}/v1/projects/some-project", headers={"Cookie": f"qai_ui={session}"}
        )
        assert api_call.status_code == 401
        page = http.get("/ui")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-store"
        target = "/ui/webhooks/msg_0123abcd/replay"
        assert http.post(target, data={}).status_code == 403
        assert http.post(target, data={"csrf": "forged"}).status_code == 403
        cross = http.post(target, data={"csrf": csrf}, headers={"Origin": "http://evil.test"})
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "csrf_failed"
        site = http.post(target, data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
        assert site.status_code == 403
        # A genuine form post gets through CSRF: the event is simply not dead.
        genuine = http.post(target, data={"csrf": csrf}, headers={"Origin": ui_api.url})
        assert genuine.status_code == 409
        assert http.get("/ui?status=bogus").status_code == 422
        assert http.get("/ui?after=not-a-cursor").status_code == 422
        assert http.get("/ui/projects/..%2Fetc").status_code in (404, 422)
        assert http.get(f"/ui/actions/{uuid.uuid4()}").status_code == 404
        out = http.post("/ui/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert _sent_to_login(http.get("/ui"))  # back to the form
    finally:
        http.close()
    # A forged or tampered cookie is no session; a bearer token still opens the page.
    forged = httpx.get(
        f"{ui_api.url}/ui", headers={"Cookie": f"qai_ui={session[:-2]}xx"}, timeout=10
    )
    assert _sent_to_login(forged)
    assert _sent_to_login(httpx.get(f"{ui_api.url}/ui/webhooks", timeout=10))
    bearer = httpx.get(f"{ui_api.url}/ui", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert bearer.status_code == 200
    # The vendored htmx is served before login (the form needs nothing else), no CDN.
    js = httpx.get(f"{ui_api.url}/ui/static/htmx-2.0.11.min.js", timeout=10)
    assert js.status_code == 200 and "htmx" in js.text[:2000]
    assert httpx.post(f"{ui_api.url}/ui/logout", timeout=10).status_code == 401


def test_live_stream_escapes_output(ui_api: Api, producer: WorkspaceClient) -> None:
    project = f"ui-sse-{uuid.uuid4().hex[:8]}"
    producer.command(project, "sleep 1")
    hostile = producer.command(project, f"echo {HOSTILE}")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    seen: list[tuple[str, str]] = []
    with (
        httpx.Client(base_url=ui_api.url, headers=headers, timeout=30) as http,
        http.stream("GET", f"/ui/actions/{hostile.id}/stream") as response,
    ):
        assert response.status_code == 200
        event = ""
        started = time.monotonic()
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                seen.append((event, line.split(":", 1)[1].strip()))
            if event == "done" and seen and seen[-1][0] == "done":
                break
            assert time.monotonic() - started < 30
    output = "".join(data for event, data in seen if event == "output")
    assert "&lt;script&gt;" in output and "<script>" not in output and "<img" not in output
    done = "\n".join(data for event, data in seen if event == "done")
    assert 'data-status="succeeded"' in done


def test_unknown_project_and_empty_pages(ui_api: Api) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=ui_api.url, headers=headers, timeout=10) as http:
        assert http.get("/ui/projects/no-such-project").status_code == 404
        empty = http.get("/ui?status=destroyed")
        assert empty.status_code == 200 and "No workspaces with status destroyed" in empty.text
