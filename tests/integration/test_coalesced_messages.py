"""A project needs one "has work" message on its way, not one per action: the actions enqueued
behind it send none, still run in order, and still reach monitoring (Flower) as tasks, through
the task events the producer and the worker send for them; a lost message still leaves
nothing stuck (recovery).

The module has a database and Redis DB of its own, so its workers see only its messages.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from qai_jobs.client import WorkspaceClient
from qai_jobs.config import Settings
from tests.conftest import settings_for
from tests.support.procs import Proc, start_worker

QUEUE = "celery"


@pytest.fixture(scope="module")
def iso_settings(isolated_env: dict[str, str]) -> Settings:
    return settings_for(isolated_env)


@pytest.fixture
def iso_client(iso_settings: Settings) -> WorkspaceClient:
    return WorkspaceClient(iso_settings)


class Events:
    """Every task event on the module's broker, as Flower would receive them."""

    def __init__(self, broker_url: str):
        self.app = Celery(broker=broker_url)
        self.seen: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._recv: Any = None
        self._thread.start()
        assert self._ready.wait(10)
        time.sleep(1.0)  # its subscription is in place before the test sends anything

    def _run(self) -> None:
        with self.app.connection() as conn:
            self._recv = self.app.events.Receiver(conn, handlers={"*": self.seen.append})
            self._ready.set()
            self._recv.capture(limit=None, timeout=None, wakeup=False)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.seen) if e.get("uuid") == task_id]

    def stop(self) -> None:
        self._recv.should_stop = True
        self._thread.join(5)


@pytest.fixture
def events(iso_settings: Settings) -> Iterator[Events]:
    watcher = Events(iso_settings.redis_url)
    yield watcher
    watcher.stop()


def _messages(settings: Settings) -> list[str]:
    r = redis.Redis.from_url(settings.redis_url)
    return [json.loads(raw)["headers"]["id"] for raw in r.lrange(QUEUE, 0, -1)]


def _messaged(settings: Settings, ids: list[str]) -> list[bool]:
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.text("SELECT id::text, messaged FROM actions WHERE id::text = ANY(:ids)"),
                {"ids": ids},
            ).all()
        )
    return [rows[i] for i in ids]


def _wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_actions_behind_a_message_in_flight_send_none_and_are_announced_as_sent(
    iso_settings: Settings, iso_client: WorkspaceClient, events: Events, project: str
) -> None:
    redis.Redis.from_url(iso_settings.redis_url).delete(QUEUE)
    ids = [str(iso_client.write(project, {"a.txt": str(i)}).id) for i in range(5)]
    other = str(iso_client.write(f"{project}-b", {"a.txt": "b"}).id)
    assert iso_client.flush(10)
    # One message per project: the first action's; no worker has taken it yet.
    assert sorted(_messages(iso_settings)) == sorted([ids[0], other])
    assert _messaged(iso_settings, ids) == [True, False, False, False, False]
    # The others still reach monitoring as sent tasks, named as their messages would be.
    assert _wait_until(lambda: all("task-sent" in events.of(i) for i in ids[1:]), 10)
    sent = [e for e in events.seen if e["type"] == "task-sent" and e["uuid"] == ids[1]]
    assert sent[0]["name"] == "qai_jobs.write" and project in sent[0]["kwargs"]


def test_coalesced_actions_run_in_order_and_flower_sees_each_finish(
    iso_settings: Settings,
    iso_client: WorkspaceClient,
    isolated_env: dict[str, str],
    log_dir: Any,
    events: Events,
    project: str,
) -> None:
    redis.Redis.from_url(iso_settings.redis_url).delete(QUEUE)
    handles = [iso_client.write(project, {"n.txt": str(i)}) for i in range(30)]
    assert iso_client.flush(10)
    assert len(_messages(iso_settings)) < len(handles)  # most rode on the first message
    worker: Proc = start_worker(isolated_env, log_dir, concurrency=2, name="coalesce")
    try:
        done = [iso_client.wait_for(h.id, timeout=60) for h in handles]
        assert [d["status"] for d in done] == ["succeeded"] * len(handles)
        starts = [d["started_at"] for d in done]
        assert starts == sorted(starts)  # FIFO within the project
        ids = [str(h.id) for h in handles]
        flags = _messaged(iso_settings, ids)
        assert flags.count(False) > 0
        # Every action, message or not, went through received, started and succeeded.
        ok = _wait_until(lambda: all("task-succeeded" in events.of(i) for i in ids), 10)
        assert ok, [(f, events.of(i)) for f, i in zip(flags, ids, strict=True)]
    finally:
        worker.stop()
    for task_id in ids:
        kinds = events.of(task_id)
        assert {"task-received", "task-started", "task-succeeded"} <= set(kinds), kinds
    ours = [e for e in events.seen if e["type"] == "task-succeeded" and e["uuid"] in ids]
    assert all(isinstance(e["runtime"], float) and e["hostname"] for e in ours)


