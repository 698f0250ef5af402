"""Bringing a preview back: a sleeping workspace is woken, a dead dev server restarted.

Both go through the ordinary pipeline (a ``wake`` or ``preview`` action, in the project's FIFO
order), never around it. A burst of requests shares one action: in this process through one
task per project, across gateway processes through the idempotency key, which names the sleep
that ended (``gateway-wake:<seq of that sleep>``) or, for a restart, a time window. The
enqueue itself re-checks, under the workspace row's lock, that the workspace is not destroyed
and no destroy is pending, so a request can never re-create a workspace.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from qai_jobs.client import WorkspaceClient
from qai_jobs.db import enqueue, previews
from qai_jobs.gateway.metrics import GatewayMetrics
from qai_jobs.gateway.routes import Route, Routes

log = logging.getLogger("qai_jobs.gateway")

# A restart key covers this long: one `preview` action per window for a dead dev server.
RESTART_WINDOW_SECONDS = 30
# A failed wake is retried by the next burst under a new key, at most this many times per sleep.
WAKE_TRIES = 3


@dataclass(frozen=True)
class Revived:
    route: Route | None  # the fresh route once the action finished (None: gone meanwhile)
    done: bool  # the action finished in time


class Reviver:
    def __init__(
        self,
        client: WorkspaceClient,
        waiter: Any,
        routes: Routes,
        executor: Executor,
        metrics: GatewayMetrics,
        wait_seconds: float,
    ):
        self.client = client
        self.waiter = waiter  # api.waiter.Waiter: waits on Redis, reads Postgres
        self.routes = routes
        self.executor = executor
        self.metrics = metrics
        self.wait_seconds = wait_seconds
        self.bursts: dict[str, asyncio.Task[Revived]] = {}

    async def revive(self, route: Route, kind: str, deadline: float) -> Revived:
        """Enqueue (or join) this burst's ``kind`` action and wait for it until ``deadline``
        (loop time); the fresh route afterwards."""
        task = self.bursts.get(route.project_id)
        if task is None:
            task = asyncio.ensure_future(self._burst(route, kind))
            self.bursts[route.project_id] = task
            task.add_done_callback(lambda _: self.bursts.pop(route.project_id, None))
        left = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, left))
        except TimeoutError:
            return Revived(route, done=False)

    async def _burst(self, route: Route, kind: str) -> Revived:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        action_id = await loop.run_in_executor(self.executor, self._enqueue, route, kind)
        if action_id is None:  # destroyed, or about to be: nothing is enqueued
            return Revived(await self.routes.get(route.preview_id, fresh=True), done=True)
        action = await self.waiter.wait(action_id, self.wait_seconds)
        done = action["status"] in ("succeeded", "failed", "cancelled")
        outcome = action["status"] if done else "timeout"
        self.metrics.wake(kind, outcome, time.perf_counter() - started)
        if action["status"] == "failed":
            error = action.get("error") or {}
            log.warning(
                "[project_id=%s] %s for the gateway failed: %s",
                route.project_id,
                kind,
                error.get("code"),
            )
        return Revived(await self.routes.get(route.preview_id, fresh=True), done=done)

    def _keys(self, route: Route, kind: str) -> list[str]:
        if kind == "wake":
            base = f"gateway-wake:{route.sleep_seq or 0}"
            return [base] + [f"{base}:retry{i}" for i in range(1, WAKE_TRIES)]
        return [f"gateway-preview:{int(time.time() // RESTART_WINDOW_SECONDS)}"]

    def _enqueue(self, route: Route, kind: str) -> uuid.UUID | None:
        """The burst's action: the first of its keys whose action has not failed."""
        for key in self._keys(route, kind):
            got = self._enqueue_unless_gone(route.project_id, kind, key)
            if got is None:
                return None
            with self.client.engine.connect() as conn:
                status = conn.execute(previews.ACTION_STATUS, {"id": got}).scalar()
            if status not in ("failed", "cancelled"):
                return got
        return got

    def _enqueue_unless_gone(self, project_id: str, kind: str, key: str) -> uuid.UUID | None:
        action_id = uuid.uuid4()
        with self.client.engine.begin() as conn:
            guard = conn.execute(previews.WAKE_GUARD, {"p": project_id}).first()
            if guard is None or guard.status == "destroyed" or guard.doomed:
                return None
            got = enqueue.enqueue(
                conn,
                action_id=action_id,
                project_id=project_id,
                kind=kind,
                payload={},
                idempotency_key=key,
            )
        if got.created:
            log.info("[project_id=%s] gateway enqueued %s (%s)", project_id, kind, key)
            # After commit, as every producer does; a lost message is re-sent by recovery.
            self.client._send(kind, project_id, got.id, messaged=got.messaged)
        return got.id
