"""A worker's part in the fleet: its host's own queue, its host's heartbeat row, and where a
project's work is sent (its host's queue when a live host holds it, else the shared one)."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from celery import signals

from qai_jobs.config import Settings
from qai_jobs.constants import host_queue
from qai_jobs.db import hosts
from qai_jobs.db.session import engine_for

log = logging.getLogger("qai_jobs.fleet")
_capacity = 1  # this worker's concurrency, reported with the heartbeat


def queue_for(settings: Settings, project_id: str) -> str:
    """The queue for the project's next "has work" message. Should Postgres not answer, the
    shared queue: whichever worker takes it hands it on to the holding host."""
    try:
        with engine_for(settings.database_url).connect() as conn:
            host = hosts.route(conn, project_id, settings.workspace_host_dead_seconds)
    except sa.exc.SQLAlchemyError:
        host = None
    return settings.workspace_queue if host is None else own_queue(settings, host)


def own_queue(settings: Settings, host_id: str | None = None) -> str:
    return host_queue(settings.workspace_queue, host_id or settings.workspace_host_id)


def report(settings: Settings, *, fresh: bool = False) -> None:
    """This host is alive (called every heartbeat by the worker's watchdog thread)."""
    try:
        with engine_for(settings.database_url).begin() as conn:
            hosts.report(
                conn,
                settings.workspace_host_id,
                settings.workspace_host_address,
                _capacity,
                fresh=fresh,
            )
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not report this host: %s", type(exc).__name__)


@signals.celeryd_after_setup.connect
def _consume_own_queue(sender: Any, instance: Any, **_: Any) -> None:
    """Every worker also consumes its host's queue: local workspaces held here are drained
    only by this host's workers."""
    global _capacity
    from qai_jobs.celery_app import current_settings

    settings = current_settings()
    _capacity = int(getattr(instance, "concurrency", 1) or 1)
    instance.app.amqp.queues.select_add(own_queue(settings))
