"""Periodic jobs: recovery that does not depend on the broker, and (beat) the fleet sweeps.

Redis is a fast, forgetful transport: a message may be lost (Redis wiped) or stuck unacked with
a dead worker until the visibility timeout. Recovery finds such work from Postgres and sends a
fresh "project P has work" message; duplicates are harmless because only the lease holder runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
import sqlalchemy as sa

from . import ordering
from .config import Settings
from .db.session import engine_for
from .drain import Dispatch
from .notify import client as redis_client

log = logging.getLogger("qai_jobs.sweeps")


def stale_after(settings: Settings) -> float:
    """How long a queued action may wait for its message before it is sent again."""
    return max(settings.lease_seconds, 2.0)


def recover(settings: Settings, dispatch: Dispatch) -> dict[str, Any]:
    projects = ordering.stale_projects(engine_for(settings.database_url), stale_after(settings))
    for project_id in sorted(projects):
        dispatch.kick(project_id, 0)
    if projects:
        log.info("recovery re-sent work for %d project(s)", len(projects))
    return {"kicked": len(projects)}


def once_per_period(settings: Settings, name: str, period: float) -> bool:
    """True for exactly one caller per period across all processes (a Redis lock that is
    left to expire rather than released, so a period's work is never done twice)."""
    try:
        key = f"qai:sweep:{name}"
        return bool(redis_client(settings.redis_url).set(key, "1", nx=True, px=max(1, int(period * 1000 * 0.9))))
    except redis.RedisError:
        return False


def start_watchdog(settings: Settings, dispatch: Callable[[], Dispatch]) -> threading.Thread:
    """In every worker: run recovery every heartbeat, so a lost worker's projects move on
    within a few heartbeats even when no beat process runs."""
    period = settings.workspace_heartbeat_seconds

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(period):
            if not once_per_period(settings, "recover-watchdog", period):
                continue
            try:
                recover(settings, dispatch())
            except (sa.exc.SQLAlchemyError, redis.RedisError, OSError) as exc:
                log.warning("recovery watchdog: %s", type(exc).__name__)

    thread = threading.Thread(target=loop, name="qai-watchdog", daemon=True)
    thread.start()
    return thread
