"""Reliability under real faults, through real workers: lost leases, deadlines, unseen commits,
limits from settings, fairness, foreign producers' order.

The fake provider's journal says what really ran and when (start and end of every call, by
which process), independently of the pipeline's own bookkeeping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from qai_jobs.client import WorkspaceClient
from qai_jobs.db import enqueue, ordering, recovery
from qai_jobs.db.session import engine_for
from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.errors import ActionFailed
from qai_jobs.testing import clear_faults, inject_fault, journal
from tests.conftest import settings_for
from tests.support.procs import Proc, start_worker
from tests.support.tcpproxy import TcpProxy

BEAT = 0.3  # heartbeat: a lease lives 0.9 s, and is declared lost after 0.6 s without renewal


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, "WORKSPACE_HEARTBEAT_SECONDS": str(BEAT)}


@pytest.fixture
def started(env: dict[str, str], log_dir: Path) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.kill() if proc.popen.poll() is None else None


def worker(
    procs: list[Proc], env: dict[str, str], log_dir: Path, concurrency: int = 2, **extra: str
) -> Proc:
    proc = start_worker({**env, **extra}, log_dir, concurrency=concurrency)
    procs.append(proc)
    return proc


def client_for(env: dict[str, str], **extra: str) -> WorkspaceClient:
    return WorkspaceClient(settings_for({**env, **extra}))


def runs(env: dict[str, str], project: str) -> list[dict[str, Any]]:
    return [e for e in journal(env["REDIS_URL"], project) if e["op"] == "run"]


def wait_status(client: WorkspaceClient, action_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get_action(action_id)["status"] != status:
        assert time.monotonic() < deadline, f"{action_id} never became {status}"
        time.sleep(0.02)


def _hold_and_start(engine: Any, project: str, owner: str) -> tuple[Any, Any, WorkspaceState]:
    """Take the project's lease as ``owner`` and start its head action, as a drain does;
    returns (the grant, the started action, the workspace state)."""
    with engine.begin() as conn:
        got = ordering.acquire(conn, project, owner, ttl=30)
        assert got is not None
        head = ordering.start_next(conn, got.lease)
        ws = WorkspaceState.load(conn, project)
    assert head is not None
    return got, head, ws


def test_a_lost_lease_stops_the_running_command_before_anyone_else_runs(
    env: dict[str, str], log_dir: Path, started: list[Proc]
) -> None:
    """Postgres becomes unreachable for the worker running a long command, for longer than the
    lease lives. That worker stops the command a heartbeat before its lease expires; another
    worker then takes the project. As the sandbox saw them, the two runs never overlap."""
    proxy = TcpProxy("127.0.0.1", 5432)
    try:
        cut_off = {**env, "DATABASE_URL": env["DATABASE_URL"].replace(":5432/", f":{proxy.port}/")}
        worker(started, cut_off, log_dir)
        client = client_for(env)
        project = f"lost-{uuid.uuid4().hex[:8]}"
        long = client.command(project, "sleep 60", timeout_s=120)
        after = client.command(project, "echo after")
        wait_status(client, long.id, "running")
        time.sleep(0.5)  # the command is well under way
        proxy.blackhole()
        cut_at = time.time()
        worker(started, env, log_dir)  # a healthy worker, ready to take over
        assert after.wait(60)["stdout"] == "after\n"
        first, second = runs(env, project)
        assert first["detail"] == "sleep 60" and second["detail"] == "echo after"
        assert first["pid"] != second["pid"]
        # The cut-off worker stopped its command before the other one started anything.
        assert first["end"] <= second["start"], (first, second)
        assert first["end"] - cut_at < 3 * BEAT + 1.0  # stopped at once, not after 60 s
        lost = client.get_action(long.id)
        assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost"
        print(f"fault -> next action running: {second['start'] - cut_at:.2f} s")
    finally:
        proxy.close()


def test_a_call_that_passes_its_deadline_is_abandoned_and_the_project_moves_on(
    env: dict[str, str], log_dir: Path, started: list[Proc]
) -> None:
    """A provider call that hangs (here: 60 s of injected latency that no cancel can stop)
    holds its project only until its deadline and a short grace: the action fails
    deadline_exceeded, and the next action runs."""
    deadlines = {
        "WORKSPACE_ACTION_DEADLINE_SECONDS": "1",
        "WORKSPACE_DEADLINE_MARGIN_SECONDS": "0.5",
    }
    worker(started, env, log_dir, **deadlines)
    client = client_for(env)
    project = f"hung-{uuid.uuid4().hex[:8]}"
    client.ensure(project, start_dev_server=False).wait(30)
    inject_fault(env["REDIS_URL"], op="run", count=1, mode="latency", latency=60)
    try:
        hung = client.command(project, "echo never", timeout_s=1)
        t0 = time.monotonic()
        after = client.command(project, "echo after")
        with pytest.raises(ActionFailed) as info:
            hung.wait(30)
        assert info.value.error["code"] == "deadline_exceeded"
        assert after.wait(30)["stdout"] == "after\n"
        # Deadline (1 s timeout + 0.5 s margin) plus the grace of two heartbeats (min 1 s).
        assert time.monotonic() - t0 < 15
        print(f"hung call -> next action done: {time.monotonic() - t0:.2f} s")
    finally:
        clear_faults(env["REDIS_URL"])


def test_a_stopped_idempotent_action_runs_again(
    env: dict[str, str], log_dir: Path, started: list[Proc]
) -> None:
    """An idempotent kind stopped at its deadline is retried, like any transient failure."""
    worker(started, env, log_dir, WORKSPACE_ACTION_DEADLINE_SECONDS="1")
    client = client_for(env)
    project = f"retry-{uuid.uuid4().hex[:8]}"
    client.ensure(project, start_dev_server=False).wait(30)
    inject_fault(env["REDIS_URL"], op="write_files", count=1, mode="latency", latency=60)
    try:
        handle = client.write(project, files={"a.txt": "one"})
        assert handle.wait(30)["files_written"] == 1
        assert client.get_action(handle.id)["attempts"] == 2
    finally:
        clear_faults(env["REDIS_URL"])


def test_a_retried_lease_grant_after_an_unseen_commit_runs_its_own_action(
    env: dict[str, str],
) -> None:
    """The grant's commit (which also started the head action) succeeded but the worker did not
    see it, and the grant is retried by the same owner: the action is its own, not a dead
    holder's, and runs, instead of failing worker_lost without having run."""
    engine = engine_for(env["DATABASE_URL"])
    project = f"unseen-{uuid.uuid4().hex[:8]}"
    action_id = uuid.uuid4()
    with engine.begin() as conn:
        enqueue.enqueue(
            conn, action_id=action_id, project_id=project, kind="command", payload={"cmd": "x"}
        )
    with engine.begin() as conn:  # the first grant: committed, unseen
        first = ordering.acquire(conn, project, "me", ttl=30)
        assert first is not None and ordering.start_next(conn, first.lease) is not None
    with engine.begin() as conn:  # its retry
        again = ordering.acquire(conn, project, "me", ttl=30)
        assert again is not None
        assert again.settled == []
        assert again.readopted is not None and again.readopted.id == action_id
        assert again.lease.gen > first.lease.gen
        ordering.finish(conn, again.lease, action_id, status="succeeded", result={})
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, error FROM actions WHERE id = :id"), {"id": action_id}
        ).one()
    assert (row.status, row.error) == ("succeeded", None)


