"""What a running action tells its watchers: its stage (Postgres, Redis) and live output."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from qai_jobs.config import Settings
from qai_jobs.notify import publish
from qai_jobs.providers.base import safe_text
from qai_jobs.runner.context import OutputFn, ProgressFn

STAGE_EVERY_SECONDS = 0.2  # at most this often a new count within one stage


def progress_writer(
    settings: Settings,
    action_id: uuid.UUID,
    note_stage: Callable[[dict[str, Any]], None],
    check_lease: Callable[[], None],
) -> ProgressFn:
    """Publish the action's stage to its watchers at once, and hand it to the heartbeat, which
    records it in Postgres with its next renewal: a quick action costs no transaction for its
    stages, a long one shows its stage within a heartbeat (get_action, the CLI)."""
    last = [0.0]
    published: list[dict[str, Any] | None] = [None]

    def progress(stage: str, done: int | None, total: int | None) -> None:
        check_lease()  # between steps: stop before doing more if the lease is gone
        now = time.monotonic()
        final = done is not None and done == total
        if now - last[0] < STAGE_EVERY_SECONDS and not final and done is not None:
            return
        last[0] = now
        value = {"stage": stage, "done": done, "total": total}
        if value == published[0]:
            return
        published[0] = value
        note_stage(value)
        publish(settings.redis_url, action_id, {"type": "progress", **value})

    return progress


def output_publisher(settings: Settings, action_id: uuid.UUID) -> OutputFn:
    """Live output; each chunk carries its offset so a late subscriber knows it missed some."""
    offsets: dict[str, int] = {}

    def output(stream: str, chunk: bytes) -> None:
        text = safe_text(chunk)
        offset = offsets.get(stream, 0)
        offsets[stream] = offset + len(text)
        publish(
            settings.redis_url,
            action_id,
            {"type": "output", "stream": stream, "offset": offset, "data": text},
        )

    return output
