"""Logging helpers: every line about an action names its project and action."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

logger = logging.getLogger("qai_jobs")


class ActionLog(logging.LoggerAdapter[logging.Logger]):
    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        prefix = f"[project_id={extra.get('project_id')} action_id={extra.get('action_id')}]"
        return f"{prefix} {msg}", kwargs


def for_action(project_id: str, action_id: object) -> ActionLog:
    return ActionLog(logger, {"project_id": project_id, "action_id": str(action_id)})


def for_project(project_id: str) -> ActionLog:
    return ActionLog(logger, {"project_id": project_id, "action_id": "-"})
