"""The result of each action kind, as ``wait()`` returns it and the API sends it.

``TypedDict`` rather than classes: results travel as JSON (Postgres, HTTP, webhooks), and a
typed dict lets an editor and mypy know ``result["preview_url"]`` without any conversion.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


class EnsureResult(TypedDict):
    workspace_id: str
    sandbox_id: str
    provider: str
    preview_url: str | None
    created: bool
    files_written: int
    files_unchanged: int
    installed: bool


class WriteResult(TypedDict):
    files_written: int
    files_unchanged: int
    files_deleted: int


class ReadFile(TypedDict):
    path: str
    content: str
    encoding: Literal["utf-8", "base64"]
    size: int


class ReadResult(TypedDict):
    files: list[ReadFile]
    missing: list[str]


class CommandResult(TypedDict):
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool
    truncated: bool


class PreviewResult(TypedDict):
    preview_url: str | None
    healthy: bool


class LogsResult(TypedDict):
    text: str


class SleepResult(TypedDict):
    snapshot_id: str | None
    # An idle sweep's sleep that found the workspace active since, or with nothing to put to
    # sleep: it did nothing.
    skipped: NotRequired[bool]


class WakeResult(TypedDict):
    preview_url: str | None


class SnapshotResult(TypedDict):
    snapshot_id: str


class RestoreResult(TypedDict):
    preview_url: str | None


class DestroyResult(TypedDict):
    pass


ActionResult = (
    EnsureResult
    | WriteResult
    | ReadResult
    | CommandResult
    | PreviewResult
    | LogsResult
    | SleepResult
    | WakeResult
    | SnapshotResult
    | RestoreResult
    | DestroyResult
)
