"""Webhook events an action decides (docs/operations.md): their types and their data.

The runner and the worker build them; the outbox (``db.outbox``) writes them with the action's
final status, and delivery sends them afterwards.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class EventType(enum.StrEnum):
    READY = "workspace.ready"
    ERROR = "workspace.error"
    SLEEPING = "workspace.sleeping"
    MOVED = "workspace.moved"
    DESTROYED = "workspace.destroyed"


@dataclass(frozen=True)
class Event:
    type: EventType
    data: dict[str, Any] = field(default_factory=dict)


def error_event(error: dict[str, Any], kind: str, attempts: int) -> Event:
    """The ``workspace.error`` event of an action's final failure."""
    return Event(EventType.ERROR, {"error": error, "kind": kind, "attempts": attempts})