def test_a_retried_settle_after_an_unseen_commit_carries_on(env: dict[str, str]) -> None:
    """Settling (finish this action, start the next) committed unseen and is retried: the retry
    recognises it is done and hands back the action it started, instead of LeaseLost with the
    next action left running."""
    from qai_jobs.worker import settle
    from qai_jobs.worker.attempt import Outcome, Verdict

    settings = settings_for(env)
    engine = engine_for(env["DATABASE_URL"])
    project = f"settle-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4(), uuid.uuid4()]
    with engine.begin() as conn:
        for action_id in ids:
            enqueue.enqueue(
                conn, action_id=action_id, project_id=project, kind="read", payload={"paths": ["a"]}
            )
    got, head, ws = _hold_and_start(engine, project, "me")
    outcome = Outcome(Verdict.SUCCEEDED, result={"files": [], "missing": ["a"]})
    first = settle.settle(engine, settings, got.lease, ws, head, outcome, None, True)
    again = settle.settle(engine, settings, got.lease, ws, head, outcome, None, True)
    assert first.following is not None and again.following is not None
    assert first.following.id == again.following.id == ids[1] and again.event_ids == []


def test_limits_come_from_the_settings_in_the_worker_too(
    env: dict[str, str], log_dir: Path, started: list[Proc]
) -> None:
    """Raising a limit for producer and worker raises it everywhere: the worker re-validates
    with the configured limits, not the defaults."""
    raised = {"WORKSPACE_MAX_TIMEOUT_S": "7200"}
    worker(started, env, log_dir, **raised)
    client = client_for(env, **raised)
    project = f"limits-{uuid.uuid4().hex[:8]}"
    assert client.command(project, "echo long", timeout_s=5000).wait(30)["stdout"] == "long\n"


