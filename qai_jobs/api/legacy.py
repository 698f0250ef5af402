"""QAI's original routes: ``POST /api/workspaces`` and the provider hook ``/api/workspaces/events``.

``/api/workspaces`` keeps the old camelCase, answer-when-done shape on top of the v1 pipeline:
it enqueues one action, waits for it (``?wait=``, default five minutes) and answers with
``workspaceId``, ``previewUrl`` and the action's result. A failed action answers with the
uniform error body carrying the action's own error code.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from qai_jobs.api import provider_events
from qai_jobs.api.errors import error_response
from qai_jobs.api.gate import reject_nul
from qai_jobs.api.models import ErrorBody, LegacyRequest, LegacyResponse
from qai_jobs.api.waiter import Waiter
from qai_jobs.client.direct import WorkspaceClient
from qai_jobs.config import Settings
from qai_jobs.constants import TERMINAL, ActionStatus
from qai_jobs.errors import ErrorCode, NotFound, ValidationFailed

router = APIRouter()

# How long the original route holds a request by default: long enough for a first ensure with
# an install on a warm cache, short enough for ordinary proxies. ``?wait=`` overrides it.
LEGACY_WAIT_SECONDS = 300.0
# Our payload field -> the original wire name, so a 422 names what the caller actually sent.
_WIRE_NAMES = {
    "dev_command": "devCommand",
    "install_command": "installCommand",
    "cmd": "command",
    "timeout_s": "timeout",
    "project_id": "projectId",
}
# Action error codes that say the request itself was wrong, not the sandbox.
_CLIENT_ERROR_CODES = {
    ErrorCode.INVALID_PAYLOAD,
    ErrorCode.INVALID_REQUEST,
    ErrorCode.PATH_OUTSIDE_WORKSPACE,
    ErrorCode.SNAPSHOT_NOT_FOUND,
}


def _payload(req: LegacyRequest) -> dict[str, Any]:
    fields: dict[str, Any]
    if req.action == "ensure":
        fields = {
            "files": req.files,
            "delete": req.delete,
            "dev_command": req.devCommand,
            "install_command": req.installCommand,
            "port": req.port,
            "env": req.env,
        }
    elif req.action == "write":
        fields = {"files": req.files, "delete": req.delete}
    elif req.action == "read":
        fields = {"paths": req.paths}
    elif req.action == "command":
        fields = {"cmd": req.command, "cwd": req.cwd, "env": req.env, "timeout_s": req.timeout}
    else:
        fields = {"port": req.port}
    return {k: v for k, v in fields.items() if v is not None}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _wire_field(field: str) -> str:
    head, sep, tail = field.partition(".")
    bracket = head.find("[")
    base, index = (head[:bracket], head[bracket:]) if bracket >= 0 else (head, "")
    return _WIRE_NAMES.get(base, base) + index + sep + tail


@router.post(
    "/api/workspaces",
    summary="QAI's original route: run one action and answer when it is done",
    responses={
        200: {
            "model": LegacyResponse,
            "description": "Done: workspaceId, previewUrl and the result",
        },
        202: {
            "model": LegacyResponse,
            "description": "Still running after ?wait (poll /v1/actions/{actionId})",
        },
        **{c: {"model": ErrorBody} for c in (401, 409, 413, 422, 502, 503)},
    },
)
async def workspaces(
    request: Request,
    body: LegacyRequest,
    wait: Annotated[float, Query(ge=0, le=3600)] = LEGACY_WAIT_SECONDS,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> Response:
    client: WorkspaceClient = request.app.state.client
    waiter: Waiter = request.app.state.waiter
    payload = _payload(body)
    reject_nul(payload)

    def record() -> str:
        try:
            handle = client.enqueue(
                body.projectId, body.action, idempotency_key=idempotency_key, **payload
            )
        except ValidationFailed as exc:
            field = _wire_field(exc.field) if exc.field else None
            message = exc.message
            if exc.field and field and message.startswith(exc.field):
                message = field + message[len(exc.field) :]
            raise type(exc)(message, field=field) from None
        return handle.id

    action_id = await run_in_threadpool(record)
    action = await waiter.wait(action_id, wait)
    workspace = await run_in_threadpool(_workspace, client, body.projectId)
    result: dict[str, Any] = action["result"] or {}
    answer: dict[str, Any] = {
        "workspaceId": result.get("workspace_id") or workspace.get("workspace_id"),
        "previewUrl": result.get("preview_url") or workspace.get("preview_url"),
        "actionId": action_id,
        "status": action["status"],
    }
    if action["status"] not in TERMINAL:
        return JSONResponse(answer, status_code=202)
    if action["status"] == ActionStatus.SUCCEEDED:
        # The result as the v1 API has it, plus camelCase twins of compound keys for old callers.
        extra = {**result, **{_camel(k): v for k, v in result.items() if "_" in k}}
        return JSONResponse({**extra, **answer})
    error = action["error"] or {"code": action["status"], "message": action["status"]}
    code = str(error.get("code", "action_failed"))
    status = (
        409
        if action["status"] == ActionStatus.CANCELLED
        else 422
        if code in _CLIENT_ERROR_CODES
        else 502
    )
    details = {
        "actionId": action_id,
        "workspaceId": answer["workspaceId"],
        "retryable": bool(error.get("retryable", False)),
    }
    return error_response(status, code, str(error.get("message", code)), details)


def _workspace(client: WorkspaceClient, project_id: str) -> dict[str, Any]:
    try:
        return client.get_workspace(project_id)
    except NotFound:
        return {}


@router.post(
    "/api/workspaces/events",
    summary="Provider lifecycle hook (E2B's e2b-signature, or Standard Webhooks), applied once",
    responses={
        200: {"description": "Accepted (applied, ignored, or a duplicate)"},
        **{c: {"model": ErrorBody} for c in (401, 413, 422)},
    },
)
async def provider_event(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    raw = await request.body()
    secret = provider_events.hook_secret(settings)
    if secret is None:
        return error_response(
            401,
            ErrorCode.UNAUTHORIZED,
            "WORKSPACE_PROVIDER_HOOK_SECRET is not set; provider hooks are refused",
        )
    try:
        source = provider_events.verify(secret, request.headers, raw)
    except provider_events.BadSignature as exc:
        return error_response(401, ErrorCode.BAD_SIGNATURE, str(exc))
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("body: must be a JSON object")
        hook = provider_events.parse(source, request.headers, body)
    except ValueError as exc:
        named = str(exc).split(":")[0] in ("body", "data", "id", "sandboxId", "data.sandbox_id")
        message = str(exc) if named else "body: not valid JSON"
        return error_response(
            422, ErrorCode.INVALID_REQUEST, message, {"field": message.split(":")[0]}
        )
    reason = provider_events.ignored_because(settings, hook)
    if reason is not None:
        return JSONResponse({"applied": False, "projects": [], "ignored": reason})
    client: WorkspaceClient = request.app.state.client
    first, projects = await run_in_threadpool(provider_events.apply, client.engine, hook)
    if not first:
        return JSONResponse({"applied": False, "projects": [], "duplicate": True})
    return JSONResponse({"applied": bool(projects), "projects": projects})
