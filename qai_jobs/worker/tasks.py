"""Thin Celery tasks: record what arrived, then let the drainer do the work in order.

``qai_jobs.<kind>`` is the public task any Celery producer may send: kwargs
``{"project_id", **payload}``, the task id is the action id. Our own producer records the row
before sending; a message from another language arrives without one and is recorded here, on
receipt.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, current_task, signals
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from qai_jobs.celery_app import app, current_settings
from qai_jobs.constants import (
    DELIVER_TASK,
    DRAIN_TASK,
    RECORDED_HEADER,
    TASK_PREFIX,
    ActionStatus,
    action_task_name,
)
from qai_jobs.db import enqueue, queries
from qai_jobs.db.outbox import record_events
from qai_jobs.db.session import db_retry, dispose_all, engine_for
from qai_jobs.errors import ErrorCode, QaiJobsError, ValidationFailed
from qai_jobs.events import error_event
from qai_jobs.logs import for_action
from qai_jobs.monitoring import WorkerEvents
from qai_jobs.notify import publish
from qai_jobs.notify import reset as reset_redis
from qai_jobs.schemas import KINDS, check_project_id
from qai_jobs.sealing import seal_payload
from qai_jobs.validation import PayloadLimits, payload_to_json, validate_payload
from qai_jobs.worker import fleet, sweeps
from qai_jobs.worker.drain import Dispatch, drain

log = logging.getLogger("qai_jobs.tasks")


def dispatch() -> Dispatch:
    # Both run after a commit: a broker error must not escape into the drain (the state is
    # already safe in Postgres, and recovery and the webhook sweep re-send what is lost).
    def kick(project_id: str, countdown: float) -> None:
        try:
            queue = fleet.queue_for(current_settings(), project_id)
            drain_task.apply_async(
                kwargs={"project_id": project_id}, countdown=countdown, queue=queue
            )
        except Exception as exc:
            log.warning(
                "[project_id=%s] could not re-send work: %s", project_id, type(exc).__name__
            )

    def deliver(event_ids: list[str]) -> None:
        try:
            for event_id in event_ids:
                app.send_task(DELIVER_TASK, kwargs={"event_id": event_id})
        except Exception as exc:
            log.warning("could not send webhook deliveries: %s", type(exc).__name__)

    def give_turn(project_id: str, turn: str) -> None:
        # The release recorded the turn; should this message be lost, the mark expires
        # (drain.turn_seconds) and the recovery sweep sends the work again.
        settings = current_settings()
        try:
            drain_task.apply_async(
                kwargs={"project_id": project_id, "turn": turn},
                queue=fleet.queue_for(settings, project_id),
            )
        except Exception as exc:
            log.warning(
                "[project_id=%s] could not queue its turn: %s", project_id, type(exc).__name__
            )

    def forward(project_id: str, host_id: str) -> None:
        try:
            queue = fleet.own_queue(current_settings(), host_id)
            drain_task.apply_async(kwargs={"project_id": project_id}, queue=queue)
        except Exception as exc:
            log.warning(
                "[project_id=%s] could not hand work to host %s: %s",
                project_id,
                host_id,
                type(exc).__name__,
            )

    # The worker's name as its own task events carry it (none outside a task: the watchdog).
    hostname = getattr(getattr(current_task, "request", None), "hostname", None)
    return Dispatch(
        kick=kick,
        deliver=deliver,
        give_turn=give_turn,
        forward=forward,
        monitor=WorkerEvents(app, hostname),
    )


@db_retry
def _record_foreign(
    action_id: uuid.UUID, kind: str, project_id: str, payload: dict[str, Any]
) -> None:
    """Record an action that another service sent straight to the broker."""
    settings = current_settings()
    engine = engine_for(settings.database_url)
    with engine.connect() as conn:
        if queries.action(conn, action_id) is not None:
            return
    error: dict[str, Any] | None = None
    stored: dict[str, Any] = {}
    try:
        stored = seal_payload(
            settings,
            payload_to_json(validate_payload(kind, payload, PayloadLimits.from_settings(settings))),
        )
    except ValidationFailed as exc:
        error = {"code": ErrorCode.INVALID_PAYLOAD, "message": exc.message, "retryable": False}
    event_ids: list[str] = []
    with engine.begin() as conn:
        got = enqueue.enqueue(
            conn,
            action_id=action_id,
            project_id=project_id,
            kind=kind,
            payload=stored,
            failed_error=error,
            hint=False,  # it has its message: this one
        )
        if error and got.created:  # a final failure, like any other: announce it
            event_ids = record_events(
                conn, settings, project_id, action_id, [error_event(error, kind, 0)]
            )
    if error and got.created:
        for_action(project_id, action_id).error("rejected %s: %s", kind, error["message"])
        publish(settings.redis_url, action_id, {"type": "done", "status": ActionStatus.FAILED})
        dispatch().deliver(event_ids)


def describe_kwargs(kwargs: Any) -> str:
    """A message's kwargs as monitoring may show them: ``env`` values never, files counted."""
    if not isinstance(kwargs, dict):
        return saferepr(kwargs)
    shown: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "env":
            shown[key] = (
                {name: "<redacted>" for name in value} if isinstance(value, dict) else "<redacted>"
            )
        elif key == "files" and isinstance(value, dict | list):
            shown[key] = f"<{len(value)} files>"
        else:
            shown[key] = value
    return saferepr(shown)


