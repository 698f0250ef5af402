"""The operator's page at ``/ui``: workspaces by status, a project's action timeline with the
live output of what runs, dead webhooks with a replay button.

Server-rendered (Jinja2, every value escaped) with htmx for the live parts, vendored under
``static/ui`` so the page works offline; no route here is part of the OpenAPI document. The
queries live in ``db.operator``; who may see the page, in ``auth``; how rows become HTML,
in ``render``; the live output, in ``live``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from qai_jobs.api.ui import live as ui_live
from qai_jobs.api.ui.auth import PREFIX, Session, UiAuth, safe_next
from qai_jobs.api.ui.render import HEADERS, STATIC, render_fragment
from qai_jobs.config import Settings
from qai_jobs.constants import DELIVER_TASK, WorkspaceStatus
from qai_jobs.db import hosts, operator, outbox
from qai_jobs.errors import Conflict, NotFound, ValidationFailed
from qai_jobs.schemas import check_project_id

log = logging.getLogger("qai_jobs.api")
HERE = Path(__file__).parent
STATUSES = "|".join(s.value for s in WorkspaceStatus)
_CURSOR = r"^[0-9][0-9T:.+\- ]{9,40}\|[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

_WEBHOOK_CURSOR = r"^[0-9][0-9T:.+\- ]{9,40}\|msg_[0-9a-f]+$"

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def install(app: FastAPI, settings: Settings) -> UiAuth:
    """Add the page to ``app``; returns the gate hook the app's ``GateMiddleware`` needs."""
    auth = UiAuth(settings)
    app.state.ui_auth = auth
    app.include_router(router)
    app.include_router(ui_live.router)
    app.mount(STATIC, StaticFiles(directory=HERE / "static"), name="ui-static")
    return auth


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page with this visitor's CSRF token; a visitor without a session gets one (without a
    token configured that is how forms work; with one, the gate let only sessions through)."""
    auth: UiAuth = request.app.state.ui_auth
    session = auth.session_of(request)
    fresh = session is None
    if session is None:
        session = auth.new_session(authenticated=False)
    body = render_fragment(
        name,
        csrf=auth.csrf_token(session),
        logout=auth.token is not None and session.authenticated,
        **context,
    )
    response = HTMLResponse(body, status_code=status_code, headers=HEADERS)
    if fresh:
        auth.set_cookie(response, request, session)
    return response


async def _db(request: Request, fn: Any, *args: Any) -> Any:
    def run() -> Any:
        with request.app.state.client.engine.connect() as conn:
            return fn(conn, *args)

    return await run_in_threadpool(run)


def _cursor(value: str | None, field: str) -> tuple[datetime, str] | None:
    if value is None:
        return None
    stamp, _, key = value.partition("|")
    try:
        return datetime.fromisoformat(stamp), key
    except ValueError:
        raise ValidationFailed(f"{field}: not a page cursor", field=field) from None


# -- login -------------------------------------------------------------------------------------
@router.get("/login")
async def login_form(request: Request, next: str | None = Query(None, max_length=2000)) -> Response:
    auth: UiAuth = request.app.state.ui_auth
    session = auth.session_of(request)
    if auth.token is None or (session is not None and session.authenticated):
        return RedirectResponse(safe_next(next), status_code=303)
    # 401 as every route without the token answers (contract §7): the page is the way in.
    return page(request, "login.html", status_code=401, next=safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    auth: UiAuth = request.app.state.ui_auth
    form = await request.form()
    refusal = auth.csrf_refusal(request, form.get("csrf"))
    if refusal is not None:
        return refusal
    target = safe_next(str(form.get("next") or ""))
    token = form.get("token")
    if not isinstance(token, str) or not auth.token_matches(token):
        return page(request, "login.html", status_code=401, failed=True, next=target)
    response = RedirectResponse(target, status_code=303)
    auth.set_cookie(response, request, auth.new_session(authenticated=True))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    auth: UiAuth = request.app.state.ui_auth
    form = await request.form()
    refusal = auth.csrf_refusal(request, form.get("csrf"))
    if refusal is not None:
        return refusal
    response = RedirectResponse("/ui/login", status_code=303)
    auth.end(response)
    return response


# -- pages -------------------------------------------------------------------------------------
@router.get("")
async def workspaces(
    request: Request,
    status: Annotated[str | None, Query(pattern=f"^({STATUSES})$")] = None,
    after: Annotated[str | None, Query(pattern=_CURSOR)] = None,
) -> Response:
    dead_seconds = request.app.state.settings.workspace_host_dead_seconds

    def read(conn: Any) -> dict[str, Any]:
        return {
            "counts": operator.status_counts(conn),
            "page": operator.workspaces(conn, status, _cursor(after, "after")),
            "hosts": hosts.list_hosts(conn, dead_seconds),
        }

    found = await _db(request, read)
    total = sum(found["counts"].values())
    return page(request, "workspaces.html", status=status, total=total, **found)


@router.get("/projects/{project_id}")
async def project(
    request: Request,
    project_id: Annotated[str, PathParam(max_length=128)],
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    check_project_id(project_id)

    def read(conn: Any) -> tuple[Any, operator.Page]:
        return operator.workspace(conn, project_id), operator.timeline(conn, project_id, before)

    workspace, timeline = await _db(request, read)
    if workspace is None:
        raise NotFound(f"no workspace for project {project_id}")
    live = before is None and any(a["status"] in ("queued", "running") for a in timeline.rows)
    return page(request, "project.html", w=workspace, page=timeline, live=live)


@router.get("/actions/{action_id}")
async def action(request: Request, action_id: uuid.UUID) -> Response:
    found = await _db(request, operator.action, action_id)
    if found is None:
        raise NotFound(f"no action {action_id}")
    live = found["status"] in ("queued", "running")
    return page(request, "action.html", a=found, live=live)


@router.get("/webhooks")
async def webhooks(
    request: Request,
    before: Annotated[
        str | None, Query(pattern=r"^[0-9][0-9T:.+\- ]{9,40}\|msg_[0-9a-f]+$")
    ] = None,
) -> Response:
    found = await _db(request, operator.dead_webhooks, _cursor(before, "before"))
    return page(request, "webhooks.html", page=found)


@router.post("/webhooks/{event_id}/replay")
async def replay(
    request: Request, event_id: Annotated[str, PathParam(pattern=r"^msg_[0-9a-f]{1,60}$")]
) -> Response:
    auth: UiAuth = request.app.state.ui_auth
    form = await request.form()
    refusal = auth.csrf_refusal(request, form.get("csrf"))
    if refusal is not None:
        return refusal

    def run() -> dict[str, Any] | None:
        with request.app.state.client.engine.begin() as conn:
            if not outbox.replay(conn, event_id=event_id, only_dead=True):
                return None
            return operator.webhook(conn, event_id)

    row = await run_in_threadpool(run)
    if row is None:
        raise Conflict(f"webhook event {event_id} is not dead (unknown, or replayed already)")
    await run_in_threadpool(_send_delivery, event_id)
    if "hx-request" not in request.headers:
        return RedirectResponse("/ui/webhooks", status_code=303)
    session = auth.session_of(request) or Session("", False)
    fragment = render_fragment(
        "_webhook_row.html", e=row, replayed=True, csrf=auth.csrf_token(session)
    )
    return HTMLResponse(fragment, headers=HEADERS)


def _send_delivery(event_id: str) -> None:
    """Hand the event to a worker now; if the broker is away, the webhooks sweep finds it due."""
    from qai_jobs.celery_app import app

    try:
        app.send_task(DELIVER_TASK, kwargs={"event_id": event_id}, retry=False)
    except Exception:  # kombu raises many types; the row is due either way
        log.warning(
            "[event_id=%s] broker unavailable; the webhooks sweep will deliver it", event_id
        )