def test_one_busy_project_cannot_keep_the_only_worker_slot(
    env: dict[str, str], log_dir: Path, started: list[Proc]
) -> None:
    """A project that keeps its queue full is handed to the back of the queue after its drain
    budget, so another project's action runs long before the busy one's backlog is done."""
    worker(started, env, log_dir, concurrency=1, WORKSPACE_DRAIN_BUDGET_SECONDS="0.5")
    client = client_for(env)
    busy, other = f"busy-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    handles = [client.command(busy, "sleep 0.05") for _ in range(120)]  # about 6 s of work
    time.sleep(0.3)
    quick = client.command(other, "echo quick")
    assert quick.wait(30)["stdout"] == "quick\n"
    done_when_quick_was = sum(
        1 for h in handles if client.get_action(h.id)["status"] == "succeeded"
    )
    assert done_when_quick_was < len(handles) - 20, done_when_quick_was
    handles[-1].wait(60)


def _queued_reads(engine: sa.engine.Engine, project: str, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    with engine.begin() as conn:
        for action_id in ids:
            enqueue.enqueue(
                conn, action_id=action_id, project_id=project, kind="read", payload={"paths": ["a"]}
            )
    return ids


def _turn_row(engine: sa.engine.Engine, project: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT turn, extract(epoch FROM turn_expires_at - now()) AS expires_in "
                "FROM workspaces WHERE project_id = :p"
            ),
            {"p": project},
        ).one()


def _cut_after_one(env: dict[str, str], project: str) -> Any:
    """Run the project's head action and settle it as a drain whose budget is used up."""
    from qai_jobs.db.handover import Turn
    from qai_jobs.worker import drain, settle
    from qai_jobs.worker.attempt import Outcome, Verdict

    settings = settings_for(env)
    engine = engine_for(env["DATABASE_URL"])
    got, head, ws = _hold_and_start(engine, project, "budget-holder")
    outcome = Outcome(Verdict.SUCCEEDED, result={"files": [], "missing": ["a"]})
    cut = Turn(uuid.uuid4().hex, drain.turn_seconds(settings))
    return settle.settle(engine, settings, got.lease, ws, head, outcome, None, False, cut)


def test_a_project_waiting_for_its_turn_gives_the_lease_to_its_turn_alone(
    env: dict[str, str],
) -> None:
    """A drain that used its budget gives the lease back with its turn pending: until the
    turn's message comes round, the project's other messages are refused the lease, as when
    another worker holds it (so the slot goes to other projects); the turn's message takes it,
    and after that any message may."""
    from qai_jobs.worker.drain import turn_seconds

    engine = engine_for(env["DATABASE_URL"])
    project = f"turn-{uuid.uuid4().hex[:8]}"
    _queued_reads(engine, project, 3)
    settled = _cut_after_one(env, project)
    assert settled.following is None and settled.delay == 0 and settled.turn
    row = _turn_row(engine, project)
    assert row.turn == settled.turn
    ttl = turn_seconds(settings_for(env))
    assert ttl - 5 < row.expires_in <= ttl  # bounded, like the Redis TTL it replaces
    with engine.begin() as conn:
        assert ordering.acquire(conn, project, "ordinary", ttl=30) is None
        assert ordering.acquire(conn, project, "stale-turn", ttl=30, turn="another") is None
    with engine.begin() as conn:
        got = ordering.acquire(conn, project, "the-turn", ttl=30, turn=settled.turn)
        assert got is not None
        ordering.release(conn, got.lease)
    assert tuple(_turn_row(engine, project)) == (None, None)
    with engine.begin() as conn:
        assert ordering.acquire(conn, project, "ordinary", ttl=30) is not None


