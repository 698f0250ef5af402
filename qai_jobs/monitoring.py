"""Task events for an action that had no Celery message of its own, so Flower still lists it.

An action enqueued while its project's message is on its way sends none (db/enqueue.py): the
drain that message starts runs it. Celery would have told monitoring of it in events
(``task-sent`` by the producer, ``task-received``, ``task-started`` and
``task-succeeded``/``task-failed`` by the worker, each carrying the task id); these send the
same events, with the action id as the task id and the kwargs our own messages carry, so Flower
and ``celery events`` show every action as they show a task: one publish each, where a message
costs a dozen Redis commands and a pool dispatch.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.utils.saferepr import saferepr

from qai_jobs.constants import action_task_name

log = logging.getLogger(__name__)


def _kwargs(project_id: str) -> str:
    return saferepr({"project_id": project_id})


def sent(app: Any, connection: Any, kind: str, project_id: str, action_id: uuid.UUID) -> None:
    """``task-sent`` from the producer, on its own broker connection."""
    with app.events.Dispatcher(connection, enabled=True) as dispatcher:
        dispatcher.send(
            "task-sent",
            uuid=str(action_id),
            root_id=str(action_id),
            parent_id=None,
            name=action_task_name(kind),
            args="()",
            kwargs=_kwargs(project_id),
            retries=0,
            eta=None,
            expires=None,
            queue=app.conf.task_default_queue,
            exchange="",
            routing_key=app.conf.task_default_queue,
        )


class WorkerEvents:
    """The worker's side, sent from the drain's pool process under the worker's hostname."""

    def __init__(self, app: Any, hostname: str | None):
        self.app = app
        self.hostname = hostname

    def _send(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                for event_type, fields in events:
                    dispatcher.send(event_type, **fields)
        except Exception as exc:  # monitoring only: never fail the drain over it
            log.warning("could not send task events: %s", type(exc).__name__)

    def started(self, kind: str, project_id: str, action_id: uuid.UUID, attempts: int) -> None:
        task = str(action_id)
        self._send(
            [
                (
                    "task-received",
                    {
                        "uuid": task,
                        "name": action_task_name(kind),
                        "args": "()",
                        "kwargs": _kwargs(project_id),
                        "root_id": task,
                        "parent_id": None,
                        "retries": max(0, attempts - 1),
                        "eta": None,
                        "expires": None,
                    },
                ),
                ("task-started", {"uuid": task}),  # the dispatcher adds the pid
            ]
        )

    def finished(self, action_id: uuid.UUID, status: str, runtime: float) -> None:
        """``status``: the action's verdict (succeeded, failed, retry)."""
        task = str(action_id)
        if status == "succeeded":
            fields = {"uuid": task, "result": "None", "runtime": runtime}
            self._send([("task-succeeded", fields)])
        elif status == "failed":
            self._send([("task-failed", {"uuid": task, "exception": "action failed"})])
        else:
            self._send([("task-retried", {"uuid": task, "exception": "retrying"})])
