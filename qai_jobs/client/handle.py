"""An enqueued action, as every client returns it: ``.id``, ``.get()`` and ``.wait()``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from qai_jobs.constants import ActionStatus
from qai_jobs.errors import ActionFailed

R = TypeVar("R")
EventFn = Callable[[dict[str, Any]], None]
"""Called with each ``progress`` and ``output`` event while ``wait`` waits."""


class Waiter(Protocol):
    def get_action(self, action_id: str | uuid.UUID) -> dict[str, Any]: ...

    def wait_for(
        self,
        action_id: str | uuid.UUID,
        timeout: float | None = None,
        on_event: EventFn | None = None,
    ) -> dict[str, Any]: ...


class ActionHandle(Generic[R]):
    """An enqueued action; ``wait`` returns its result, typed by kind (``results``)."""

    def __init__(self, client: Waiter, action_id: str | uuid.UUID, project_id: str, kind: str):
        self.client = client
        self.id = str(action_id)
        self.project_id = project_id
        self.kind = kind

    def __repr__(self) -> str:
        return f"<ActionHandle {self.kind} {self.id} project={self.project_id}>"

    def get(self) -> dict[str, Any]:
        """The action as it is now (status, attempts, result, error, ...)."""
        return self.client.get_action(self.id)

    def wait(self, timeout: float | None = None, on_event: EventFn | None = None) -> R:
        """The result once the action succeeds; ActionFailed if it fails or is cancelled;
        TimeoutError after ``timeout`` seconds. ``on_event`` sees progress and live output."""
        action = self.client.wait_for(self.id, timeout=timeout, on_event=on_event)
        if action["status"] == ActionStatus.SUCCEEDED:
            return cast(R, action["result"] or {})
        error = action["error"] or {"code": action["status"], "message": action["status"]}
        raise ActionFailed(self.id, error)
