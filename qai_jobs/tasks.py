"""Thin Celery tasks: record what arrived, then let the drainer do the work in order.

``qai_jobs.<kind>`` is the public task of CONTRACT 6: kwargs ``{"project_id", **payload}``,
the task id is the action id. Our own producer records the row before sending; a message from
another language arrives without one and is recorded here, on receipt.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, signals

from . import ordering, sweeps
from .celery_app import app, current_settings
from .db.session import db_retry, dispose_all, engine_for
from .drain import Dispatch, drain
from .errors import QaiJobsError, ValidationFailed
from .logs import for_action
from .notify import publish
from .notify import reset as reset_redis
from .schemas import KINDS, check_project_id, payload_to_json, validate_payload
from .sealing import seal_payload
from .webhooks import record_events

log = logging.getLogger("qai_jobs.tasks")


def dispatch() -> Dispatch:
    # Both run after a commit: a broker error must not escape into the drain (the state is
    # already safe in Postgres, and recovery and the webhook sweep re-send what is lost).
    def kick(project_id: str, countdown: float) -> None:
        try:
            drain_task.apply_async(kwargs={"project_id": project_id}, countdown=countdown)
        except Exception as exc:
            log.warning(
                "[project_id=%s] could not re-send work: %s", project_id, type(exc).__name__
            )

    def deliver(event_ids: list[str]) -> None:
        try:
            for event_id in event_ids:
                app.send_task("qai_jobs.webhooks.deliver", kwargs={"event_id": event_id})
        except Exception as exc:
            log.warning("could not send webhook deliveries: %s", type(exc).__name__)

    return Dispatch(kick=kick, deliver=deliver)


@db_retry
def _record_foreign(
    action_id: uuid.UUID, kind: str, project_id: str, payload: dict[str, Any]
) -> None:
    """Record an action that another service sent straight to the broker."""
    settings = current_settings()
    engine = engine_for(settings.database_url)
    with engine.connect() as conn:
        from sqlalchemy import text

        if conn.execute(text("SELECT 1 FROM actions WHERE id = :id"), {"id": action_id}).first():
            return
    error: dict[str, Any] | None = None
    stored: dict[str, Any] = {}
    try:
        stored = seal_payload(settings, payload_to_json(validate_payload(kind, payload)))
    except ValidationFailed as exc:
        error = {"code": "invalid_payload", "message": exc.message, "retryable": False}
    event_ids: list[str] = []
    with engine.begin() as conn:
        got = ordering.enqueue(
            conn,
            action_id=action_id,
            project_id=project_id,
            kind=kind,
            payload=stored,
            failed_error=error,
        )
        if error and got.created:  # a final failure, like any other: announce it
            event = {"error": error, "kind": kind, "attempts": 0}
            event_ids = record_events(
                conn, settings, project_id, action_id, [("workspace.error", event)]
            )
    if error and got.created:
        for_action(project_id, action_id).error("rejected %s: %s", kind, error["message"])
        publish(settings.redis_url, action_id, {"type": "done", "status": "failed"})
        dispatch().deliver(event_ids)


def _make_action_task(kind: str) -> Task:  # type: ignore[type-arg]
    @app.task(name=f"qai_jobs.{kind}", bind=True)
    def action_task(self: Task, /, project_id: str, **payload: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        try:
            check_project_id(project_id)
            action_id = uuid.UUID(str(self.request.id))
        except (QaiJobsError, ValueError):
            log.error("dropped a %s message with an invalid project_id or task id", kind)
            return {"error": "invalid project_id or task id"}
        # Ours are recorded before they are sent; another producer's are recorded here.
        _record_foreign(action_id, kind, project_id, payload)
        ran = drain(current_settings(), project_id, dispatch())
        return {"project_id": project_id, "ran": ran}

    return action_task


ACTION_TASKS = {kind: _make_action_task(kind) for kind in KINDS}


@app.task(name="qai_jobs.drain")
def drain_task(project_id: str) -> dict[str, Any]:
    ran = drain(current_settings(), project_id, dispatch())
    return {"project_id": project_id, "ran": ran}


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    dispose_all()
    reset_redis()


@signals.worker_ready.connect
def _start_watchdog(**_: Any) -> None:
    sweeps.start_watchdog(current_settings(), dispatch)
