"""Pydantic models of every action's payload, validated at the edge before anything is written.

One payload model per kind (CONTRACT section 3). Files arrive as a mapping or a list and are
normalised to a list of :class:`FileEntry` whose paths are safe relative POSIX paths.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .egress import parse_egress
from .errors import PayloadTooLarge, ValidationFailed

PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

KINDS = (
    "ensure",
    "write",
    "read",
    "command",
    "preview",
    "logs",
    "sleep",
    "wake",
    "snapshot",
    "restore",
    "destroy",
)
Kind = Literal[
    "ensure",
    "write",
    "read",
    "command",
    "preview",
    "logs",
    "sleep",
    "wake",
    "snapshot",
    "restore",
    "destroy",
]
# Kinds that may run twice without harm when a worker dies mid-action (CONTRACT 4.4).
IDEMPOTENT_KINDS = frozenset(KINDS) - {"command"}

# Defaults of CONTRACT section 3; Limits lets the configured values override them.
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_ACTION_BYTES = 100 * 1024 * 1024
MAX_FILES = 10_000
MAX_TIMEOUT_S = 3600.0


def check_project_id(project_id: object) -> str:
    if not isinstance(project_id, str) or not PROJECT_ID_RE.match(project_id):
        raise ValidationFailed(
            "project_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", field="project_id"
        )
    return project_id


def check_path(path: str) -> str:
    """A relative POSIX path inside the workspace: no absolute path, '..', NUL or empty segment."""
    if not path:
        raise ValueError("path is empty")
    if "\x00" in path:
        raise ValueError("path contains NUL")
    if path.startswith("/"):
        raise ValueError(f"path {path!r} is absolute; paths are relative to the workspace")
    if "\\" in path:
        raise ValueError(f"path {path!r} contains a backslash; use POSIX paths")
    segments = path.split("/")
    for segment in segments:
        if segment == "":
            raise ValueError(f"path {path!r} has an empty segment")
        if segment == "..":
            raise ValueError(f"path {path!r} leaves the workspace ('..')")
    if all(s == "." for s in segments):
        raise ValueError(f"path {path!r} names the workspace itself")
    return "/".join(s for s in segments if s != ".")


SafePath = Annotated[str, Field(max_length=4096)]


def decode_content(content: str, encoding: str) -> bytes:
    """The bytes a file entry's content stands for; ValueError for invalid base64."""
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error:
            raise ValueError("not valid base64") from None
    return content.encode("utf-8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    path: SafePath
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_path(value)

    @model_validator(mode="after")
    def _decodable(self) -> FileEntry:
        try:
            decode_content(self.content, self.encoding)
        except ValueError:
            raise ValueError(f"content of {self.path!r} is not valid base64") from None
        return self

    def data(self) -> bytes:
        return decode_content(self.content, self.encoding)

    def size(self) -> int:
        if self.encoding == "base64":
            return len(self.content) * 3 // 4
        return len(self.content.encode("utf-8"))


def _normalise_files(value: object) -> object:
    if isinstance(value, dict):
        return [{"path": k, "content": v} for k, v in value.items()]
    return value


Files = list[FileEntry]


def _check_env(value: dict[str, str] | None) -> dict[str, str] | None:
    if value:
        for name in value:
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"environment variable name {name!r} is invalid")
    return value


class RepoSpec(_Strict):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    ref: Annotated[str, Field(min_length=1, max_length=255)] = "main"

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        if value.startswith("-") or any(c in value for c in " \t\n\x00~^:?*[\\"):
            raise ValueError(f"ref {value!r} is not a valid git ref")
        return value


class NetworkSpec(_Strict):
    """What the sandbox may reach: 'internet' (public addresses, never the host or a private
    network), 'none', or a list of domains (*. wildcards) and CIDRs. The workspace keeps it
    until a later ensure changes it."""

    egress: Literal["internet", "none"] | Annotated[list[str], Field(min_length=1, max_length=256)]

    @field_validator("egress", mode="before")
    @classmethod
    def _egress(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() not in ("internet", "none"):
            raise ValueError("must be 'internet', 'none' or a list of domains and CIDRs")
        return parse_egress(value)


class _WithFiles(_Strict):
    files: Files | None = None
    delete: list[SafePath] | None = None
    # The workspace manifest (manifest.py) these files were diffed against: the files left out
    # are asserted unchanged, and the action fails with manifest_stale if they are not.
    manifest_base: Annotated[int, Field(ge=0)] | None = None

    @field_validator("files", mode="before")
    @classmethod
    def _files(cls, value: object) -> object:
        return _normalise_files(value)

    @field_validator("delete")
    @classmethod
    def _delete(cls, value: list[str] | None) -> list[str] | None:
        return [check_path(p) for p in value] if value is not None else None


class EnsurePayload(_WithFiles):
    repo: RepoSpec | None = None
    install_command: Annotated[str, Field(max_length=8192)] | None = None
    dev_command: Annotated[str, Field(max_length=8192)] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    env: dict[str, str] | None = None
    sandbox_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    start_dev_server: bool = True
    network: NetworkSpec | None = None

    _env = field_validator("env")(_check_env)


class WritePayload(_WithFiles):
    files: Files


class ReadPayload(_Strict):
    paths: Annotated[list[SafePath], Field(min_length=1)]

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return [check_path(p) for p in value]


class CommandPayload(_Strict):
    cmd: Annotated[str, Field(min_length=1, max_length=131072)] | None = None
    argv: Annotated[list[str], Field(min_length=1)] | None = None
    cwd: Annotated[str, Field(max_length=4096)] | None = None
    env: dict[str, str] | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 300

    _env = field_validator("env")(_check_env)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        return check_path(value) if value not in (None, "", ".") else None

    @model_validator(mode="after")
    def _one_of(self) -> CommandPayload:
        if (self.cmd is None) == (self.argv is None):
            raise ValueError("give exactly one of cmd or argv")
        return self


class PreviewPayload(_Strict):
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class LogsPayload(_Strict):
    tail: Annotated[int, Field(ge=1, le=100_000)] = 200


class EmptyPayload(_Strict):
    pass


class RestorePayload(_Strict):
    snapshot_id: Annotated[str, Field(min_length=1, max_length=255)]


PAYLOAD_MODELS: dict[str, type[BaseModel]] = {
    "ensure": EnsurePayload,
    "write": WritePayload,
    "read": ReadPayload,
    "command": CommandPayload,
    "preview": PreviewPayload,
    "logs": LogsPayload,
    "sleep": EmptyPayload,
    "wake": EmptyPayload,
    "snapshot": EmptyPayload,
    "restore": RestorePayload,
    "destroy": EmptyPayload,
}


class Limits(BaseModel):
    """Size limits of CONTRACT section 3 (configurable through Settings)."""

    max_file_bytes: int = MAX_FILE_BYTES
    max_action_bytes: int = MAX_ACTION_BYTES
    max_files: int = MAX_FILES
    max_timeout_s: float = MAX_TIMEOUT_S


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "payload"


def validate_payload(
    kind: object, payload: dict[str, Any], limits: Limits | None = None
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
    _check_limits(parsed, limits or Limits())
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


def _check_limits(parsed: BaseModel, limits: Limits) -> None:
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
    if isinstance(parsed, CommandPayload) and parsed.timeout_s > limits.max_timeout_s:
        raise ValidationFailed(
            f"timeout_s: at most {limits.max_timeout_s:g} seconds", field="timeout_s"
        )


def payload_to_json(parsed: BaseModel) -> dict[str, Any]:
    """The canonical JSON form stored in Postgres (defaults left out, files as a list)."""
    return parsed.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
