"""The operator page's rendering: what escaping alone would not stop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qai_jobs.api.ui.auth import safe_next
from qai_jobs.api.ui.live import output_html, progress_html
from qai_jobs.api.ui.render import render_fragment, templates


def test_links_only_to_http_and_targets_without_credentials() -> None:
    http_url = templates.filters["http_url"]
    assert http_url("http://127.0.0.1:3000/") == "http://127.0.0.1:3000/"
    assert http_url("https://x.example/a") == "https://x.example/a"
    for bad in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x", "//evil", ""):
        assert http_url(bad) is None, bad
    redact = templates.filters["redact_url"]
    assert redact("https://user:secret@hooks.example:8443/in?token=abc") == (
        "https://hooks.example:8443/in?…"
    )


def test_templates_escape_what_sandboxes_wrote() -> None:
    hostile = '"><script>alert(1)</script>'
    row = {
        "id": "msg_00",
        "type": hostile,
        "project_id": "p",
        "sequence": 1,
        "target": "http://t/",
        "attempts": 1,
        "created_at": datetime.now(UTC) - timedelta(minutes=3),
        "last_error": hostile,
    }
    html = render_fragment("_webhook_row.html", e=row, replayed=False, csrf="c")
    assert "<script>" not in html and "&lt;script&gt;" in html and "3m ago" in html


def test_live_fragments_escape_and_bound() -> None:
    out = output_html('{"stream": "stderr", "offset": 0, "data": "<b>x</b>"}')
    assert out == '<span class="stderr">&lt;b&gt;x&lt;/b&gt;</span>'
    assert output_html('{"stream": "\\"><i>", "data": "y"}') == '<span class="stdout">y</span>'
    assert output_html("not json") == ""
    assert progress_html('{"stage": "<img>", "done": 1, "total": 3}') == "&lt;img&gt; 1/3"


def test_login_goes_back_to_a_page_of_this_ui_only() -> None:
    assert safe_next("/ui/projects/p") == "/ui/projects/p"
    for bad in ("https://evil.example/ui", "//evil.example/ui", "/ui\\\\evil", "/v1/x", None):
        assert safe_next(bad) == "/ui", bad
