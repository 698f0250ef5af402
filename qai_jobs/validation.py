"""Validation at the edge: one action's payload against its model and the configured limits.

Every producer (the Python client, the HTTP API, a foreign Celery message recorded by the
worker) and the worker itself validate with the same limits, built from the settings, so
raising a limit for a deployment raises it everywhere.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from qai_jobs.config import Settings
from qai_jobs.errors import PayloadTooLarge, ValidationFailed
from qai_jobs.schemas import KINDS, PAYLOAD_MODELS, CommandPayload, EnsurePayload, FileEntry
from qai_jobs.sources import SourcePolicy


class PayloadLimits(BaseModel):
    """How much one action may carry, the defaults being the documented ones, and which
    repositories it may name. Without a source policy (a remote client's defaults) the
    repository is left to the server, whose settings decide. Frozen: one instance serves every
    caller with the same settings (``from_settings`` is cached)."""

    model_config = ConfigDict(frozen=True)

    max_file_bytes: int = 10 * 1024 * 1024
    max_action_bytes: int = 100 * 1024 * 1024
    max_files: int = 10_000
    max_timeout_s: float = 3600.0
    sources: SourcePolicy | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PayloadLimits:
        return _limits(
            settings.workspace_max_file_bytes,
            settings.workspace_max_action_bytes,
            settings.workspace_max_files,
            settings.workspace_max_timeout_s,
            SourcePolicy.from_settings(settings),
        )


@functools.lru_cache(maxsize=64)
def _limits(
    max_file_bytes: int,
    max_action_bytes: int,
    max_files: int,
    max_timeout_s: float,
    sources: SourcePolicy,
) -> PayloadLimits:
    # Built once per distinct set of limits: the worker asks with every action.
    return PayloadLimits(
        max_file_bytes=max_file_bytes,
        max_action_bytes=max_action_bytes,
        max_files=max_files,
        max_timeout_s=max_timeout_s,
        sources=sources,
    )


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "payload"


def validate_payload(
    kind: object, payload: dict[str, Any], limits: PayloadLimits | None = None
) -> BaseModel:
    """Validate one action's payload; raise ValidationFailed naming the first bad field."""
    if not isinstance(kind, str) or kind not in PAYLOAD_MODELS:
        shown = repr(kind)[:40]
        raise ValidationFailed(
            f"kind must be one of {', '.join(KINDS)} (got {shown})", field="kind"
        )
    _reject_nul(payload, ())
    model = PAYLOAD_MODELS[str(kind)]
    try:
        parsed = model.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        field = _field_name(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field for a {kind} action"
        raise ValidationFailed(f"{field}: {message}", field=field, errors=errors) from None
    _check_limits(parsed, limits or PayloadLimits())
    return parsed


def _reject_nul(value: object, loc: tuple[int | str, ...]) -> None:
    """Postgres cannot store NUL in JSON text: refuse it here, naming where it is."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationFailed(
                f"{_field_name(loc)}: contains a NUL character (send binary content as base64)",
                field=_field_name(loc),
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key, loc)
            _reject_nul(item, (*loc, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _reject_nul(item, (*loc, i))


def _check_limits(parsed: BaseModel, limits: PayloadLimits) -> None:
    files: list[FileEntry] | None = getattr(parsed, "files", None)
    if files:
        if len(files) > limits.max_files:
            raise PayloadTooLarge(
                f"files: {len(files)} files exceed the limit of {limits.max_files}", field="files"
            )
        total = 0
        for i, entry in enumerate(files):
            size = entry.size()
            if size > limits.max_file_bytes:
                raise PayloadTooLarge(
                    f"files[{i}]: {entry.path!r} is {size} bytes, over the limit of "
                    f"{limits.max_file_bytes}",
                    field=f"files[{i}]",
                )
            total += size
        if total > limits.max_action_bytes:
            raise PayloadTooLarge(
                f"files: {total} bytes exceed the limit of {limits.max_action_bytes} an action",
                field="files",
            )
        seen: set[str] = set()
        for i, entry in enumerate(files):
            if entry.path in seen:
                raise ValidationFailed(
                    f"files[{i}]: {entry.path!r} is given twice", field=f"files[{i}]"
                )
            seen.add(entry.path)
    if isinstance(parsed, EnsurePayload) and parsed.repo is not None and limits.sources:
        limits.sources.check(parsed.repo.url)
    if isinstance(parsed, CommandPayload) and parsed.timeout_s > limits.max_timeout_s:
        raise ValidationFailed(
            f"timeout_s: at most {limits.max_timeout_s:g} seconds", field="timeout_s"
        )


def payload_to_json(parsed: BaseModel) -> dict[str, Any]:
    """The canonical JSON form stored in Postgres (defaults left out, files as a list)."""
    return parsed.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