def test_a_cut_with_nothing_left_to_do_leaves_no_turn_behind(env: dict[str, str]) -> None:
    """The budget ran out on the project's last action: no turn message follows, so none may
    hold the project's next action back."""
    engine = engine_for(env["DATABASE_URL"])
    project = f"turn-{uuid.uuid4().hex[:8]}"
    _queued_reads(engine, project, 1)
    settled = _cut_after_one(env, project)
    assert (settled.following, settled.delay, settled.turn) == (None, None, None)
    assert tuple(_turn_row(engine, project)) == (None, None)
    _queued_reads(engine, project, 1)
    with engine.begin() as conn:
        assert ordering.acquire(conn, project, "next-message", ttl=30) is not None


def test_a_lost_turn_holds_the_project_back_only_until_it_expires(env: dict[str, str]) -> None:
    """The turn's message is lost: recovery leaves the project alone while the turn is pending
    (a kick would only be refused), then sends its work again, and that message drains."""
    engine = engine_for(env["DATABASE_URL"])
    project = f"turn-{uuid.uuid4().hex[:8]}"
    _queued_reads(engine, project, 2)
    assert _cut_after_one(env, project).turn
    assert project not in recovery.stale_projects(engine, stale_after=0)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE workspaces SET turn_expires_at = now() - interval '1 second' "
                "WHERE project_id = :p"
            ),
            {"p": project},
        )
    assert project in recovery.stale_projects(engine, stale_after=0)
    with engine.begin() as conn:  # the kick's message, without the turn's token
        assert ordering.acquire(conn, project, "kicked", ttl=30) is not None
    assert tuple(_turn_row(engine, project)) == (None, None)


