"""Where a preview id leads: the workspace's state and upstream, as Postgres says, cached briefly.

Every request needs a route, so routes are cached for ``WORKSPACE_GATEWAY_ROUTE_SECONDS`` (a
second by default) and concurrent misses for one id share a single query: under load the
database sees about one lookup per active preview per second, not one per request. A request
that finds its upstream dead asks again with ``fresh=True``, so a sleep, a move or a destroy is
noticed at once rather than after the cache expires.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from qai_jobs.db import previews

# Enough for every live preview of a large fleet; unknown ids are cached too (a flood of
# made-up hosts must not become a flood of queries), and the oldest entries go first.
MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class Route:
    preview_id: str
    project_id: str
    status: str  # new | provisioning | ready | sleeping | error | destroyed
    upstream: str | None  # the provider's own preview URL
    dev_server_wanted: bool
    sleep_seq: int | None  # the sleep that put it to sleep: names the wake burst

    @property
    def proxiable(self) -> bool:
        return self.upstream is not None and self.status in ("ready", "error")


def lookup(engine: Engine, preview_id: str) -> Route | None:
    with engine.connect() as conn:
        row = conn.execute(previews.ROUTE, {"id": preview_id}).first()
    return None if row is None else _route(row)


def lookup_many(engine: Engine, preview_ids: list[str]) -> dict[str, Route]:
    """The routes of these preview ids (unknown ones are absent), in one query."""
    with engine.connect() as conn:
        rows = conn.execute(previews.ROUTES, {"ids": preview_ids}).all()
    return {row.preview_id: _route(row) for row in rows}


def _route(row: Any) -> Route:
    return Route(
        preview_id=row.preview_id,
        project_id=row.project_id,
        status=row.status,
        upstream=row.preview_url.rstrip("/") if row.preview_url else None,
        dev_server_wanted=bool(row.dev_server_wanted),
        sleep_seq=row.sleep_seq,
    )


class Routes:
    """The cache in front of :func:`lookup` (queries run on ``executor``: they block)."""

    def __init__(
        self,
        fetch: Callable[[str], Route | None],
        executor: Executor,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fetch = fetch
        self.executor = executor
        self.ttl = ttl
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, Route | None]] = OrderedDict()
        self.inflight: dict[str, asyncio.Future[Route | None]] = {}
        self.queries = 0

    async def get(self, preview_id: str, fresh: bool = False) -> Route | None:
        if not fresh:
            cached = self.entries.get(preview_id)
            if cached is not None and cached[0] > self.clock():
                return cached[1]
        pending = self.inflight.get(preview_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(preview_id))
            self.inflight[preview_id] = pending
        return await asyncio.shield(pending)

    async def _load(self, preview_id: str) -> Route | None:
        try:
            self.queries += 1
            loop = asyncio.get_running_loop()
            route = await loop.run_in_executor(self.executor, self.fetch, preview_id)
            self.entries[preview_id] = (self.clock() + self.ttl, route)
            self.entries.move_to_end(preview_id)
            while len(self.entries) > MAX_ENTRIES:
                self.entries.popitem(last=False)
            return route
        finally:
            del self.inflight[preview_id]
