"""Operations tasks: webhook delivery and the sweeps that beat sends.

Beat only sends messages; each sweep runs in whichever worker takes the message, under
:func:`sweeps.run_sweep`, which lets one run through per period however many beat processes
(or duplicated messages) there are.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from qai_jobs.celery_app import app, current_settings
from qai_jobs.constants import DELIVER_TASK, SWEEPS, sweep_task_name
from qai_jobs.db.session import db_retry, engine_for
from qai_jobs.worker import sweeps, webhooks
from qai_jobs.worker.tasks import dispatch

log = logging.getLogger("qai_jobs.tasks_ops")

SWEEP_TASKS = {name: sweep_task_name(name) for name in SWEEPS}


@app.task(name=DELIVER_TASK, ignore_result=True)
def deliver_task(event_id: str) -> dict[str, Any]:
    settings = current_settings()
    outcome = db_retry(webhooks.deliver)(settings, engine_for(settings.database_url), event_id)
    if outcome.retry_in is not None and outcome.retry_in <= webhooks.MAX_COUNTDOWN_SECONDS:
        # A lost countdown message is harmless: the webhooks sweep finds the due row.
        deliver_task.apply_async(kwargs={"event_id": event_id}, countdown=outcome.retry_in)
    return {"event_id": event_id, "status": outcome.status, "attempts": outcome.attempts}


def _send_deliveries(event_ids: list[str]) -> None:
    for event_id in event_ids:
        deliver_task.apply_async(kwargs={"event_id": event_id})


def _make_sweep_task(name: str) -> Any:
    @app.task(name=SWEEP_TASKS[name], ignore_result=True)
    def sweep_task() -> dict[str, Any]:
        return sweeps.run_sweep(current_settings(), name, lambda: _run(name))

    return sweep_task


def _run(name: str) -> dict[str, Any]:
    settings = current_settings()
    if name == "recover":
        return sweeps.recover(settings, dispatch())
    if name == "webhooks":
        return sweeps.webhooks(settings, _send_deliveries)
    if name == "idle":
        return sweeps.idle(settings)
    if name == "prune":
        return sweeps.prune(settings)
    return sweeps.orphans(settings)


SWEEP_TASK_OBJECTS = {name: _make_sweep_task(name) for name in SWEEPS}


@signals.worker_ready.connect
def _warn_unsigned(**_: Any) -> None:
    settings = current_settings()
    if settings.workspace_callback_url and settings.workspace_webhook_secret is None:
        log.warning(
            "WORKSPACE_CALLBACK_URL is set but WORKSPACE_WEBHOOK_SECRET is not: webhooks are "
            "recorded and held until a secret is configured (they are never sent unsigned)"
        )
