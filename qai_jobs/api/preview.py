"""``POST /v1/projects/{project_id}/preview-token``: a gateway URL with a short-lived token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from qai_jobs.api.gate import read_json_object
from qai_jobs.api.models import ErrorBody
from qai_jobs.client import WorkspaceClient
from qai_jobs.gateway.tokens import DEFAULT_TTL_S, MAX_TTL_S, check_ttl
from qai_jobs.schemas import check_project_id

router = APIRouter()


class PreviewTokenRequest(BaseModel):
    ttl_s: float = Field(DEFAULT_TTL_S, ge=1, le=MAX_TTL_S, description="Lifetime in seconds")


class PreviewToken(BaseModel):
    url: str = Field(description="The gateway URL with the token in its qai_token query")
    token: str
    expires_at: str


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorBody, "description": description}


@router.post(
    "/v1/projects/{project_id}/preview-token",
    summary="Mint a short-lived preview token (gateway in token mode)",
    responses={
        200: {"model": PreviewToken},
        401: _error("Missing or wrong bearer token"),
        404: _error("Unknown project"),
        409: _error("No gateway configured, or the workspace is destroyed"),
        422: _error("Invalid request (the field is named)"),
    },
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": PreviewTokenRequest.model_json_schema()}},
        }
    },
)
async def preview_token(
    request: Request,
    project_id: Annotated[str, Path(description="^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")],
) -> Response:
    check_project_id(project_id)
    body = await read_json_object(request) if await request.body() else {}
    ttl_s = check_ttl(body.get("ttl_s", DEFAULT_TTL_S))
    client: WorkspaceClient = request.app.state.client
    minted = await run_in_threadpool(client.preview_token, project_id, ttl_s)
    return JSONResponse(minted)
