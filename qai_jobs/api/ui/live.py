"""The operator page's live output: an action's events stream, rendered as HTML fragments.

The same stream as ``GET /v1/actions/{id}/events`` (``events.ActionEvents``: subscribe before
reading Postgres, bounded buffer, a ``done`` that is never lost), under ``/ui`` so the page's
session cookie reaches it (an EventSource cannot send a bearer token). htmx's SSE extension
swaps each event's data into the page as HTML, so every value is escaped here: output is
whatever a sandbox printed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from markupsafe import escape
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from qai_jobs.api.events import SEND_TIMEOUT_SECONDS, ActionEvents, _first_id
from qai_jobs.api.ui.render import render_fragment
from qai_jobs.db import operator

router = APIRouter(include_in_schema=False)
# One output event's data as shown: the worker sends chunks far smaller, this is a backstop.
MAX_CHUNK = 64 * 1024


def output_html(data: str) -> str:
    try:
        event: Any = json.loads(data)
        text = str(event.get("data", ""))[-MAX_CHUNK:]
        stream = "stderr" if event.get("stream") == "stderr" else "stdout"
    except (ValueError, AttributeError):
        return ""
    return f'<span class="{stream}">{escape(text)}</span>'


def progress_html(data: str) -> str:
    try:
        event: Any = json.loads(data)
        stage = str(event.get("stage", ""))[:200]
        done, total = event.get("done"), event.get("total")
    except (ValueError, AttributeError):
        return ""
    count = f" {int(done)}/{int(total)}" if isinstance(done, int) and isinstance(total, int) else ""
    return str(escape(stage + count))


@router.get("/ui/actions/{action_id}/stream")
async def stream(
    request: Request,
    action_id: uuid.UUID,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> EventSourceResponse:
    events = ActionEvents(
        request.app.state.client,
        request.app.state.waiter.redis,
        str(action_id),
        _first_id(last_event_id),
    )
    await events.open()

    async def summary() -> str:
        def read() -> Any:
            with request.app.state.client.engine.connect() as conn:
                return operator.action(conn, action_id)

        found = await run_in_threadpool(read)
        note = "(reload the page for the whole output)"
        summary = render_fragment("_action_summary.html", a=found, final_note=note)
        # Out of band: the stage line says the stream is over.
        return summary + '<span class="muted" id="stage" hx-swap-oob="true">finished</span>'

    async def html() -> AsyncIterator[ServerSentEvent]:
        async for sse in events.stream():
            if sse.event == "output":
                data = output_html(str(sse.data))
            elif sse.event == "progress":
                data = progress_html(str(sse.data))
            else:
                data = await summary()
            yield ServerSentEvent(data, event=sse.event, id=sse.id, retry=sse.retry)

    return EventSourceResponse(
        html(),
        ping=request.app.state.settings.workspace_events_heartbeat_seconds,
        send_timeout=SEND_TIMEOUT_SECONDS,
        background=BackgroundTask(events.close),
    )
