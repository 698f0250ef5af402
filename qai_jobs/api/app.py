"""The HTTP producer API (docs/http-api.md): ``create_app(settings)`` for ``qai-jobs api``.

Enqueueing goes through the same ``WorkspaceClient`` as Python producers, so the HTTP path gets
every guarantee (README "Guarantees") from the moment it answers 202. Blocking work (Postgres, the
Celery publish) runs in the threadpool; waiting for an action is async (a Redis subscription),
so a thousand long-polls hold no threads. The original QAI routes live in ``api_legacy``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from qai_jobs.api import events as api_events
from qai_jobs.api import legacy as api_legacy
from qai_jobs.api import preview as api_preview
from qai_jobs.api import provider_events
from qai_jobs.api import ui as api_ui
from qai_jobs.api.errors import error_body, install_error_handlers
from qai_jobs.api.gate import GateMiddleware, read_json_object
from qai_jobs.api.models import (
    Accepted,
    Action,
    ActionList,
    ErrorBody,
    Health,
    HostList,
    Manifest,
    Workspace,
    action_request_schema,
)
from qai_jobs.api.waiter import Waiter
from qai_jobs.client.direct import WorkspaceClient
from qai_jobs.config import Settings
from qai_jobs.constants import TERMINAL, ActionStatus
from qai_jobs.db.session import ping
from qai_jobs.errors import ErrorCode, ValidationFailed
from qai_jobs.schemas import check_project_id
from qai_jobs.sealing import load_key

log = logging.getLogger(__name__)

# Longest ``?wait=`` we hold a request open for (seconds); clients loop for longer waits.
MAX_WAIT_SECONDS = 3600.0
# JSON framing on top of an action's byte limit: base64 content is 4/3 of its bytes, escaped
# text up to twice; anything larger cannot be a valid action and is refused unread.
BODY_OVERHEAD_BYTES = 1024 * 1024


def max_body_bytes(settings: Settings) -> int:
    return 2 * settings.workspace_max_action_bytes + BODY_OVERHEAD_BYTES


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "Missing or wrong bearer token",
        404: "Unknown action or project",
        409: "Conflict with the action's state",
        413: "Request too large",
        422: "Invalid request (the field is named; nothing was enqueued)",
        503: "Postgres or Redis unreachable",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


WaitParam = Annotated[
    float | None,
    Query(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait for the action to finish."),
]
ProjectParam = Annotated[str, Path(description="^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory`` (and ``qai-jobs api --workers N``): each server
    process reads its settings from the environment and holds its own connections."""
    from qai_jobs.celery_app import configure
    from qai_jobs.config import load_settings

    settings = load_settings()
    configure(settings)
    return create_app(settings)


