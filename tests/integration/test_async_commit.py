"""Which drain transactions commit asynchronously (qai_jobs.db.handover.RELAXED_KINDS).

Each test records, at every commit of its own engine, the transaction's synchronous_commit as
Postgres has it then: what that commit waits for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.config import Settings
from qai_jobs.db import enqueue
from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.events import error_event
from qai_jobs.worker import drain, settle
from qai_jobs.worker.attempt import Outcome, Verdict
from tests.conftest import settings_for


class Recorded:
    def __init__(self) -> None:
        self.modes: list[str] = []


@pytest.fixture
def watched(isolated_env: dict[str, str]) -> Iterator[tuple[Engine, Recorded]]:
    engine = sa.create_engine(isolated_env["DATABASE_URL"])
    seen = Recorded()

    def before_commit(conn: sa.Connection) -> None:
        seen.modes.append(str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()))

    sa.event.listen(engine, "commit", before_commit)
    yield engine, seen
    engine.dispose()


@pytest.fixture
def settings(isolated_env: dict[str, str]) -> Settings:
    return settings_for({**isolated_env, "WORKSPACE_RUNTIME": "fake"})


def _queue(engine: Engine, *kinds: str) -> tuple[str, list[uuid.UUID]]:
    project = f"acommit-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4() for _ in kinds]
    payloads: dict[str, dict[str, Any]] = {
        "write": {"files": {"a.txt": "x"}},
        "read": {"paths": ["a.txt"]},
        "command": {"cmd": "true"},
    }
    with engine.begin() as conn:
        for action_id, kind in zip(ids, kinds, strict=True):
            enqueue.enqueue(
                conn, action_id=action_id, project_id=project, kind=kind, payload=payloads[kind]
            )
    return project, ids


def _grant(engine: Engine, settings: Settings, seen: Recorded, project: str) -> tuple[Any, str]:
    """The drain's grant (lease and head started); returns it and how it committed."""
    before = len(seen.modes)
    got = drain._acquire(engine, settings, project, f"test-{uuid.uuid4().hex[:6]}", None)
    assert got is not None and got.first is not None
    assert len(seen.modes) == before + 1
    return got, seen.modes[-1]


def _settle(
    engine: Engine,
    settings: Settings,
    seen: Recorded,
    got: Any,
    outcome: Outcome,
    ws: WorkspaceState | None = None,
) -> tuple[settle.Settlement, str]:
    before = len(seen.modes)
    done = settle.settle(engine, settings, got.lease, ws or got.ws, got.first, outcome, None, True)
    assert len(seen.modes) == before + 1
    return done, seen.modes[-1]


def test_a_write_settled_into_a_read_commits_without_waiting_for_the_flush(
    watched: tuple[Engine, Recorded], settings: Settings
) -> None:
    engine, seen = watched
    project, ids = _queue(engine, "write", "read")
    got, granted = _grant(engine, settings, seen, project)
    # The grant is durable, whatever it starts: lost, it would free the lease while its holder
    # runs the action (handover.RELAXED_KINDS).
    assert (got.first.id, granted) == (ids[0], "on")
    done, settled = _settle(engine, settings, seen, got, Outcome(Verdict.SUCCEEDED, result={}))
    assert done.following is not None and done.following.id == ids[1]
    assert settled == "off"
    # A plain transaction of the same engine is durable again: the setting was the
    # transaction's own (set_config's is_local).
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert seen.modes[-1] == "on"


@pytest.mark.parametrize("kinds", [("command", "write"), ("write", "command"), ("write", "write")])
def test_a_settle_that_ends_or_starts_a_command_is_durable(
    watched: tuple[Engine, Recorded], settings: Settings, kinds: tuple[str, str]
) -> None:
    engine, seen = watched
    project, ids = _queue(engine, *kinds)
    got, granted = _grant(engine, settings, seen, project)
    assert granted == "on"
    done, settled = _settle(engine, settings, seen, got, Outcome(Verdict.SUCCEEDED, result={}))
    assert done.following is not None and done.following.id == ids[1]
    assert settled == "on"


def test_a_write_that_announces_an_event_or_changed_the_workspace_settles_durably(
    watched: tuple[Engine, Recorded], settings: Settings
) -> None:
    engine, seen = watched
    project, _ = _queue(engine, "write", "write", "write")
    got, _ = _grant(engine, settings, seen, project)
    error = {"code": "provider_error", "message": "x", "retryable": False}
    failed = Outcome(Verdict.FAILED, error=error, events=[error_event(error, "write", 1)])
    done, settled = _settle(engine, settings, seen, got, failed)
    assert settled == "on"  # its workspace.error webhook must not be lost
    assert done.following is not None
    got.first = done.following
    got.ws.status = "sleeping"  # as a runner that changed the workspace row leaves it
    _, settled = _settle(engine, settings, seen, got, Outcome(Verdict.SUCCEEDED, result={}))
    assert settled == "on"
