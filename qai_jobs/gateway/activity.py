"""Gateway traffic counts as activity, written at most once per workspace per interval.

A request only marks its project in memory; a background flush writes every marked project's
``last_activity_at`` in one UPDATE each interval, so a busy preview costs the database one row
write every few seconds however many requests it serves, and idle sleep sees it as in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.db import previews

log = logging.getLogger("qai_jobs.gateway")


class Activity:
    def __init__(
        self,
        engine: Engine,
        executor: Executor,
        interval: float,
        on_write: Callable[[], None] = lambda: None,
    ):
        self.engine = engine
        self.on_write = on_write
        self.executor = executor
        self.interval = interval
        self.marked: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def touch(self, project_id: str) -> None:
        self.marked.add(project_id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        if not self.marked:
            return
        ids, self.marked = sorted(self.marked), set()
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self._write, ids)
            self.on_write()
        except sa.exc.SQLAlchemyError as exc:
            # Activity is advisory: keep the marks for the next flush rather than fail traffic.
            self.marked.update(ids)
            log.warning("could not record preview activity: %s", type(exc).__name__)

    def _write(self, ids: list[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(previews.TOUCH, {"ids": ids})
