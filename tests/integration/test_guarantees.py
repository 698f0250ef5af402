"""Guarantees 1-4 and 6 (README "Guarantees"), from outside: several real workers, SIGKILL, Redis wiped,
Postgres connections terminated. The fake provider's journal records what really ran and
when, independently of the pipeline's own bookkeeping."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from qai_jobs.client import WorkspaceClient
from qai_jobs.db import enqueue, handover, ordering
from qai_jobs.db.session import engine_for
from qai_jobs.errors import LeaseLost
from qai_jobs.testing import clear_faults, inject_fault, journal
from tests.conftest import settings_for
from tests.support.procs import Proc, start_worker


@pytest.fixture(scope="module")
def iso_client(isolated_env: dict[str, str]) -> WorkspaceClient:
    return WorkspaceClient(settings_for(isolated_env))


@pytest.fixture
def iso_workers(isolated_env: dict[str, str], log_dir: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(concurrency: int = 2, name: str | None = None) -> Proc:
        proc = start_worker(
            isolated_env,
            log_dir,
            concurrency=concurrency,
            name=name or f"iso-{uuid.uuid4().hex[:6]}",
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def _wait_status(client: WorkspaceClient, action_id: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get_action(action_id)["status"] != status:
        assert time.monotonic() < deadline, f"{action_id} never became {status}"
        time.sleep(0.02)


def test_exclusion_order_and_parallelism(
    iso_client: WorkspaceClient, iso_workers: Callable[..., Proc]
) -> None:
    iso_workers(concurrency=4)
    iso_workers(concurrency=4)
    projects = [f"ex-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    handles: dict[str, list] = defaultdict(list)
    for n in range(10):
        for p in projects:
            handles[p].append(iso_client.command(p, f"sleep 0.02 {n}"))
    for p in projects:
        for h in handles[p]:
            assert h.wait(120)["exit_code"] == 0
    url = iso_client.settings.redis_url
    all_runs = []
    for p in projects:
        runs = sorted((e for e in journal(url, p) if e["op"] == "run"), key=lambda e: e["start"])
        assert [r["detail"] for r in runs] == [f"sleep 0.02 {n}" for n in range(10)], (
            "start order = enqueue order"
        )
        for before, after in itertools.pairwise(runs):
            assert after["start"] >= before["end"], f"two actions of {p} overlapped"
        actions = iso_client.list_actions(p)
        assert [a["started_at"] for a in actions] == sorted(a["started_at"] for a in actions)
        all_runs += [(r["start"], r["end"], p, r["pid"]) for r in runs]
    all_runs.sort()
    overlapping = sum(1 for a, b in itertools.pairwise(all_runs) if b[0] < a[1] and b[2] != a[2])
    assert overlapping > 0, "actions of different projects never ran concurrently"
    assert len({r[3] for r in all_runs}) > 1, "only one worker process did all the work"


def test_sigkill_reruns_idempotent_and_fails_commands(
    iso_client: WorkspaceClient, iso_workers: Callable[..., Proc], isolated_env: dict[str, str]
) -> None:
    url = isolated_env["REDIS_URL"]
    victim = iso_workers(concurrency=2)
    p_write, p_cmd = f"kw-{uuid.uuid4().hex[:6]}", f"kc-{uuid.uuid4().hex[:6]}"
    iso_client.ensure(p_write, start_dev_server=False).wait(30)
    iso_client.ensure(p_cmd, start_dev_server=False).wait(30)
    inject_fault(url, op="write_files", mode="latency", latency=30, count=1)
    write = iso_client.write(p_write, files={"kept.txt": "survives"})
    cmd = iso_client.command(p_cmd, "sleep 30")
    _wait_status(iso_client, write.id, "running")
    _wait_status(iso_client, cmd.id, "running")
    iso_workers(concurrency=2)
    killed_at = time.monotonic()
    victim.kill()
    assert write.wait(30) == {"files_written": 1, "files_unchanged": 0, "files_deleted": 0}
    with pytest.raises(Exception) as info:
        cmd.wait(30)
    recovered_in = time.monotonic() - killed_at
    assert getattr(info.value, "error", {}).get("code") == "worker_lost"
    assert iso_client.get_action(write.id)["attempts"] == 2
    assert (
        iso_client.read(p_write, paths=["kept.txt"]).wait(30)["files"][0]["content"] == "survives"
    )
    assert iso_client.command(p_cmd, "echo alive").wait(30)["stdout"] == "alive\n", "project wedged"
    # Within a few heartbeats (0.5 s here), not Redis's one-hour visibility timeout.
    assert recovered_in < 30
    clear_faults(url)


def test_redis_wiped_with_actions_queued(
    iso_client: WorkspaceClient, iso_workers: Callable[..., Proc], isolated_env: dict[str, str]
) -> None:
    iso_workers(concurrency=2)
    projects = [f"rw-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    handles = [iso_client.command(p, "sleep 0.1") for _ in range(6) for p in projects]
    time.sleep(0.3)
    redis.Redis.from_url(isolated_env["REDIS_URL"]).flushdb()  # every message, lock and binding
    for h in handles:
        assert h.wait(90)["exit_code"] == 0
    statuses = {a["status"] for p in projects for a in iso_client.list_actions(p)}
    assert statuses == {"succeeded"}


def test_postgres_connections_terminated_mid_run(
    iso_client: WorkspaceClient, iso_workers: Callable[..., Proc], isolated_env: dict[str, str]
) -> None:
    iso_workers(concurrency=2)
    projects = [f"pg-{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    handles = [iso_client.command(p, "sleep 0.05") for _ in range(8) for p in projects]
    time.sleep(0.3)
    db = isolated_env["DATABASE_URL"].rsplit("/", 1)[1]
    admin = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    for _ in range(3):
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": db},
            )
        time.sleep(0.3)
    admin.dispose()
    for h in handles:
        result = iso_client.wait_for(h.id, timeout=90)
        assert result["status"] in ("succeeded", "failed")
        if result["status"] == "failed":  # a command caught mid-run may be settled as worker_lost
            assert result["error"]["code"] == "worker_lost"
    assert (
        sum(a["status"] == "succeeded" for p in projects for a in iso_client.list_actions(p))
        >= len(handles) // 2
    )


def test_fencing_a_stale_holder_cannot_overwrite(
    iso_client: WorkspaceClient, isolated_env: dict[str, str]
) -> None:
    engine = engine_for(isolated_env["DATABASE_URL"])
    project = f"fence-{uuid.uuid4().hex[:6]}"
    action_id = uuid.uuid4()
    with engine.begin() as conn:
        enqueue.enqueue(
            conn, action_id=action_id, project_id=project, kind="read", payload={"paths": ["a"]}
        )
    with engine.begin() as conn:
        got = ordering.acquire(conn, project, "old-holder", ttl=0.05)
        assert got is not None
        old = got.lease
        started = ordering.start_next(conn, old)
        assert started is not None and started.id == action_id
    time.sleep(0.1)  # the old holder's lease expires (it stalled)
    with engine.begin() as conn:
        got = ordering.acquire(conn, project, "new-holder", ttl=30)
        assert got is not None
        new, settled = got.lease, got.settled
        assert [s.status for s in settled] == ["queued"]  # idempotent: back in the queue
        assert new.gen > old.gen
        assert ordering.start_next(conn, new) is not None
    with pytest.raises(LeaseLost), engine.begin() as conn:
        ordering.fence(conn, old, 30)
    with pytest.raises(LeaseLost), engine.begin() as conn:
        ordering.finish(conn, old, action_id, status="succeeded", result={"stale": True})
    with engine.begin() as conn:
        ordering.finish(conn, new, action_id, status="succeeded", result={"fresh": True})
        ordering.release(conn, new)
    assert iso_client.get_action(action_id)["result"] == {"fresh": True}


def test_a_start_is_dated_after_the_previous_finish_and_its_own_enqueue(
    iso_client: WorkspaceClient, isolated_env: dict[str, str]
) -> None:
    """A grant whose transaction began while the previous holder still had the lease (its
    statement waited, or was refused and ran again) starts the next action only after that
    holder's settle and the action's enqueue committed: the recorded times must say so."""
    engine = engine_for(isolated_env["DATABASE_URL"])
    project = f"dates-{uuid.uuid4().hex[:6]}"
    first, second = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        enqueue.enqueue(conn, action_id=first, project_id=project, kind="read", payload={})
    with engine.begin() as conn:
        got = ordering.acquire(conn, project, "holder", ttl=30)
        assert got is not None and ordering.start_next(conn, got.lease) is not None
    holder = got.lease
    with engine.connect() as waiting:
        grant = waiting.begin()
        waiting.execute(sa.text("SELECT 1"))  # the next grant's transaction has begun
        time.sleep(0.05)
        with engine.begin() as conn:  # the holder settles and gives the lease back
            ordering.fence(conn, holder, 30)
            finish = handover.Finish(first, "succeeded", {})
            assert handover.start_or_release(conn, holder, finish=finish).started is None
        time.sleep(0.02)
        with engine.begin() as conn:
            enqueue.enqueue(conn, action_id=second, project_id=project, kind="read", payload={})
        taken = ordering.acquire(waiting, project, "next-holder", ttl=30)
        assert taken is not None
        started = handover.start_or_release(waiting, taken.lease).started
        assert started is not None and started.id == second
        grant.commit()
    before, after = iso_client.get_action(first), iso_client.get_action(second)
    at = {k: datetime.fromisoformat(after[k]) for k in ("created_at", "started_at")}
    assert at["started_at"] >= datetime.fromisoformat(before["finished_at"])
    assert at["started_at"] >= at["created_at"]


def test_slow_announcements_after_taking_the_lease_let_no_one_else_in(
    isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking the lease starts the head action in the same transaction; announcing what it
    settled (Redis, Celery) comes after. While that I/O hangs past the lease's lifetime, the
    lease must still be ours, or a second worker would run the project at the same time."""
    from qai_jobs.worker import attempt, drain

    env = {**isolated_env, "WORKSPACE_HEARTBEAT_SECONDS": "0.2"}
    settings = settings_for(env)
    engine = engine_for(env["DATABASE_URL"])
    project = f"gap-{uuid.uuid4().hex[:6]}"
    dead, second = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        for action_id in (dead, second):
            enqueue.enqueue(
                conn, action_id=action_id, project_id=project, kind="command", payload={"cmd": "x"}
            )
    with engine.begin() as conn:  # a holder dies running the first command
        got = ordering.acquire(conn, project, "dead-holder", ttl=0.01)
        assert got is not None
        ordering.start_next(conn, got.lease)
    time.sleep(0.05)
    stolen: list[bool] = []

    def slow_redis(url: str, messages: object) -> None:  # the worker_lost notice hangs
        time.sleep(settings.lease_seconds + 0.3)
        with engine.begin() as conn:
            stolen.append(ordering.acquire(conn, project, "other-worker", ttl=30) is not None)

    ran: list[uuid.UUID] = []
    monkeypatch.setattr(drain, "publish_many", slow_redis)
    monkeypatch.setattr(attempt, "execute", lambda ctx: ran.append(ctx.action_id) or {})
    dispatch = drain.Dispatch(
        kick=lambda *_: None, deliver=lambda _: None, give_turn=lambda *_: None
    )
    assert drain.drain(settings, project, dispatch) == 1
    assert stolen == [False]  # the heartbeat kept the lease through the hang
    assert ran == [second]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, status, error->>'code' AS code FROM actions WHERE project_id = :p"),
            {"p": project},
        ).all()
    assert {r.id: (r.status, r.code) for r in rows} == {
        dead: ("failed", "worker_lost"),
        second: ("succeeded", None),
    }
