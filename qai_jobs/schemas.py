"""Pydantic models of every action's payload, validated at the edge before anything is written.

One payload model per kind (README "Actions"). Files arrive as a mapping or a list and are
normalised to a list of :class:`FileEntry` whose paths are safe relative POSIX paths.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from qai_jobs.egress import parse_egress
from qai_jobs.errors import ValidationFailed

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
# Kinds that may run twice without harm when a worker dies mid-action; a command may not.
IDEMPOTENT_KINDS = frozenset(KINDS) - {"command"}


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

    @model_validator(mode="before")
    @classmethod
    def _bytes(cls, value: object) -> object:
        """Python producers may give content as bytes: it travels as base64."""
        if isinstance(value, dict) and isinstance(value.get("content"), bytes | bytearray):
            if value.get("encoding", "base64") != "base64":
                raise ValueError("bytes content is sent as base64; drop the encoding")
            encoded = base64.b64encode(value["content"]).decode("ascii")
            return {**value, "content": encoded, "encoding": "base64"}
        return value

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


class WithFiles(_Strict):
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


class EnsurePayload(WithFiles):
    repo: RepoSpec | None = None
    install_command: Annotated[str, Field(max_length=8192)] | None = None
    dev_command: Annotated[str, Field(max_length=8192)] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    env: dict[str, str] | None = None
    sandbox_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    start_dev_server: bool = True
    network: NetworkSpec | None = None

    _env = field_validator("env")(_check_env)


class WritePayload(WithFiles):
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
            # Raised as a field's error: a plain ValueError here would name no field (the
            # whole payload), and a producer is told which field to fix.
            problem = PydanticCustomError("one_of", "give exactly one of cmd or argv")
            detail = InitErrorDetails(type=problem, loc=("cmd",), input=self.cmd)
            raise ValidationError.from_exception_data(type(self).__name__, [detail])
        return self


class PreviewPayload(_Strict):
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class LogsPayload(_Strict):
    tail: Annotated[int, Field(ge=1, le=100_000)] = 200


class EmptyPayload(_Strict):
    pass


class SleepPayload(_Strict):
    # Set by the idle sweep: sleep only if the workspace saw no activity after this one (an
    # action, a preview request) between the sweep's look and this sleep running.
    idle_since: AwareDatetime | None = None


class RestorePayload(_Strict):
    snapshot_id: Annotated[str, Field(min_length=1, max_length=255)]


PAYLOAD_MODELS: dict[str, type[BaseModel]] = {
    "ensure": EnsurePayload,
    "write": WritePayload,
    "read": ReadPayload,
    "command": CommandPayload,
    "preview": PreviewPayload,
    "logs": LogsPayload,
    "sleep": SleepPayload,
    "wake": EmptyPayload,
    "snapshot": EmptyPayload,
    "restore": RestorePayload,
    "destroy": EmptyPayload,
}
