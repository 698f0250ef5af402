"""A running action's notices (qai_jobs.worker.progress.Notices): stages held while it is
young go out with its done in one round trip, in order; later ones at once; none is lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from qai_jobs.worker import progress
from qai_jobs.worker.progress import HOLD_SECONDS, Notices, output_publisher, progress_writer
from tests.support.roundtrips import Listener, count_publishes


@pytest.fixture
def url(service_urls: dict[str, str]) -> str:
    return service_urls["REDIS_URL"]


@pytest.fixture
def action_id() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def listener(url: str, action_id: uuid.UUID) -> Iterator[Listener]:
    heard = Listener(url, [action_id])
    yield heard
    heard.close()


def _stage(name: str, done: int | None = None, total: int | None = None) -> dict[str, object]:
    return {"type": "progress", "stage": name, "done": done, "total": total}


DONE = {"type": "done", "status": "succeeded"}


def test_a_quick_actions_stages_go_out_with_its_done_in_one_round_trip(
    monkeypatch: pytest.MonkeyPatch, url: str, action_id: uuid.UUID, listener: Listener
) -> None:
    sends = count_publishes(monkeypatch, url)
    notices = Notices(url, action_id)
    stages = [_stage("provisioning"), _stage("syncing", 0, 2), _stage("syncing", 2, 2)]
    for stage in stages:
        notices.stage(stage)
    listener.collect(0.05)
    assert sends == [] and listener.heard(action_id) == []  # held
    notices.finish(DONE)
    listener.collect(0.2)
    assert sends == [4]  # one pipeline: three stages and the done
    assert listener.heard(action_id) == [*stages, DONE]
    notices.stage(_stage("late"))  # the action is settled: nothing more goes out
    notices.finish(DONE)
    assert sends == [4]


def test_a_progress_call_after_the_hold_sends_what_is_held_with_it(
    monkeypatch: pytest.MonkeyPatch, url: str, action_id: uuid.UUID, listener: Listener
) -> None:
    sends = count_publishes(monkeypatch, url)
    notices = Notices(url, action_id)
    notices.stage(_stage("provisioning"))
    time.sleep(HOLD_SECONDS + 0.05)
    notices.stage(_stage("installing"))  # no longer young: at once, after the held one
    notices.stage(_stage("starting dev server"))
    notices.finish(DONE)
    listener.collect(0.2)
    assert sends == [2, 1, 1]
    assert listener.heard(action_id) == [
        _stage("provisioning"),
        _stage("installing"),
        _stage("starting dev server"),
        DONE,
    ]


def test_the_watchdog_sends_a_held_stage_once_the_action_is_no_longer_young(
    monkeypatch: pytest.MonkeyPatch, url: str, action_id: uuid.UUID, listener: Listener
) -> None:
    """Its poke never waits for Redis: the send runs on a thread of its own."""
    sends = count_publishes(monkeypatch, url)
    notices = Notices(url, action_id)
    notices.stage(_stage("provisioning"))
    now = time.monotonic()
    due = notices.due_in(now)
    assert due is not None and 0 < due <= HOLD_SECONDS
    notices.poke(now)  # still young
    listener.collect(0.02)
    assert sends == []
    time.sleep(due)
    notices.poke(time.monotonic())
    listener.collect(0.2)
    assert sends == [1] and listener.heard(action_id) == [_stage("provisioning")]
    assert notices.due_in(time.monotonic()) is None  # nothing held
    notices.finish(DONE)
    listener.collect(0.2)
    assert sends == [1, 1] and listener.heard(action_id)[-1] == DONE


def test_output_goes_at_once_after_what_is_held(
    monkeypatch: pytest.MonkeyPatch, url: str, action_id: uuid.UUID, listener: Listener
) -> None:
    sends = count_publishes(monkeypatch, url)
    notices = Notices(url, action_id)
    output = output_publisher(notices)
    notices.stage(_stage("running"))
    output("stdout", b"hello ")
    output("stdout", b"world")
    listener.collect(0.2)
    assert sends == [2, 1]
    assert listener.heard(action_id) == [
        _stage("running"),
        {"type": "output", "stream": "stdout", "offset": 0, "data": "hello "},
        {"type": "output", "stream": "stdout", "offset": 6, "data": "world"},
    ]


def test_a_dropped_actions_held_stages_are_never_sent(
    monkeypatch: pytest.MonkeyPatch, url: str, action_id: uuid.UUID, listener: Listener
) -> None:
    sends = count_publishes(monkeypatch, url)
    notices = Notices(url, action_id)
    notices.stage(_stage("provisioning"))
    notices.drop()  # its lease was lost
    time.sleep(HOLD_SECONDS)
    notices.poke(time.monotonic())
    notices.stage(_stage("syncing", 0, 1))
    notices.finish(DONE)
    listener.collect(0.2)
    assert sends == [] and listener.heard(action_id) == []


def test_the_writer_keeps_its_throttle_and_de_duplication(
    monkeypatch: pytest.MonkeyPatch, url: str, action_id: uuid.UUID, listener: Listener
) -> None:
    sends = count_publishes(monkeypatch, url)
    noted: list[dict[str, object]] = []
    checks: list[int] = []
    notices = Notices(url, action_id)
    write = progress_writer(notices, noted.append, lambda: checks.append(1))
    write("syncing", 0, 10)
    write("syncing", 5, 10)  # within STAGE_EVERY_SECONDS: throttled
    write("syncing", 10, 10)  # the final count always goes
    write("syncing", 10, 10)  # the same again: not repeated
    notices.finish(DONE)
    listener.collect(0.2)
    assert checks == [1, 1, 1, 1]  # the lease is checked on every call
    expected = [
        {"stage": "syncing", "done": 0, "total": 10},
        {"stage": "syncing", "done": 10, "total": 10},
    ]
    assert noted == expected  # the heartbeat records the same stages (Postgres), at once
    assert listener.heard(action_id) == [*({"type": "progress", **s} for s in expected), DONE]
    assert sends == [3]


def test_stages_from_the_action_and_flushes_from_the_watchdog_keep_their_order(
    monkeypatch: pytest.MonkeyPatch, url: str, action_id: uuid.UUID, listener: Listener
) -> None:
    """The action thread makes stages across the hold while the watchdog pokes: each stage
    arrives once, in order, and the done last."""
    monkeypatch.setattr(progress, "HOLD_SECONDS", 0.05)
    sends = count_publishes(monkeypatch, url)
    notices = Notices(url, action_id)
    stop = threading.Event()

    def watchdog() -> None:
        while not stop.wait(0.002):
            notices.poke(time.monotonic())

    dog = threading.Thread(target=watchdog)
    dog.start()
    stages = [_stage("step", i) for i in range(60)]
    for stage in stages:
        notices.stage(stage)
        time.sleep(0.002)
    notices.finish(DONE)
    stop.set()
    dog.join()
    listener.collect(0.3)
    assert listener.heard(action_id) == [*stages, DONE]
    assert sum(sends) == len(stages) + 1 and len(sends) < len(stages) + 1
