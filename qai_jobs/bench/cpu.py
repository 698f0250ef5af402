"""What a run costs in CPU time, by process role, read from ``/proc`` around the timed window.

On a machine whose CPUs the run saturates, throughput is CPU time per action turned upside
down: the ratio to plain Celery says little about where the difference goes, this does. Each
role's processes are found when the window opens and closes: the worker's process tree, the
Postgres server's processes, the Redis servers (by the pid they report),
and the bench's own process (the producer thread, and on our side its completion polling).
Linux only; where ``/proc`` or a server's processes are out of reach (Postgres on another
host) the role is left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks) of ``pid``, None if it is gone: its own user and system time and
    that of the children it reaped (a Postgres backend's, a worker's finished helpers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), sum(int(v) for v in fields[11:15])


def _named(pid: int, command: str) -> bool:
    """Whether ``pid`` here is ``command``: a server in a container reports its own pids,
    which on this host are other processes (pid 1 is init), and are not counted."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == command
    except OSError:
        return False


def tree(root: int) -> list[int]:
    """``root`` and its descendants (a worker and its pool processes)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            parents.setdefault(st[0], []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def postgres_server(database_url: str) -> Callable[[], list[int]]:
    """Every process of the Postgres server (when it runs here): the postmaster's tree, so
    the WAL writer, checkpointer and autovacuum count beside the backends."""
    url = sa.engine.make_url(database_url)
    admin = sa.create_engine(url.set(database="postgres"), poolclass=sa.pool.NullPool)

    def pids() -> list[int]:
        with admin.connect() as conn:  # its backend is alive while this block runs
            backend = int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
            st = _stat(backend)
            if st is None or not _named(backend, "postgres") or not _named(st[0], "postgres"):
                return []
        return tree(st[0])

    return pids


def redis_server(url: str) -> Callable[[], list[int]]:
    client = redis.Redis.from_url(url)

    def pids() -> list[int]:
        pid = int(client.info("server")["process_id"])
        return [pid] if _named(pid, "redis-server") else []

    return pids


@dataclass
class CpuMeter:
    """CPU seconds per role between :meth:`start` and :meth:`stop`."""

    roles: dict[str, Callable[[], list[int]]]
    _before: dict[str, dict[int, int]] = field(default_factory=dict)

    def _read(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for role, pids in self.roles.items():
            try:
                found = pids()
            except (OSError, redis.RedisError, sa.exc.SQLAlchemyError):
                found = []  # a role out of reach is left out, not guessed
            ticks = {pid: st[1] for pid in found if (st := _stat(pid)) is not None}
            if ticks:
                out[role] = ticks
        return out

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        """Seconds of CPU per role; a process that appeared meanwhile counts from zero, one
        that exited meanwhile is lost (the roles' processes live through a run)."""
        after = self._read()
        spent: dict[str, float] = {}
        for role, ticks in after.items():
            if role not in self._before:
                continue  # not read at the start: its processes' whole past would count
            before = self._before[role]
            spent[role] = sum(t - before.get(pid, 0) for pid, t in ticks.items()) / _TICK
        return spent


def per_action(spent: dict[str, float], n: int) -> dict[str, float]:
    """Milliseconds of CPU per action (or task) by role, and their total."""
    out = {role: seconds * 1000 / n for role, seconds in spent.items()}
    out["total"] = sum(out.values())
    return out
