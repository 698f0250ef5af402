"""A running action's notices through the drain, in this process: a quick write's stages and
done take one Redis round trip; an action in a long call still shows its stage in about
0.5 s; an action that ends without settling here (lost lease) sends none of what it held, an
abandoned one sends it before its done."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from qai_jobs.db import enqueue
from qai_jobs.db.session import engine_for
from qai_jobs.runner import ActionContext
from qai_jobs.worker import attempt, drain, progress
from tests.conftest import settings_for
from tests.support.roundtrips import Listener, count_publishes


def _dispatch() -> drain.Dispatch:
    return drain.Dispatch(kick=lambda *_: None, deliver=lambda _: None, give_turn=lambda *_: None)


def _queue(
    env: dict[str, str], project: str, *actions: tuple[str, dict[str, Any]]
) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in actions]
    with engine_for(env["DATABASE_URL"]).begin() as conn:
        for action_id, (kind, payload) in zip(ids, actions, strict=True):
            enqueue.enqueue(
                conn, action_id=action_id, project_id=project, kind=kind, payload=payload
            )
    return ids


@pytest.fixture
def project() -> str:
    return f"notices-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def listening(isolated_env: dict[str, str]) -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def _stage(name: str, done: int | None = None, total: int | None = None) -> dict[str, Any]:
    return {"type": "progress", "stage": name, "done": done, "total": total}


def test_a_quick_write_pays_one_round_trip_for_its_stages_and_done(
    isolated_env: dict[str, str],
    project: str,
    monkeypatch: pytest.MonkeyPatch,
    listening: list[Listener],
) -> None:
    """Two writes on the fake provider, the first provisioning the sandbox: before, each stage
    was a PUBLISH round trip of its own (3 per write here); now each action pays one pipeline.
    The throttle is as it was: "syncing 0/1" follows "provisioning" within
    STAGE_EVERY_SECONDS, so only the final count of the first write goes."""
    env = isolated_env
    first, second = _queue(
        env, project, ("write", {"files": {"a": "1"}}), ("write", {"files": {"a": "2"}})
    )
    listener = Listener(env["REDIS_URL"], [first, second])
    listening.append(listener)
    sends = count_publishes(monkeypatch, env["REDIS_URL"])
    assert drain.drain(settings_for(env), project, _dispatch()) == 2
    listener.collect(0.3)
    done = {"type": "done", "status": "succeeded"}
    assert listener.heard(first) == [_stage("provisioning"), _stage("syncing", 1, 1), done]
    assert listener.heard(second) == [_stage("syncing", 0, 1), _stage("syncing", 1, 1), done]
    assert sends == [3, 3]


def test_an_action_in_a_long_call_shows_its_stage_within_half_a_second(
    isolated_env: dict[str, str],
    project: str,
    monkeypatch: pytest.MonkeyPatch,
    listening: list[Listener],
) -> None:
    """A stage, then a sandbox create that takes long: the watchdog (waking every 0.5 s with
    the default 10 s heartbeat) sends the held stage; it is not kept for the done."""
    env = {**isolated_env, "WORKSPACE_HEARTBEAT_SECONDS": "10"}
    staged: list[float] = []

    def slow_create(ctx: ActionContext) -> dict[str, Any]:
        ctx.progress("provisioning", None, None)
        staged.append(time.monotonic())
        time.sleep(3.0)  # the provider's create
        return {}

    monkeypatch.setattr(attempt, "execute", slow_create)
    (action_id,) = _queue(env, project, ("read", {"paths": ["a"]}))
    listener = Listener(env["REDIS_URL"], [action_id])
    listening.append(listener)
    sends = count_publishes(monkeypatch, env["REDIS_URL"])
    ran: list[int] = []
    running = threading.Thread(
        target=lambda: ran.append(drain.drain(settings_for(env), project, _dispatch()))
    )
    running.start()
    listener.collect(3.6)  # while it runs: when the stage arrives
    running.join()
    assert ran == [1]
    got = listener.got[next(iter(listener.got))]
    assert [m for _, m in got] == [_stage("provisioning"), {"type": "done", "status": "succeeded"}]
    seen_after = got[0][0] - staged[0]
    # One watchdog nap (0.5 s) after the hold, with room for a loaded CI machine's scheduling;
    # held for the done it would have come after the 3 s call.
    assert progress.HOLD_SECONDS <= seen_after < 2.0, seen_after
    assert sends == [1, 1]


def test_a_lost_lease_sends_nothing_it_held(
    isolated_env: dict[str, str],
    project: str,
    monkeypatch: pytest.MonkeyPatch,
    listening: list[Listener],
) -> None:
    """Another holder takes the project while the action runs: this worker records nothing
    more, its held stage included; the next holder tells the watchers."""
    env = {**isolated_env, "WORKSPACE_HEARTBEAT_SECONDS": "0.2"}
    monkeypatch.setattr(progress, "HOLD_SECONDS", 30.0)  # the watchdog would send it first
    engine = engine_for(env["DATABASE_URL"])

    def robbed(ctx: ActionContext) -> dict[str, Any]:
        ctx.progress("provisioning", None, None)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE workspaces SET lease_owner = 'thief' WHERE project_id = :p"),
                {"p": project},
            )
        assert ctx.cancel.wait(5)  # the renewal found the lease gone
        ctx.progress("syncing", 0, 1)  # raises LeaseLost
        raise AssertionError("the lease was lost")

    monkeypatch.setattr(attempt, "execute", robbed)
    (action_id,) = _queue(env, project, ("read", {"paths": ["a"]}))
    listener = Listener(env["REDIS_URL"], [action_id])
    listening.append(listener)
    sends = count_publishes(monkeypatch, env["REDIS_URL"])
    assert drain.drain(settings_for(env), project, _dispatch()) == 0
    listener.collect(0.5)
    assert listener.heard(action_id) == [] and sends == []


def test_an_abandoned_command_sends_what_it_held_before_its_done(
    isolated_env: dict[str, str],
    project: str,
    monkeypatch: pytest.MonkeyPatch,
    listening: list[Listener],
) -> None:
    """A command that passes its deadline and does not stop is settled by the watchdog
    (drain._abandon): its held stage, then done failed, in one round trip; what the stuck
    call reports after that is never sent."""
    env = {
        **isolated_env,
        "WORKSPACE_HEARTBEAT_SECONDS": "0.2",
        "WORKSPACE_DEADLINE_MARGIN_SECONDS": "0.1",
    }
    monkeypatch.setattr(progress, "HOLD_SECONDS", 30.0)
    settings = settings_for(env)

    def stuck(ctx: ActionContext) -> dict[str, Any]:
        ctx.progress("running", None, None)
        time.sleep(1.8)  # past the deadline (0.2 s) and the grace (1 s); ignores its cancel
        ctx.progress("late", None, None)  # the action is settled: raises LeaseLost
        return {}

    monkeypatch.setattr(attempt, "execute", stuck)
    (action_id,) = _queue(env, project, ("command", {"cmd": "sleep 9", "timeout_s": 0.1}))
    listener = Listener(env["REDIS_URL"], [action_id])
    listening.append(listener)
    sends = count_publishes(monkeypatch, env["REDIS_URL"])
    assert drain.drain(settings, project, _dispatch()) == 0
    listener.collect(0.3)
    assert listener.heard(action_id) == [_stage("running"), {"type": "done", "status": "failed"}]
    assert sends == [2]
