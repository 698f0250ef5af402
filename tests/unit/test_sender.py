"""The sending thread's queue: a full queue sends in the caller (never drops), ``flush`` waits
for what was submitted before it, and an unexpected error neither kills the thread nor blocks a
flush. A stand-in broker records who sent what; the real one is in test_enqueue_send."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from typing import Any

import pytest

from qai_jobs.client.sender import Broker, Message, Sender


class Recorder:
    """Sends by recording (message, sending thread); holds the first send until released."""

    def __init__(self, hold_first: bool = False, fail: bool = False):
        self.sent: list[tuple[uuid.UUID, str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.hold_first = hold_first
        self.fail = fail
        self.calls: list[list[uuid.UUID]] = []

    def publish_many(self, messages: list[Message]) -> None:
        if self.hold_first and not self.started.is_set():
            self.started.set()
            assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("not a broker error: a bug")
        self.calls.append([m.action_id for m in messages])
        for message in messages:
            self.sent.append((message.action_id, threading.current_thread().name))


def _message(broker: Any) -> Message:
    return Message(broker, "write", "p-1", uuid.uuid4())


def test_a_full_queue_sends_in_the_caller() -> None:
    broker = Recorder(hold_first=True)
    sender = Sender(size=1)
    first, second, third = (_message(broker) for _ in range(3))
    sender.submit(first)
    assert broker.started.wait(10)  # the thread holds `first`
    sender.submit(second)  # fills the queue
    sender.submit(third)  # full: sent here, before submit returns
    assert broker.sent == [(third.action_id, threading.current_thread().name)]
    assert not sender.flush(0.05)  # `first` and `second` are still unsent
    broker.release.set()
    assert sender.flush(10)
    assert sorted(m for m, _ in broker.sent) == sorted(m.action_id for m in (first, second, third))
    assert {t for m, t in broker.sent if m != third.action_id} == {"qai-enqueue-sender"}


def test_flush_waits_for_what_was_submitted_before_it_only() -> None:
    broker = Recorder(hold_first=True)
    sender = Sender()
    sender.submit(_message(broker))
    assert broker.started.wait(10)
    assert not sender.flush(0.05)
    broker.release.set()
    assert sender.flush(10)
    assert sender.pending() == 0


def test_an_unexpected_error_keeps_the_thread_and_counts_as_done() -> None:
    broken, working = Recorder(fail=True), Recorder()
    sender = Sender()
    sender.submit(_message(broken))
    assert sender.flush(10)
    later = _message(working)
    sender.submit(later)
    assert sender.flush(10)
    assert [m for m, _ in working.sent] == [later.action_id]


def test_what_queued_behind_a_send_goes_out_together_per_broker() -> None:
    one, other = Recorder(hold_first=True), Recorder()
    sender = Sender()
    first = _message(one)
    sender.submit(first)
    assert one.started.wait(10)  # the thread holds `first`
    behind = [_message(one if i % 2 else other) for i in range(6)]
    for message in behind:
        sender.submit(message)
    one.release.set()
    assert sender.flush(10)
    # One call per broker for everything that waited, in the order submitted.
    assert one.calls == [[first.action_id], [m.action_id for m in behind if m.broker is one]]
    assert other.calls == [[m.action_id for m in behind if m.broker is other]]


def test_a_broker_that_is_away_leaves_only_the_unsent_messages_to_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = Broker(f"redis://127.0.0.1:{port}/0")
    coalesced = Message(broker, "write", "p-1", uuid.uuid4(), coalesced=True)
    plain = [Message(broker, "write", f"p-{i}", uuid.uuid4()) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="qai_jobs.client.sender"):
        broker.publish_many([coalesced, *plain])
    # The coalesced action needs no message (its project's is on its way): only its task-sent
    # event is lost, and the two messages are what recovery will send.
    assert broker._failed == 2
    assert "could not send task-sent events" in caplog.text
    assert "broker unavailable" in caplog.text
