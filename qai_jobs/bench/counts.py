"""What a run costs, counted rather than timed: Postgres transactions and Redis commands.

Postgres: ``xact_commit`` and ``xact_rollback`` of the bench database in ``pg_stat_database``,
read through a connection to another database (the reading adds nothing to the count).
Backends report their counters when idle, at most about a second late, so a reading waits
until they stop moving. Redis: the sum of ``calls`` in ``INFO commandstats``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from qai_jobs.db import benchcheck


@dataclass(frozen=True)
class Counts:
    commits: int
    rollbacks: int
    redis: dict[str, int]

    def minus(self, before: Counts) -> Counts:
        names = set(self.redis) | set(before.redis)
        return Counts(
            self.commits - before.commits,
            self.rollbacks - before.rollbacks,
            {n: self.redis.get(n, 0) - before.redis.get(n, 0) for n in names},
        )

    def per(self, n: int, own_commits: int = 0) -> dict[str, Any]:
        """Per action (or task); ``own_commits``: the bench's own polling, taken out."""
        top = sorted(self.redis.items(), key=lambda kv: -kv[1])[:8]
        return {
            "pg_commits": (self.commits - own_commits) / n,
            "pg_rollbacks": self.rollbacks / n,
            "pg_transactions": (self.commits - own_commits + self.rollbacks) / n,
            "redis_commands": sum(self.redis.values()) / n,
            "redis_top": {name: calls / n for name, calls in top if calls > 0},
        }


class Counter:
    def __init__(self, database_url: str, redis_url: str):
        self.database_url = database_url
        self.redis = redis.Redis.from_url(redis_url)

    def _redis(self) -> dict[str, int]:
        stats = dict(self.redis.info("commandstats"))
        out: dict[str, int] = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name in ("info", "config|resetstat"):
                continue  # the bench's own readings
            out[name] = int(value["calls"])
        return out

    def read(self, *, end: bool, settle_s: float = 1.2, timeout_s: float = 15.0) -> Counts:
        """Counters once Postgres' backends have reported theirs (stable for ``settle_s``).
        Redis is read at the edge of the window (before waiting at its end, after at its
        start), so the idle workers' polling while Postgres settles is not counted."""
        redis_now = self._redis() if end else None
        deadline = time.monotonic() + timeout_s
        last = benchcheck.xact_counts(self.database_url)
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = benchcheck.xact_counts(self.database_url)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= settle_s:
                break
        return Counts(last[0], last[1], redis_now if redis_now is not None else self._redis())
