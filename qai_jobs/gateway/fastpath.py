"""Keeping HAProxy's route map true, and reading back what it served.

The Python side offers a host to the map after it has proxied a request there itself, so only
routes it has checked get the fast path. Every ``WORKSPACE_GATEWAY_ROUTE_SECONDS`` the mapped
routes are re-read from Postgres in one query: a workspace that went to sleep, was destroyed or
moved leaves (or changes) the map at once. Every ``WORKSPACE_GATEWAY_ACTIVITY_SECONDS`` the
fast path's per-host request counters (a stick table) and HAProxy's response counters are read:
a host whose count moved is activity for its project, one that stayed idle long enough leaves
the map (the next request re-offers it), and the counters feed ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from qai_jobs.gateway.haproxy import ACTIVITY_TABLE, FAST_BACKEND, MAP_FILE, RuntimeAPI
from qai_jobs.gateway.routes import Route

log = logging.getLogger("qai_jobs.gateway")

# A mapped host with no request for this long leaves the map (it costs a row in every re-read).
IDLE_SECONDS = 120
_ENTRY = re.compile(r"key=(\S+) .*http_req_cnt=(\d+)")
_HOST = re.compile(r"^[a-z0-9.:\[\]-]+$")
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")


@dataclass
class _Entry:
    preview_id: str
    project_id: str
    target: str  # ip:port
    count: int = 0
    seen: float = 0.0


def fast_target(route: Route) -> str | None:
    """``ip:port`` of a plain-HTTP upstream at an IP address (what HAProxy can dial without a
    resolver or TLS); None for anything else, which stays on the Python side."""
    if not route.proxiable or route.upstream is None:
        return None
    parts = urlsplit(route.upstream)
    if parts.scheme != "http" or parts.hostname is None or parts.path not in ("", "/"):
        return None
    try:
        address = ipaddress.IPv4Address(parts.hostname)
        port = parts.port or 80
    except ValueError:
        return None
    return f"{address}:{port}"


class FastPath:
    def __init__(
        self,
        api: RuntimeAPI,
        fetch: Callable[[list[str]], dict[str, Route]],
        executor: Executor,
        touch: Callable[[str], None],
        route_seconds: float,
        activity_seconds: float,
        map_path: str = MAP_FILE,
    ):
        self.api = api
        self.fetch = fetch
        self.executor = executor
        self.touch = touch
        self.route_seconds = route_seconds
        self.activity_seconds = activity_seconds
        self.map_path = map_path
        self.entries: dict[str, _Entry] = {}
        self.counters: dict[str, float] = {}  # HAProxy's fast-path totals, for /metrics
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Future[object]] = set()

    # -- the map -----------------------------------------------------------------------------
    def mapped(self, host: str) -> bool:
        return host in self.entries

    def offer(self, host: str, route: Route) -> None:
        """After the Python side served ``host`` from ``route``: give it the fast path."""
        target = fast_target(route)
        entry = self.entries.get(host)
        if target is None or not _HOST.match(host) or (entry and entry.target == target):
            return
        self.entries[host] = _Entry(route.preview_id, route.project_id, target, seen=time.time())
        self._spawn(self._set(host, target, replace=entry is not None))

    def evict(self, host: str) -> None:
        if self.entries.pop(host, None) is not None:
            self._spawn(self._command(f"del map {self.map_path} {host}"))

    def _spawn(self, job: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(job)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _set(self, host: str, target: str, replace: bool) -> None:
        verb = "set" if replace else "add"
        await self._command(f"{verb} map {self.map_path} {host} {target}")

    async def _command(self, line: str) -> str:
        async with self._lock:  # in order: an add, then its del
            try:
                return await self.api.command(line)
            except OSError as exc:
                log.warning("HAProxy runtime API: %s", type(exc).__name__)
                return ""

    # -- background --------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self.route_seconds, self.revalidate)),
            loop.create_task(self._every(self.activity_seconds, self.read_counters)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.read_counters()  # the last activity

    @staticmethod
    async def _every(seconds: float, job: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()  # type: ignore[misc]
            except Exception as exc:  # a bad round must not end the loop
                log.warning("gateway fast path: %s: %s", type(exc).__name__, exc)

    async def revalidate(self) -> None:
        ids = sorted({e.preview_id for e in self.entries.values()})
        if not ids:
            return
        loop = asyncio.get_running_loop()
        routes = await loop.run_in_executor(self.executor, self.fetch, ids)
        for host, entry in list(self.entries.items()):
            route = routes.get(entry.preview_id)
            target = fast_target(route) if route is not None else None
            if target is None:
                self.evict(host)
            elif target != entry.target:
                entry.target = target
                await self._set(host, target, replace=True)

    async def read_counters(self) -> None:
        now = time.time()
        table = await self._command(f"show table {ACTIVITY_TABLE}")
        counts = {m.group(1): int(m.group(2)) for m in _ENTRY.finditer(table)}
        for host, entry in list(self.entries.items()):
            count = counts.get(host)
            if count is not None and count != entry.count:
                entry.count, entry.seen = count, now
                self.touch(entry.project_id)
            elif now - entry.seen > IDLE_SECONDS:
                self.evict(host)
        self.counters = _fast_totals(await self._command("show stat"))


def _fast_totals(stat_csv: str) -> dict[str, float]:
    """The fast backend's response counts by class and its upstream failures."""
    rows = csv.DictReader(io.StringIO(stat_csv.lstrip("# ")))
    for row in rows:
        if row.get("pxname") == FAST_BACKEND and row.get("svname") == "BACKEND":
            out = {c: float(row.get(f"hrsp_{c}") or 0) for c in _STATUS_CLASSES}
            out["connect_errors"] = float(row.get("econ") or 0)
            out["response_errors"] = float(row.get("eresp") or 0)
            out["redispatched"] = float(row.get("wredis") or 0)
            return out
    return {}
