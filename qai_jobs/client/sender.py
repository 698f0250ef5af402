"""The Celery message of an enqueue, and the background thread that sends it after the commit.

An enqueue is durable once its row is committed; the message only tells a worker "project P
has work" (the recovery sweep re-sends it for a queued action nobody picked up). So the
producer returns at the commit and one daemon thread per process sends the messages right
after, through each client's own broker pool. When the thread falls behind (a full queue) the
caller sends inline: backpressure, never a dropped message. ``flush`` waits for what was queued
so far, and runs at interpreter exit; a process killed before that leaves its last messages to
recovery.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from qai_jobs import monitoring
from qai_jobs.constants import RECORDED_HEADER, action_task_name

log = logging.getLogger(__name__)

# Deep enough to absorb a burst of enqueues while a send is slow; a full queue sends inline.
QUEUE_SIZE = 1024
# How long interpreter exit waits for queued messages (a pool wait plus a connect, with room).
EXIT_FLUSH_SECONDS = 10.0
POOL_WAIT_SECONDS = 5
# At most this many queued messages go out on one connection checkout.
SEND_BATCH = 256
# One connection attempt per send, not kombu's default of retrying for several seconds: the
# send is a hint that recovery repeats, and one thread sends for the whole process, so a broker
# that is down must cost each message a refused connect, not six seconds. The socket timeouts
# keep a broker that hangs from holding the thread (or an inline caller) for ever.
TRANSPORT_OPTIONS = {"max_retries": 0, "socket_connect_timeout": 5, "socket_timeout": 5}


class Broker:
    """One client's way to its broker in one process: a pool of connections, and whether the
    sends are failing (a warning once per burst of failures, not once per message)."""

    def __init__(self, redis_url: str):
        from kombu import Connection

        self.pid = os.getpid()
        self.pool: Any = Connection(redis_url, transport_options=TRANSPORT_OPTIONS).Pool(limit=16)
        self._lock = threading.Lock()
        self._failed = 0

    def publish(self, message: Message) -> None:
        """Send one message (see ``publish_many``)."""
        self.publish_many([message])

    def publish_many(self, messages: list[Message]) -> None:
        """Send messages on one pooled connection: each its own Celery message, or for those a
        project's message in flight stands for, their ``task-sent`` events as one list (first,
        so monitoring hears of them before the drain's events). A broker error stops the batch
        and is logged (once per burst) and swallowed: the actions are durable and recovery sends
        the messages not sent yet."""
        from qai_jobs.celery_app import app

        coalesced = [m for m in messages if m.coalesced]
        own = [m for m in messages if not m.coalesced]
        sent = 0
        try:
            with self.pool.acquire(block=True, timeout=POOL_WAIT_SECONDS) as conn:
                if coalesced:
                    try:
                        monitoring.sent(
                            app, conn, [(m.kind, m.project_id, m.action_id) for m in coalesced]
                        )
                    except Exception as exc:  # monitoring only: those actions need no message
                        log.warning("could not send task-sent events: %s", type(exc).__name__)
                for message in own:
                    app.send_task(
                        action_task_name(message.kind),
                        kwargs={"project_id": message.project_id},
                        task_id=str(message.action_id),
                        connection=conn,
                        retry=False,
                        headers={RECORDED_HEADER: 1},
                    )
                    sent += 1
        except Exception as exc:  # kombu raises many types; the actions are durable either way
            if sent < len(own):
                self._failure(own[sent:], exc)
            else:  # only the pool checkout for events failed
                log.warning("could not send task-sent events: %s", type(exc).__name__)
            return
        if self._failed:  # read without the lock: only the burst's end takes it
            self._recovered()

    def _failure(self, messages: list[Message], exc: Exception) -> None:
        with self._lock:
            first = self._failed == 0
            self._failed += len(messages)
        if first:
            message = messages[0]
            # The error's type only: its text may carry the broker URL; never the payload.
            log.warning(
                "[project_id=%s action_id=%s] broker unavailable (%s); recovery will send it "
                "and any other message until the broker answers",
                message.project_id,
                message.action_id,
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        with self._lock:
            missed, self._failed = self._failed, 0
        if missed:
            log.warning("broker answers again; %d message(s) were left to recovery", missed)


@dataclass(frozen=True)
class Message:
    broker: Broker
    kind: str
    project_id: str
    action_id: uuid.UUID
    # The project's message in flight stands for this action (db/enqueue.py): only the
    # task-sent event goes out, so monitoring still lists it.
    coalesced: bool = False


class Sender:
    """The process's sending thread and its bounded queue. Counts what was queued and what is
    done (sent, or given up to recovery) so ``flush`` can wait for a point in the stream."""

    def __init__(self, size: int = QUEUE_SIZE):
        self.pid = os.getpid()
        self._queue: queue.Queue[Message] = queue.Queue(size)
        self._done_changed = threading.Condition()
        self._queued = 0
        self._done = 0
        self._thread = threading.Thread(target=self._run, name="qai-enqueue-sender", daemon=True)
        self._thread.start()

    def submit(self, message: Message) -> None:
        with self._done_changed:
            self._queued += 1
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            # The thread cannot keep up: this caller waits for its own send instead.
            self._publish([message])

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every message submitted before this call is sent (or left to recovery
        after a broker error); False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done_changed:
            target = self._queued
            while self._done < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done_changed.wait(left)
        return True

    def pending(self) -> int:
        with self._done_changed:
            return self._queued - self._done

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            # What queued up meanwhile goes with it: one connection checkout, and one event
            # message for all the coalesced ones, however fast the producer enqueues.
            while len(batch) < SEND_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_broker: dict[int, list[Message]] = {}
            for message in batch:
                by_broker.setdefault(id(message.broker), []).append(message)
            for messages in by_broker.values():
                self._publish(messages)

    def _publish(self, messages: list[Message]) -> None:
        try:
            messages[0].broker.publish_many(messages)
        except Exception:  # never lose the thread (or a caller) to an unexpected error
            log.exception("[project_id=%s] sending the message failed", messages[0].project_id)
        finally:
            with self._done_changed:
                self._done += len(messages)
                self._done_changed.notify_all()


_sender: Sender | None = None
_creating = threading.Lock()


def current() -> Sender:
    """This process's sender, started on first use; a child after fork starts its own (the
    parent's thread does not survive the fork, and the parent still sends what it queued)."""
    global _sender
    current = _sender
    if current is None or current.pid != os.getpid():
        with _creating:
            current = _sender
            if current is None or current.pid != os.getpid():
                current = _sender = Sender()
    return current


def flush(timeout: float | None = None) -> bool:
    """Wait for this process's queued messages (True at once if it never queued any)."""
    current = _sender
    if current is None or current.pid != os.getpid():
        return True
    return current.flush(timeout)


def _reset_after_fork() -> None:
    # A lock another thread held at the fork stays held for ever in the child.
    global _creating
    _creating = threading.Lock()


def _flush_at_exit() -> None:
    if not flush(EXIT_FLUSH_SECONDS):
        current = _sender
        left = current.pending() if current is not None else 0
        log.warning("exiting with %d message(s) unsent; recovery will send them", left)


os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(_flush_at_exit)
