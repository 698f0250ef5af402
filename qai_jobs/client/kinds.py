"""One method per action kind, shared by the clients: each is ``enqueue`` with a typed result."""

from __future__ import annotations

from typing import Any, cast

from qai_jobs.client.handle import ActionHandle
from qai_jobs.results import (
    CommandResult,
    DestroyResult,
    EnsureResult,
    LogsResult,
    PreviewResult,
    ReadResult,
    RestoreResult,
    SleepResult,
    SnapshotResult,
    WakeResult,
    WriteResult,
)


class KindMethods:
    """``ensure``, ``write``, ... over the client's own ``enqueue_payload``. Every method takes
    ``idempotency_key=`` (same key, same project: the same action comes back)."""

    def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> ActionHandle[Any]:
        raise NotImplementedError

    def enqueue(
        self, project_id: str, kind: str, idempotency_key: str | None = None, **payload: Any
    ) -> ActionHandle[Any]:
        """Validate and enqueue one action of ``kind``; nothing is enqueued if it is invalid."""
        return self.enqueue_payload(project_id, kind, payload, idempotency_key)

    def ensure(self, project_id: str, **payload: Any) -> ActionHandle[EnsureResult]:
        return cast(ActionHandle[EnsureResult], self.enqueue(project_id, "ensure", **payload))

    def write(
        self, project_id: str, files: Any, delete: list[str] | None = None, **kw: Any
    ) -> ActionHandle[WriteResult]:
        handle = self.enqueue(project_id, "write", files=files, delete=delete, **kw)
        return cast(ActionHandle[WriteResult], handle)

    def read(self, project_id: str, paths: list[str], **kw: Any) -> ActionHandle[ReadResult]:
        return cast(ActionHandle[ReadResult], self.enqueue(project_id, "read", paths=paths, **kw))

    def command(
        self, project_id: str, cmd: str | None = None, **kw: Any
    ) -> ActionHandle[CommandResult]:
        return cast(ActionHandle[CommandResult], self.enqueue(project_id, "command", cmd=cmd, **kw))

    def preview(self, project_id: str, **kw: Any) -> ActionHandle[PreviewResult]:
        return cast(ActionHandle[PreviewResult], self.enqueue(project_id, "preview", **kw))

    def logs(self, project_id: str, **kw: Any) -> ActionHandle[LogsResult]:
        return cast(ActionHandle[LogsResult], self.enqueue(project_id, "logs", **kw))

    def sleep(self, project_id: str, **kw: Any) -> ActionHandle[SleepResult]:
        return cast(ActionHandle[SleepResult], self.enqueue(project_id, "sleep", **kw))

    def wake(self, project_id: str, **kw: Any) -> ActionHandle[WakeResult]:
        return cast(ActionHandle[WakeResult], self.enqueue(project_id, "wake", **kw))

    def snapshot(self, project_id: str, **kw: Any) -> ActionHandle[SnapshotResult]:
        return cast(ActionHandle[SnapshotResult], self.enqueue(project_id, "snapshot", **kw))

    def restore(self, project_id: str, snapshot_id: str, **kw: Any) -> ActionHandle[RestoreResult]:
        handle = self.enqueue(project_id, "restore", snapshot_id=snapshot_id, **kw)
        return cast(ActionHandle[RestoreResult], handle)

    def destroy(self, project_id: str, **kw: Any) -> ActionHandle[DestroyResult]:
        return cast(ActionHandle[DestroyResult], self.enqueue(project_id, "destroy", **kw))
