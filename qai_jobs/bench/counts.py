"""What a run costs, counted rather than timed: Postgres transactions and Redis commands.

Postgres: ``xact_commit`` and ``xact_rollback`` of the bench database in ``pg_stat_database``,
read through a connection to another database (the reading adds nothing to the count).
Backends report their counters about a second late at most, so a reading waits that long.
Redis: the sum of ``calls`` in ``INFO commandstats``. WAL syncs: ``pg_stat_wal`` (the server's,
so other databases' work on the server counts too): what the synchronous commits cost.
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
    wal_syncs: int = 0

    def minus(self, before: Counts) -> Counts:
        names = set(self.redis) | set(before.redis)
        return Counts(
            self.commits - before.commits,
            self.rollbacks - before.rollbacks,
            {n: self.redis.get(n, 0) - before.redis.get(n, 0) for n in names},
            self.wal_syncs - before.wal_syncs,
        )

    def per(self, n: int, own_commits: int = 0) -> dict[str, Any]:
        """Per action (or task); ``own_commits``: the bench's own polling, taken out."""
        top = sorted(self.redis.items(), key=lambda kv: -kv[1])[:8]
        return {
            "pg_commits": (self.commits - own_commits) / n,
            "pg_rollbacks": self.rollbacks / n,
            "pg_transactions": (self.commits - own_commits + self.rollbacks) / n,
            "redis_commands": sum(self.redis.values()) / n,
            "wal_syncs": self.wal_syncs / n,
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

    def read(self, *, end: bool, flush_s: float = 1.2) -> Counts:
        """Counters once Postgres' backends have reported theirs: a backend reports at most
        a second after its transaction ends (so the reading waits ``flush_s``). Redis is read
        at the edge of the window (before that wait at its end, after it at its start), so
        the idle workers' polling meanwhile is not counted."""
        redis_now = self._redis() if end else None
        time.sleep(flush_s)
        # A backend that found the shared statistics locked retries only after Postgres' idle
        # interval (10 s): read until two readings agree, so a busy host does not undercount.
        commits, rollbacks = benchcheck.xact_counts(self.database_url)
        deadline = time.monotonic() + 11.0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            again = benchcheck.xact_counts(self.database_url)
            if again == (commits, rollbacks):
                break
            commits, rollbacks = again
        redis_counts = redis_now if redis_now is not None else self._redis()
        return Counts(commits, rollbacks, redis_counts, benchcheck.wal_syncs(self.database_url))
