"""One coroutine method per action kind for the asyncio client: the twin of ``kinds``, each
``await``-ing the client's ``enqueue_payload`` and returning a handle typed by kind."""

from __future__ import annotations

from typing import Any, cast

from qai_jobs.client.aio.handle import AsyncActionHandle
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


class AsyncKindMethods:
    """``await ensure(...)``, ``await write(...)``, ... over the client's own
    ``enqueue_payload``. Every method takes ``idempotency_key=``."""

    async def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> AsyncActionHandle[Any]:
        raise NotImplementedError

    async def enqueue(
        self, project_id: str, kind: str, idempotency_key: str | None = None, **payload: Any
    ) -> AsyncActionHandle[Any]:
        """Validate and enqueue one action of ``kind``; nothing is enqueued if it is invalid."""
        return await self.enqueue_payload(project_id, kind, payload, idempotency_key)

    async def ensure(self, project_id: str, **payload: Any) -> AsyncActionHandle[EnsureResult]:
        handle = await self.enqueue(project_id, "ensure", **payload)
        return cast(AsyncActionHandle[EnsureResult], handle)

    async def write(
        self, project_id: str, files: Any, delete: list[str] | None = None, **kw: Any
    ) -> AsyncActionHandle[WriteResult]:
        handle = await self.enqueue(project_id, "write", files=files, delete=delete, **kw)
        return cast(AsyncActionHandle[WriteResult], handle)

    async def read(
        self, project_id: str, paths: list[str], **kw: Any
    ) -> AsyncActionHandle[ReadResult]:
        handle = await self.enqueue(project_id, "read", paths=paths, **kw)
        return cast(AsyncActionHandle[ReadResult], handle)

    async def command(
        self, project_id: str, cmd: str | None = None, **kw: Any
    ) -> AsyncActionHandle[CommandResult]:
        handle = await self.enqueue(project_id, "command", cmd=cmd, **kw)
        return cast(AsyncActionHandle[CommandResult], handle)

    async def preview(self, project_id: str, **kw: Any) -> AsyncActionHandle[PreviewResult]:
        handle = await self.enqueue(project_id, "preview", **kw)
        return cast(AsyncActionHandle[PreviewResult], handle)

    async def logs(self, project_id: str, **kw: Any) -> AsyncActionHandle[LogsResult]:
        return cast(AsyncActionHandle[LogsResult], await self.enqueue(project_id, "logs", **kw))

    async def sleep(self, project_id: str, **kw: Any) -> AsyncActionHandle[SleepResult]:
        return cast(AsyncActionHandle[SleepResult], await self.enqueue(project_id, "sleep", **kw))

    async def wake(self, project_id: str, **kw: Any) -> AsyncActionHandle[WakeResult]:
        return cast(AsyncActionHandle[WakeResult], await self.enqueue(project_id, "wake", **kw))

    async def snapshot(self, project_id: str, **kw: Any) -> AsyncActionHandle[SnapshotResult]:
        handle = await self.enqueue(project_id, "snapshot", **kw)
        return cast(AsyncActionHandle[SnapshotResult], handle)

    async def restore(
        self, project_id: str, snapshot_id: str, **kw: Any
    ) -> AsyncActionHandle[RestoreResult]:
        handle = await self.enqueue(project_id, "restore", snapshot_id=snapshot_id, **kw)
        return cast(AsyncActionHandle[RestoreResult], handle)

    async def destroy(self, project_id: str, **kw: Any) -> AsyncActionHandle[DestroyResult]:
        handle = await self.enqueue(project_id, "destroy", **kw)
        return cast(AsyncActionHandle[DestroyResult], handle)