def _key_loaded(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (exc := done.exception()) is not None:
        log.warning("cannot read the sealing key yet: %s", exc)


def create_app(settings: Settings) -> FastAPI:
    client = WorkspaceClient(settings)
    waiter = Waiter(client, settings.redis_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        provider_events.hook_secret(settings)  # says so at start-up when it falls back
        # The sealing key, read once before the first request needs it; a database that is
        # not up yet is the health check's business, and the first enqueue reads it again.
        preload = asyncio.get_running_loop().run_in_executor(None, load_key, settings)
        preload.add_done_callback(_key_loaded)
        yield
        await waiter.close()

    app = FastAPI(
        title="qai-jobs",
        version="1",
        description="Durable, ordered workspace actions for AI coding-agent sandboxes.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.client = client
    app.state.waiter = waiter
    token = settings.workspace_token.get_secret_value() if settings.workspace_token else None
    ui_gate = api_ui.install(app, settings)
    app.add_middleware(
        GateMiddleware, token=token, max_body=max_body_bytes(settings), sub_gate=ui_gate
    )
    install_error_handlers(app)
    request_schema, request_defs = action_request_schema()

    @app.post(
        "/v1/projects/{project_id}/actions",
        status_code=202,
        summary="Enqueue an action",
        responses={
            202: {"model": Accepted, "description": "Enqueued (or still running after ?wait)"},
            200: {"model": Action, "description": "Finished within ?wait"},
            **_errors(401, 413, 422, 503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema}},
            }
        },
    )
    async def enqueue(
        request: Request,
        project_id: ProjectParam,
        wait: WaitParam = None,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
        ] = None,
    ) -> Response:
        check_project_id(project_id)
        body = await read_json_object(request)
        kind = body.pop("kind", None)
        if kind is None:
            raise ValidationFailed("kind: required", field="kind")
        if not isinstance(kind, str):
            raise ValidationFailed("kind: must be a string naming the action", field="kind")
        payload = body

        def record() -> dict[str, Any]:
            handle = client.enqueue_payload(project_id, kind, payload, idempotency_key)
            if idempotency_key is None:
                return {"action_id": handle.id, "status": ActionStatus.QUEUED}
            existing = client.get_action(handle.id)
            return {"action_id": handle.id, "status": existing["status"]}

        accepted = await run_in_threadpool(record)
        if wait:
            action = await waiter.wait(accepted["action_id"], wait)
            if action["status"] in TERMINAL:
                return JSONResponse(action, status_code=200)
            accepted["status"] = action["status"]
        return JSONResponse(accepted, status_code=202)

    @app.get(
        "/v1/actions/{action_id}",
        summary="One action (optionally waiting for it to finish)",
        responses={200: {"model": Action}, **_errors(401, 404, 422, 503)},
    )
    async def get_action(action_id: str, wait: WaitParam = None) -> Response:
        if wait:
            return JSONResponse(await waiter.wait(action_id, wait))
        return JSONResponse(await run_in_threadpool(client.get_action, action_id))

    @app.post(
        "/v1/actions/{action_id}/cancel",
        summary="Cancel a queued action",
        responses={200: {"model": Action}, **_errors(401, 404, 409, 503)},
    )
    async def cancel(action_id: str) -> Response:
        return JSONResponse(await run_in_threadpool(client.cancel, action_id))

    @app.get(
        "/v1/projects/{project_id}",
        summary="A project's workspace",
        responses={200: {"model": Workspace}, **_errors(401, 404, 422, 503)},
    )
    async def get_project(project_id: ProjectParam) -> Response:
        return JSONResponse(await run_in_threadpool(client.get_workspace, project_id))

    @app.get(
        "/v1/hosts",
        summary="The worker hosts of the fleet",
        responses={200: {"model": HostList}, **_errors(401, 503)},
    )
    async def list_hosts() -> Response:
        return JSONResponse({"hosts": await run_in_threadpool(client.list_hosts)})

    @app.get(
        "/v1/projects/{project_id}/manifest",
        summary="The files a project's syncs left in its workspace, for delta sync",
        responses={200: {"model": Manifest}, **_errors(401, 422, 503)},
    )
    async def get_manifest(project_id: ProjectParam) -> Response:
        return JSONResponse(await run_in_threadpool(client.get_manifest, project_id))

    @app.get(
        "/v1/projects/{project_id}/actions",
        summary="A project's most recent actions, oldest first",
        responses={200: {"model": ActionList}, **_errors(401, 422, 503)},
    )
    async def list_actions(
        project_id: ProjectParam,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        status: Annotated[
            str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")
        ] = None,
    ) -> Response:
        rows = await run_in_threadpool(client.list_actions, project_id, limit, status)
        return JSONResponse({"project_id": project_id, "actions": rows})

    @app.get(
        "/healthz",
        summary="Postgres and Redis reachable (no auth)",
        responses={
            200: {"model": Health},
            503: {"model": Health, "description": "Something is down"},
        },
    )
    async def healthz() -> Response:
        postgres, redis_state = await asyncio.gather(_check_postgres(client), _check_redis(waiter))
        down = [
            name
            for name, state in (("postgres", postgres), ("redis", redis_state))
            if state != "ok"
        ]
        body: dict[str, Any] = {
            "status": "ok" if not down else "unhealthy",
            "postgres": postgres,
            "redis": redis_state,
        }
        if down:
            body.update(error_body(ErrorCode.UNHEALTHY, f"unreachable: {', '.join(down)}"))
        return JSONResponse(body, status_code=503 if down else 200)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **_errors(401)},
    )
    async def metrics() -> Response:
        data, content_type = await run_in_threadpool(_render_metrics, settings)
        return Response(data, media_type=content_type)

    app.include_router(api_legacy.router)
    app.include_router(api_events.router)
    app.include_router(api_preview.router)
    _install_openapi(app, request_defs)
    return app


async def _check_postgres(client: WorkspaceClient) -> str:
    try:
        await asyncio.wait_for(run_in_threadpool(ping, client.engine), timeout=5)
    except (sa.exc.SQLAlchemyError, TimeoutError, OSError) as exc:
        orig = getattr(exc, "orig", None) or exc
        return f"unreachable: {type(orig).__name__}"
    return "ok"


async def _check_redis(waiter: Waiter) -> str:
    import redis

    try:
        await asyncio.wait_for(waiter.redis.ping(), timeout=3)
    except (redis.RedisError, TimeoutError, OSError) as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def _render_metrics(settings: Settings) -> tuple[bytes, str]:
    """The fleet's metrics, read from Postgres at scrape time (``qai_jobs.metrics``)."""
    from qai_jobs.metrics import render

    return render(settings)


def _install_openapi(app: FastAPI, request_defs: dict[str, Any]) -> None:
    """Add the action-body components and the bearer scheme (open paths say so)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(request_defs)
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        for path in ("/healthz", "/api/workspaces/events"):
            for operation in schema["paths"].get(path, {}).values():
                operation["security"] = []
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
