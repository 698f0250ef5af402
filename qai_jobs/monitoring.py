"""Task events for an action that had no Celery message of its own, so Flower still lists it.

An action enqueued while its project's message is on its way sends none (db/enqueue.py): the
drain that message starts runs it. Celery would have told monitoring of it in events
(``task-sent`` by the producer, ``task-received``, ``task-started`` and
``task-succeeded``/``task-failed`` by the worker, each carrying the task id); these send the
same events, with the action id as the task id and the kwargs our own messages carry, so Flower
and ``celery events`` show every action as they show a task: the events of a drain's step go
out as one publish, where a message costs a dozen Redis commands and a pool dispatch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from typing import Any

from celery.utils.saferepr import saferepr

from qai_jobs.constants import action_task_name

log = logging.getLogger(__name__)


def _kwargs(project_id: str) -> str:
    return saferepr({"project_id": project_id})


def sent(app: Any, connection: Any, actions: list[tuple[str, str, uuid.UUID]]) -> None:
    """``task-sent`` from the producer for each (kind, project_id, action_id), on its own broker
    connection, as one message."""
    dispatcher = app.events.Dispatcher(connection, enabled=True, **_BUFFERED)
    for kind, project_id, action_id in actions:
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
    dispatcher.flush(errors=False)


# Task events held in memory until flush() sends them as one ``task.multi`` list, the way
# Celery's own worker sends its task events; never kept past a failed publish (the caller goes
# on without monitoring rather than grow a buffer while Redis is away).
_BUFFERED: dict[str, Any] = {
    "buffer_group": {"task"},
    "buffer_limit": 1_000_000,
    "buffer_while_offline": False,
}

# One buffering dispatcher per drain thread (a prefork child has one; the threads pool many)
# and worker name, on its own broker connection: opening one per step (a producer from the
# pool, a pipeline) cost more than the publish. Keyed by pid too: a forked child opens its
# own, never its parent's socket.
_dispatchers: dict[tuple[int, int, str | None], Any] = {}


def _key(hostname: str | None) -> tuple[int, int, str | None]:
    return os.getpid(), threading.get_ident(), hostname


def _dispatcher(app: Any, hostname: str | None) -> Any:
    key = _key(hostname)
    dispatcher = _dispatchers.get(key)
    if dispatcher is None:
        dispatcher = app.events.Dispatcher(
            app.connection_for_write(),
            hostname=hostname,
            enabled=True,
            **_BUFFERED,
        )
        _dispatchers[key] = dispatcher
    return dispatcher


def _drop(hostname: str | None) -> None:
    """Forget this thread's dispatcher after a failed publish, with what it held: the next
    step opens afresh."""
    dispatcher = _dispatchers.pop(_key(hostname), None)
    if dispatcher is not None:
        with contextlib.suppress(Exception):  # already broken: nothing left to close
            dispatcher.connection.release()


class Monitor:
    """What the drain tells monitoring of an action without a message: nothing, by default."""

    def started(self, kind: str, project_id: str, action_id: uuid.UUID, attempts: int) -> None:
        """The action starts (``task-received`` and ``task-started``)."""

    def finished(self, action_id: uuid.UUID, verdict: str, runtime: float) -> None:
        """It settled with ``verdict`` (succeeded, failed, retry) after ``runtime`` seconds."""

    def flush(self) -> None:
        """Send what is held back (the drain calls it when its batch ends)."""


class WorkerEvents(Monitor):
    """The worker's side, sent from the drain's pool process under the worker's hostname. A
    finish is held until the next start or the end of the batch, and goes out with it: the
    events of one step travel as one ``task.multi`` message, the list Celery's own worker sends
    its buffered task events as (``buffer_group``), which every event receiver (Flower's
    included) unpacks."""

    def __init__(self, app: Any, hostname: str | None):
        self.app = app
        self.hostname = hostname
        self._held: list[tuple[str, dict[str, Any]]] = []
        # The watchdog's thread settles an abandoned action beside the drain's.
        self._lock = threading.Lock()

    def _send(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        with self._lock:
            events, self._held = [*self._held, *events], []
        if not events:
            return
        try:
            dispatcher = _dispatcher(self.app, self.hostname)
            for event_type, fields in events:
                dispatcher.send(event_type, **fields)
            dispatcher.flush(errors=False)
        except Exception as exc:  # monitoring only: never fail the drain over it
            _drop(self.hostname)
            log.warning("could not send task events: %s", type(exc).__name__)

    def started(self, kind: str, project_id: str, action_id: uuid.UUID, attempts: int) -> None:
        task = str(action_id)
        received = {
            "uuid": task,
            "name": action_task_name(kind),
            "args": "()",
            "kwargs": _kwargs(project_id),
            "root_id": task,
            "parent_id": None,
            "retries": max(0, attempts - 1),
            "eta": None,
            "expires": None,
        }
        # The dispatcher adds hostname, pid and timestamps to each.
        self._send([("task-received", received), ("task-started", {"uuid": task})])

    def finished(self, action_id: uuid.UUID, verdict: str, runtime: float) -> None:
        task = str(action_id)
        if verdict == "succeeded":
            held = ("task-succeeded", {"uuid": task, "result": "None", "runtime": runtime})
        elif verdict == "failed":
            held = ("task-failed", {"uuid": task, "exception": "action failed"})
        else:
            held = ("task-retried", {"uuid": task, "exception": "retrying"})
        with self._lock:
            self._held.append(held)

    def flush(self) -> None:
        self._send([])
