"""An enqueued action as the asyncio client returns it: ``.id``, ``await .get()`` and
``await .wait()``, with the same outcome rules as the blocking ``ActionHandle``."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from qai_jobs.constants import ActionStatus
from qai_jobs.errors import ActionFailed

R = TypeVar("R")
AsyncEventFn = Callable[[dict[str, Any]], Awaitable[None] | None]
"""Called with each ``progress`` and ``output`` event while ``wait`` waits; it may be a
coroutine function (awaited before the next event is read) or a plain one."""


class AsyncWaiter(Protocol):
    async def get_action(self, action_id: str | uuid.UUID) -> dict[str, Any]: ...

    async def wait_for(
        self,
        action_id: str | uuid.UUID,
        timeout: float | None = None,
        on_event: AsyncEventFn | None = None,
    ) -> dict[str, Any]: ...


class AsyncActionHandle(Generic[R]):
    """An enqueued action; ``await wait()`` returns its result, typed by kind (``results``)."""

    def __init__(self, client: AsyncWaiter, action_id: str | uuid.UUID, project_id: str, kind: str):
        self.client = client
        self.id = str(action_id)
        self.project_id = project_id
        self.kind = kind

    def __repr__(self) -> str:
        return f"<AsyncActionHandle {self.kind} {self.id} project={self.project_id}>"

    async def get(self) -> dict[str, Any]:
        """The action as it is now (status, attempts, result, error, ...)."""
        return await self.client.get_action(self.id)

    async def wait(self, timeout: float | None = None, on_event: AsyncEventFn | None = None) -> R:
        """The result once the action succeeds; ActionFailed if it fails or is cancelled;
        TimeoutError after ``timeout`` seconds. ``on_event`` sees progress and live output."""
        action = await self.client.wait_for(self.id, timeout=timeout, on_event=on_event)
        if action["status"] == ActionStatus.SUCCEEDED:
            return cast(R, action["result"] or {})
        error = action["error"] or {"code": action["status"], "message": action["status"]}
        raise ActionFailed(self.id, error)