class ActionRequest(Request):
    """An action message as the worker's consumer receives it, in the broker's order.

    A foreign producer's message is recorded here, in the consumer (the worker's main
    process), before it goes to a pool process: messages then get their sequence numbers in
    the order this worker received them, not in the order pool processes happen to commit.
    Our own producer records before it sends and marks its messages, so they cost nothing here.

    It is also what the worker tells Flower, `celery inspect` and its log about a message: a
    foreign producer puts the whole payload in the kwargs, ``env`` included, and Celery repeats
    its kwargs repr in every task-received event; those secrets must not reach the monitoring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # decodes the body (or raises for a bad one)
        self._kwargsrepr = describe_kwargs(self.kwargs)
        if not self.request_dict.get(RECORDED_HEADER):
            self._record_on_receipt()

    def _record_on_receipt(self) -> None:
        kind = self.name.removeprefix(TASK_PREFIX)
        kwargs = dict(self.kwargs) if isinstance(self.kwargs, dict) else {}
        project_id = kwargs.pop("project_id", None)
        try:
            check_project_id(project_id)
            action_id = uuid.UUID(str(self.id))
            _record_foreign(action_id, kind, str(project_id), kwargs)
        except Exception as exc:  # the task records it (or drops it) in the pool instead
            log.warning("could not record a %s message on receipt: %s", kind, type(exc).__name__)

    def info(self, safe: bool = False) -> Any:
        # `celery inspect active|reserved|query_task` (and Flower's worker pages) ask for the
        # unsafe form, the raw kwargs: always give the redacted one.
        return super().info(safe=True)


def _make_action_task(kind: str) -> Task:  # type: ignore[type-arg]
    @app.task(name=action_task_name(kind), bind=True, Request=ActionRequest)
    def action_task(self: Task, /, project_id: str, **payload: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        try:
            check_project_id(project_id)
            action_id = uuid.UUID(str(self.request.id))
        except (QaiJobsError, ValueError):
            log.error("dropped a %s message with an invalid project_id or task id", kind)
            return {"error": "invalid project_id or task id"}
        if not getattr(self.request, RECORDED_HEADER, None):
            # Recorded on receipt already, unless Postgres failed there: make sure.
            _record_foreign(action_id, kind, project_id, payload)
        ran = drain(current_settings(), project_id, dispatch())
        return {"project_id": project_id, "ran": ran}

    return action_task


ACTION_TASKS = {kind: _make_action_task(kind) for kind in KINDS}


@app.task(name=DRAIN_TASK)
def drain_task(project_id: str, turn: str | None = None) -> dict[str, Any]:
    # ``turn``: this message is the project's fairness turn (drain.Dispatch.give_turn).
    ran = drain(current_settings(), project_id, dispatch(), turn)
    return {"project_id": project_id, "ran": ran}


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    dispose_all()
    reset_redis()


@signals.worker_ready.connect
def _start_watchdog(**_: Any) -> None:
    sweeps.start_watchdog(current_settings(), dispatch)
