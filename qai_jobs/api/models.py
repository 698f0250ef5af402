"""Response models and the request-body schema of the HTTP API, for the OpenAPI document.

Handlers build plain dicts (no per-response validation on the hot path); these models only
describe them, and the schemathesis test holds the two together.
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from qai_jobs.schemas import KINDS, PAYLOAD_MODELS

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ActionError(BaseModel):
    code: str
    message: str
    retryable: bool = False


class Accepted(BaseModel):
    action_id: str
    status: Status


class Action(BaseModel):
    id: str
    project_id: str
    kind: str
    status: Status
    attempts: int
    result: dict[str, Any] | None
    error: ActionError | None
    stage: dict[str, Any] | None = None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    seq: int | None = None
    next_attempt_at: str | None = None


class ActionList(BaseModel):
    project_id: str
    actions: list[Action]


class Manifest(BaseModel):
    project_id: str
    manifest_seq: int | None = Field(
        description="Send as the payload's manifest_base with the files that differ; null when "
        "there is nothing to diff against (send every file)."
    )
    files: dict[str, str] = Field(description="path -> sha256 of what the project's syncs left")


class Workspace(BaseModel):
    project_id: str
    workspace_id: str
    status: str
    provider: str | None
    sandbox_id: str | None
    preview_url: str | None
    upstream_url: str | None = Field(None, description="The provider's own preview URL")
    preview_id: str | None = Field(None, description="The DNS label of the gateway URL")
    port: int | None
    host_id: str | None = Field(None, description="The host holding a local workspace")
    last_snapshot_id: str | None
    last_activity_at: str | None
    created_at: str | None
    updated_at: str | None
    repo: dict[str, Any] | None
    pending_actions: int


class Health(BaseModel):
    status: Literal["ok", "unhealthy"]
    postgres: str
    redis: str
    error: ErrorDetail | None = None


class LegacyRequest(BaseModel):
    """QAI's original ``POST /api/workspaces`` body (camelCase; unknown keys are ignored so
    old callers keep working)."""

    model_config = ConfigDict(extra="ignore")

    action: Literal["ensure", "write", "read", "command", "preview"]
    projectId: str
    workspaceId: str | None = None
    files: dict[str, str] | list[dict[str, Any]] | None = None
    delete: list[str] | None = None
    devCommand: str | None = None
    installCommand: str | None = None
    command: str | None = None
    cwd: str | None = None
    timeout: float | None = None
    paths: list[str] | None = None
    port: int | None = None
    env: dict[str, str] | None = None


class LegacyResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    workspaceId: str | None
    previewUrl: str | None
    actionId: str
    status: Status


class ProviderEvent(BaseModel):
    """A provider lifecycle hook (see docs/http-api.md)."""

    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, Field(max_length=128)]
    data: dict[str, Any] = Field(default_factory=dict)


def _action_request_models() -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    for kind in KINDS:
        tag: Any = Literal[kind]
        model = create_model(
            f"{kind.capitalize()}Action", __base__=PAYLOAD_MODELS[kind], kind=(tag, ...)
        )
        out.append(model)
    return out


def action_request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The body of ``POST /v1/projects/{p}/actions``: one object per kind, told apart by
    ``kind``. Returns (schema, component definitions)."""
    models = _action_request_models()
    union: Any = Annotated[functools.reduce(operator.or_, models), Field(discriminator="kind")]
    schema = TypeAdapter(union).json_schema(ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = schema.pop("$defs", {})
    return schema, defs


class Host(BaseModel):
    host_id: str
    address: str
    alive: bool
    draining: bool
    capacity: int
    last_seen_at: str
    started_at: str
    workspaces: int = Field(description="Workspaces it holds (not destroyed)")


class HostList(BaseModel):
    hosts: list[Host]