def test_a_drain_past_its_budget_hands_on_to_its_turn(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the drain: one action, then the budget's cut sends the turn's message; the
    project's ordinary messages run nothing meanwhile, and the turn's message runs the next."""
    from qai_jobs.worker import attempt, drain

    settings = settings_for({**env, "WORKSPACE_DRAIN_BUDGET_SECONDS": "0.001"})
    engine = engine_for(env["DATABASE_URL"])
    project = f"turn-{uuid.uuid4().hex[:8]}"
    ids = _queued_reads(engine, project, 3)
    ran: list[uuid.UUID] = []
    monkeypatch.setattr(attempt, "execute", lambda ctx: ran.append(ctx.action_id) or {})
    turns: list[tuple[str, str]] = []
    dispatch = drain.Dispatch(
        kick=lambda *_: None, deliver=lambda _: None, give_turn=lambda *t: turns.append(t)
    )
    assert drain.drain(settings, project, dispatch) == 1
    assert ran == ids[:1] and [p for p, _ in turns] == [project]
    assert drain.drain(settings, project, dispatch) == 0  # an ordinary message waits
    assert drain.drain(settings, project, dispatch, turn="not-its-turn") == 0
    assert drain.drain(settings, project, dispatch, turn=turns[-1][1]) == 1
    assert ran == ids[:2] and len(turns) == 2 and turns[1][1] != turns[0][1]


def test_a_cut_whose_release_committed_unseen_still_sends_its_turn(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget's release recorded the turn, but its commit was not seen and the retry finds
    the lease gone: the turn's message is sent all the same, so the project does not wait for
    the mark to expire."""
    from qai_jobs.errors import LeaseLost
    from qai_jobs.worker import attempt, drain

    settings = settings_for({**env, "WORKSPACE_DRAIN_BUDGET_SECONDS": "0.001"})
    engine = engine_for(env["DATABASE_URL"])
    project = f"turn-{uuid.uuid4().hex[:8]}"
    ids = _queued_reads(engine, project, 2)
    monkeypatch.setattr(attempt, "execute", lambda ctx: {})
    real = drain.settle_or_fail

    def committed_unseen(*args: Any) -> Any:
        real(*args)
        raise LeaseLost("the retry of a commit that succeeded unseen")

    monkeypatch.setattr(drain, "settle_or_fail", committed_unseen)
    turns: list[tuple[str, str]] = []
    dispatch = drain.Dispatch(
        kick=lambda *_: None, deliver=lambda _: None, give_turn=lambda *t: turns.append(t)
    )
    assert drain.drain(settings, project, dispatch) == 0  # the settle "failed"
    assert [t for _, t in turns] == [_turn_row(engine, project).turn]
    monkeypatch.setattr(drain, "settle_or_fail", real)
    assert drain.drain(settings, project, dispatch, turn=turns[0][1]) == 1
    client = client_for(env)
    assert [client.get_action(str(i))["status"] for i in ids] == ["succeeded", "succeeded"]


def test_foreign_messages_are_recorded_in_the_order_the_producer_sent_them(
    env: dict[str, str], log_dir: Path, started: list[Proc]
) -> None:
    """Another language's producer sends an ensure and then a command for each of many
    projects, back to back: each project's command gets the later sequence number (the worker
    records on receipt, in the broker's order, not as pool processes happen to commit)."""
    worker(started, env, log_dir, concurrency=4)
    app = Celery(broker=env["REDIS_URL"])
    app.conf.task_serializer = "json"
    sent: list[tuple[str, str, str]] = []
    for i in range(25):
        project = f"fo-{i}-{uuid.uuid4().hex[:6]}"
        for kind, kwargs in (
            ("ensure", {"start_dev_server": False}),
            ("command", {"cmd": "echo hi"}),
        ):
            task_id = str(uuid.uuid4())
            app.send_task(
                f"qai_jobs.{kind}",
                kwargs={"project_id": project, **kwargs},
                task_id=task_id,
                queue=env.get("WORKSPACE_QUEUE", "celery"),
            )
            sent.append((project, kind, task_id))
    client = client_for(env)
    for _, _, task_id in sent:
        assert client.wait_for(task_id, timeout=60)["status"] == "succeeded"
    by_project: dict[str, list[tuple[int, str]]] = {}
    for project, kind, task_id in sent:
        by_project.setdefault(project, []).append((client.get_action(task_id)["seq"], kind))
    for project, rows in by_project.items():
        assert [kind for _, kind in sorted(rows)] == ["ensure", "command"], (project, rows)


def test_beat_sweeps_run_while_the_action_queue_holds_a_backlog(
    env: dict[str, str], log_dir: Path, started: list[Proc], beats: Any
) -> None:
    """Sweeps travel on a queue of their own: a backlog of actions (here about 10 s of them on
    one worker slot) does not hold them back until they expire unrun."""
    from qai_jobs.constants import SWEEP_RUNS_KEY
    from qai_jobs.notify import client as redis_client

    worker(started, env, log_dir, concurrency=1)
    r = redis_client(env["REDIS_URL"])
    r.delete(SWEEP_RUNS_KEY + "webhooks")
    client = client_for(env)
    handles = [
        client.command(f"backlog-{i % 40}-{uuid.uuid4().hex[:4]}", "sleep 0.05") for i in range(200)
    ]
    beats(**{k: v for k, v in env.items() if k not in ("WORKSPACE_HEARTBEAT_SECONDS",)})
    deadline = time.monotonic() + 30
    while r.llen(SWEEP_RUNS_KEY + "webhooks") < 3:
        assert time.monotonic() < deadline, "the webhooks sweep did not run behind the backlog"
        time.sleep(0.1)
    queued = sum(1 for h in handles if client.get_action(h.id)["status"] == "queued")
    assert queued > 50, f"the backlog was gone already ({queued} queued): nothing was shown"
    for h in handles:
        h.wait(120)


def test_an_outcome_postgres_refuses_fails_the_action_at_once(env: dict[str, str]) -> None:
    """Whatever Postgres cannot store (here a NUL, which jsonb refuses) ends the action failed
    with result_rejected, and the next action starts: never an action left running."""
    from qai_jobs.worker import settle
    from qai_jobs.worker.attempt import Outcome, Verdict

    settings = settings_for(env)
    engine = engine_for(env["DATABASE_URL"])
    project = f"refused-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4(), uuid.uuid4()]
    with engine.begin() as conn:
        for action_id in ids:
            enqueue.enqueue(
                conn, action_id=action_id, project_id=project, kind="command", payload={"cmd": "x"}
            )
    got, head, ws = _hold_and_start(engine, project, "me")
    bad = Outcome(Verdict.SUCCEEDED, result={"stdout": "a\x00b"})
    settled = settle.settle_or_fail(engine, settings, got.lease, ws, head, bad, None, True)
    assert settled.following is not None and settled.following.id == ids[1]
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, error->>'code' AS code FROM actions WHERE id = :id"),
            {"id": ids[0]},
        ).one()
    assert (row.status, row.code) == ("failed", "result_rejected")