def test_a_lost_message_leaves_its_followers_to_recovery_not_stuck(
    isolated_env: dict[str, str], log_dir: Any, project: str
) -> None:
    env = {**isolated_env, "WORKSPACE_HEARTBEAT_SECONDS": "0.5", "WORKSPACE_LEASE_SECONDS": "3"}
    settings = settings_for(env)
    client = WorkspaceClient(settings)
    r = redis.Redis.from_url(settings.redis_url)
    r.delete(QUEUE)
    first = client.write(project, {"a.txt": "1"})
    second = client.write(project, {"a.txt": "2"})  # rides on the first's message
    assert client.flush(10)
    r.delete(QUEUE)  # the broker loses that message
    assert _messaged(settings, [str(first.id), str(second.id)]) == [True, False]
    worker: Proc = start_worker(env, log_dir, concurrency=1, name="lost-hint")
    try:
        # The worker's recovery watchdog kicks the project whose head waits with nobody on it.
        assert client.wait_for(first.id, timeout=30)["status"] == "succeeded"
        assert client.wait_for(second.id, timeout=30)["status"] == "succeeded"
        # The kick's drain cleared the mark: the next action sends its own message again.
        third = client.write(project, {"a.txt": "3"})
        assert client.flush(10)
        assert client.wait_for(third.id, timeout=10)["status"] == "succeeded"
        assert _messaged(settings, [str(third.id)]) == [True]
    finally:
        worker.stop()


def _mark(settings: Settings, project: str) -> Any:
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT hint_seq FROM workspaces WHERE project_id = :p"), {"p": project}
        ).scalar()


def test_an_idempotency_hit_leaves_no_mark_behind(
    iso_settings: Settings, iso_client: WorkspaceClient, project: str
) -> None:
    first = iso_client.enqueue_payload(project, "write", {"files": {"a": "1"}}, "key-1")
    assert _messaged(iso_settings, [str(first.id)]) == [True]
    engine = sa.create_engine(iso_settings.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # its message's drain attempt came and cleared the mark
        conn.execute(
            sa.text("UPDATE workspaces SET hint_seq = NULL WHERE project_id = :p"), {"p": project}
        )
    again = iso_client.enqueue_payload(project, "write", {"files": {"a": "1"}}, "key-1")
    assert again.id == first.id
    # The repeat sent nothing, so it must not claim a message is on its way: the next action
    # would ride on a message that does not exist.
    assert _mark(iso_settings, project) is None
    nxt = iso_client.write(project, {"b": "2"})
    assert _messaged(iso_settings, [str(nxt.id)]) == [True]


def test_an_attempt_refused_while_the_holder_settles_does_not_lose_an_enqueue(
    iso_settings: Settings, iso_client: WorkspaceClient, project: str
) -> None:
    """The holder H is in its last settle (the row locked); an enqueue E2 and the attempt A of
    the project's message in flight both wait for the row, A having read it as H holds it. H
    gives the lease back without seeing E2. Whichever of the two goes first, E2 must get a
    message of its own or A the lease (finding E2), or E2 waits for recovery. Postgres wakes
    waiters in no fixed order, so the race runs several times."""
    from qai_jobs.db import ordering

    engine = sa.create_engine(iso_settings.database_url)
    for round_ in range(8):
        p = f"{project}-{round_}"
        iso_client.write(p, {"a": "0"})
        with engine.begin() as conn:
            held = ordering.acquire(conn, p, "H", ttl=30)
        assert held is not None
        iso_client.write(p, {"a": "1"})  # the message in flight: A's
        assert _mark(iso_settings, p) is not None
        h_conn = engine.connect()
        h_tx = h_conn.begin()
        ordering.fence(h_conn, held.lease, 30)  # H's settle: the row is locked
        results: dict[str, Any] = {}

        def enqueue(p: str = p, results: dict[str, Any] = results) -> None:
            results["e2"] = iso_client._record(uuid.uuid4(), p, "write", {"files": {}}, None)

        def attempt(p: str = p, results: dict[str, Any] = results) -> None:
            with engine.begin() as conn:
                results["a"] = ordering.acquire(conn, p, "A", ttl=30)

        threads = [threading.Thread(target=enqueue), threading.Thread(target=attempt)]
        for thread in threads:
            thread.start()
            time.sleep(0.2)  # each is waiting for the row (A read it with H's lease on it)
        ordering.release(h_conn, held.lease)
        h_tx.commit()
        h_conn.close()
        for thread in threads:
            thread.join(10)
        drained = results["e2"].messaged or results["a"] is not None
        assert drained, f"round {round_}: nobody will drain E2 ({results})"


def test_an_action_without_a_message_that_dies_with_its_worker_reaches_its_end_in_flower(
    isolated_env: dict[str, str], log_dir: Any, events: Events, project: str
) -> None:
    """Monitoring heard it start from the drain that died: the drain that settles it as
    worker_lost tells monitoring it failed, or Flower would show it started for ever."""
    env = {**isolated_env, "WORKSPACE_HEARTBEAT_SECONDS": "0.5", "WORKSPACE_LEASE_SECONDS": "3"}
    settings = settings_for(env)
    client = WorkspaceClient(settings)
    redis.Redis.from_url(settings.redis_url).delete(QUEUE)
    client.command(project, "true")
    doomed = client.command(project, "sleep 60")  # rides on the first's message
    assert client.flush(10)
    task = str(doomed.id)
    assert _messaged(settings, [task]) == [False]
    worker: Proc = start_worker(env, log_dir, concurrency=1, name="coalesce-lost")
    try:
        assert _wait_until(lambda: "task-started" in events.of(task), 30)
    finally:
        worker.kill()
    again: Proc = start_worker(env, log_dir, concurrency=1, name="coalesce-after")
    try:
        done = client.wait_for(doomed.id, timeout=60)
        assert done["status"] == "failed" and done["error"]["code"] == "worker_lost"
        assert _wait_until(lambda: "task-failed" in events.of(task), 10), events.of(task)
    finally:
        again.stop()
