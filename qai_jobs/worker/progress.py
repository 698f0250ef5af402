"""What a running action tells its watchers: its stage (Postgres, Redis) and live output."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.config import Settings
from qai_jobs.db import ordering
from qai_jobs.notify import publish
from qai_jobs.providers.base import safe_text
from qai_jobs.runner.context import OutputFn, ProgressFn

STAGE_EVERY_SECONDS = 0.2  # at most this often a write of the same stage's counts


def progress_writer(
    settings: Settings,
    engine: Engine,
    lease: ordering.Lease,
    action_id: uuid.UUID,
    check_lease: Callable[[], None],
) -> ProgressFn:
    """Record the action's stage (throttled) so get_action and the CLI can show progress."""
    last = [0.0]
    recorded: list[dict[str, Any]] = [ordering.START_STAGE]  # start_next wrote it

    def progress(stage: str, done: int | None, total: int | None) -> None:
        check_lease()  # between steps: stop before doing more if the lease is gone
        now = time.monotonic()
        final = done is not None and done == total
        if now - last[0] < STAGE_EVERY_SECONDS and not final and done is not None:
            return
        last[0] = now
        value = {"stage": stage, "done": done, "total": total}
        if value != recorded[0]:
            try:
                with engine.begin() as conn:
                    ordering.record_stage(conn, lease, action_id, value)
            except sa.exc.SQLAlchemyError:
                return  # progress is advisory
            recorded[0] = value
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
