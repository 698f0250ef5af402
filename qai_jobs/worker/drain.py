"""The drainer: holds a project's lease and runs its queued actions in order.

Called by every action task (and by recovery kicks). Celery gives neither exclusion nor order,
so a task here only says "project P has work"; whichever task gets the lease does the work for
all of them, and the others leave at once.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.cancel import Cancel
from qai_jobs.config import Settings
from qai_jobs.constants import ActionStatus
from qai_jobs.db import handover, hosts, ordering, outbox
from qai_jobs.db.session import db_retry, engine_for
from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.errors import DeadlineExceeded, LeaseLost, WorkerLost
from qai_jobs.events import error_event
from qai_jobs.logs import for_action, for_project
from qai_jobs.monitoring import Monitor
from qai_jobs.notify import publish_many
from qai_jobs.schemas import IDEMPOTENT_KINDS
from qai_jobs.worker.attempt import (
    Verdict,
    backoff,
    deadline_seconds,
    log_outcome,
    retries,
    run_one,
)
from qai_jobs.worker.heartbeat import Heartbeat, Watched
from qai_jobs.worker.progress import Notices
from qai_jobs.worker.settle import settle_or_fail

# A lease is given back after this many actions or WORKSPACE_DRAIN_BUDGET_SECONDS, so one busy
# project cannot hog a worker slot; the rest goes to a fresh message at the back of the queue.
# The budget covers every batch of one drain, so a project whose producer keeps enqueueing
# cannot keep the slot either.
BATCH_ACTIONS = 100


def turn_seconds(settings: Settings) -> float:
    """How long a given-up slot's turn holds the project's other messages back: long enough
    for its message to come round the queue, short enough that a lost one costs little."""
    return max(1, int(settings.workspace_drain_budget_seconds * 4 + 30))


@dataclass
class Dispatch:
    """How the drainer talks back to Celery (injected by the tasks, which own the app)."""

    kick: Callable[[str, float], None]  # (project_id, countdown seconds)
    deliver: Callable[[list[str]], None]  # outbox event ids
    # The project used up its budget and its release recorded a turn (project_id, token): its
    # next drain is a message at the back of the queue carrying the token, and the messages it
    # already has in the queue are refused the lease until then (ordering._ACQUIRE).
    give_turn: Callable[[str, str], None]
    # The project's workspace lives on another live host: its work goes to that host's queue.
    forward: Callable[[str, str], None] = lambda project_id, host_id: None
    # Task events for an action with no message of its own (qai_jobs.monitoring).
    monitor: Monitor = field(default_factory=Monitor)


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def drain(settings: Settings, project_id: str, dispatch: Dispatch, turn: str | None = None) -> int:
    """Run the project's due actions while holding its lease; return how many ran.

    The lease is taken together with starting the head action, and given back together with
    settling the last one: a project with one action at a time pays two transactions for it.
    ``turn``: this message is the project's fairness turn (its token); while another turn is
    pending the lease is refused, as when another holder has it, and nothing runs.
    """
    engine = engine_for(settings.database_url)
    began = time.monotonic()
    ran = 0
    while True:
        got = _acquire(engine, settings, project_id, owner_name(), turn)
        turn = None  # the grant cleared the mark: a later round takes the lease as any other
        if got is None:
            return ran
        cut = False
        given: str | None = None
        if got.forward is not None:
            got.settled.announce(settings, dispatch)
            dispatch.forward(project_id, got.forward)
            return ran
        if got.first is None:  # nothing due: the lease was given back in the same transaction
            got.settled.announce(settings, dispatch)
            delay = got.delay
        else:
            beat = Heartbeat(
                engine,
                got.lease,
                settings,
                abandon=partial(_abandon, engine, settings, got.lease, dispatch=dispatch),
            )
            beat.start()
            try:
                # Redis and Celery I/O only now, with the heartbeat keeping the lease: nothing
                # checks the lease again before the already started first action runs.
                got.settled.announce(settings, dispatch)
                done, cut, delay, given = _run_batch(
                    engine, settings, got.lease, got.ws, beat, dispatch, got.first, began
                )
                ran += done
            except LeaseLost:
                for_project(project_id).warning("lease lost; a newer holder owns the project")
                return ran
            finally:
                beat.stop()
                dispatch.monitor.flush()  # the last finish, however the batch ended
        if delay is None:
            return ran
        if delay > 0:  # not due yet (backoff)
            dispatch.kick(project_id, delay)
            return ran
        if given is not None:
            dispatch.give_turn(project_id, given)  # fairness: the rest waits its turn
            return ran
        if cut or time.monotonic() - began >= settings.workspace_drain_budget_seconds:
            # The budget ran out when the release had nothing due to hold a turn for (an
            # action came due since): the rest goes to the back of the queue, unheld.
            dispatch.kick(project_id, 0.0)
            return ran
        # Due now: an action committed while the lease was being given back. Take it again.


@dataclass
class _Settled:
    """What taking the lease settled, to announce once the heartbeat runs."""

    failed: list[uuid.UUID] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    # Actions without a message of their own, with their verdict: the drain that started them
    # told monitoring they started, so this one tells it how they ended.
    unmessaged: list[tuple[uuid.UUID, Verdict]] = field(default_factory=list)

    def announce(self, settings: Settings, dispatch: Dispatch) -> None:
        done = {"type": "done", "status": ActionStatus.FAILED}
        publish_many(settings.redis_url, [(i, done) for i in self.failed])
        if self.event_ids:
            dispatch.deliver(self.event_ids)
        if self.unmessaged:
            for action_id, verdict in self.unmessaged:
                dispatch.monitor.finished(action_id, verdict, 0.0)
            dispatch.monitor.flush()


@dataclass
class _Acquired:
    lease: ordering.Lease
    ws: WorkspaceState
    first: ordering.Started | None  # the head action, started; None: the lease is given back
    settled: _Settled
    delay: float | None = None  # with no head: seconds until the next action is due
    forward: str | None = None  # another live host holds the workspace: the lease is given back


@db_retry
def _acquire(
    engine: Engine, settings: Settings, project_id: str, owner: str, turn: str | None
) -> _Acquired | None:
    """Take the lease, settle what a dead holder left running, and start the head action if it
    is due, or give the lease back at once if none is: one transaction either way. None: the
    lease is held, or the project waits for another message's turn."""
    settled = _Settled()
    with engine.begin() as conn:
        got = ordering.acquire(
            conn,
            project_id,
            owner,
            settings.lease_seconds,
            settings.workspace_max_attempts,
            settings.workspace_host_dead_seconds,
            turn=turn,
        )
        if got is None:
            return None
        lease = got.lease
        holder = hosts.claim(
            conn,
            project_id,
            settings.workspace_host_id,
            settings.workspace_host_dead_seconds,
            settings.workspace_runtime[0] == "local",
            seen=got.workspace,
        )
        if holder.moved_from is not None:
            for_project(project_id).warning(
                "host %s is gone: its workspace moves here", holder.moved_from
            )
        # As the grant left it; a placement by claim changes host_id, which it does not hold.
        ws = WorkspaceState.from_row(project_id, got.workspace)
        for row in got.settled:
            alog = for_action(project_id, row.id)
            if not row.messaged:
                failed = row.status == ActionStatus.FAILED
                settled.unmessaged.append((row.id, Verdict.FAILED if failed else Verdict.RETRY))
            if row.status == ActionStatus.FAILED:
                alog.warning("worker lost while running a %s: failed with worker_lost", row.kind)
                error = WorkerLost().to_dict()
                settled.failed.append(row.id)
                event = error_event(error, row.kind, row.attempts)
                settled.event_ids += outbox.record_events(
                    conn, settings, project_id, row.id, [event]
                )
            else:
                alog.warning("worker lost while running a %s: queued to run again", row.kind)
        if holder.forward is not None:
            # Refused: nothing of it runs here; the holding host's own queue gets the work.
            ordering.release(conn, lease)
            return _Acquired(lease, ws, None, settled, forward=holder.forward)
        delay: float | None = None
        if got.readopted is not None:
            first = handover.with_manifest(conn, lease, got.readopted)
        else:
            handed = handover.start_or_release(conn, lease)
            first, delay = handed.started, handed.due_in
    return _Acquired(lease, ws, first, settled, delay)


def _run_batch(
    engine: Engine,
    settings: Settings,
    lease: ordering.Lease,
    ws: WorkspaceState,
    beat: Heartbeat,
    dispatch: Dispatch,
    first: ordering.Started,
    started_at: float,
) -> tuple[int, bool, float | None, str | None]:
    """Run due actions in order, from ``first`` (started with the lease), until none is due or
    the budget (counted from ``started_at``) is used; the last settle gives the lease back.
    Returns how many ran, whether the budget cut it, the seconds until the next is due, and
    the fairness turn the cut recorded."""
    current: ordering.Started | None = first
    ran = 0
    more = True
    delay: float | None = None
    turn: str | None = None
    while current is not None:
        beat.check()
        cancel = Cancel()
        notices = Notices(settings.redis_url, current.id)
        beat.watch(current, cancel, deadline_seconds(settings, current), notices)
        if not current.messaged:
            dispatch.monitor.started(current.kind, lease.project_id, current.id, current.attempts)
        action_began = time.monotonic()
        outcome, ctx = run_one(settings, engine, lease, ws, current, beat, cancel, notices)
        beat.check()  # lost, or abandoned and settled by the watchdog: record nothing
        budget = settings.workspace_drain_budget_seconds
        more = ran + 1 < BATCH_ACTIONS and time.monotonic() - started_at < budget
        action = current
        # The budget's cut: the release records the project's fairness turn.
        offered = None if more else handover.Turn(uuid.uuid4().hex, turn_seconds(settings))
        try:
            settlement = settle_or_fail(
                engine, settings, lease, ws, action, outcome, ctx, more, offered
            )
        except LeaseLost:
            if offered is not None:
                # A retried release whose first commit recorded the turn unseen finds the
                # lease gone: the turn's message must follow all the same, or the project
                # waits for the mark to expire. Had it not been recorded, the message is
                # one more ordinary drain message.
                dispatch.give_turn(lease.project_id, offered.token)
            raise
        beat.done()
        current, delay, turn = settlement.following, settlement.delay, settlement.turn
        # Its held stages, then done, in one round trip; a failed action's too, where a
        # watcher sees how far it got, as when each stage went out at once.
        notices.finish({"type": "done", "status": outcome.verdict})
        if not action.messaged:
            dispatch.monitor.finished(action.id, outcome.verdict, time.monotonic() - action_began)
        if settlement.event_ids:
            dispatch.deliver(settlement.event_ids)
        log_outcome(lease.project_id, action, outcome)
        ran += 1
    return ran, not more, delay, turn


def _abandon(
    engine: Engine,
    settings: Settings,
    lease: ordering.Lease,
    watched: Watched,
    *,
    dispatch: Dispatch,
) -> None:
    """Settle an action whose call did not come back after its deadline's cancel, give the
    lease back and hand the project to another drain (the watchdog's thread calls this)."""
    action = watched.action
    alog = for_action(lease.project_id, action.id)
    error = DeadlineExceeded(
        f"the {action.kind} passed its deadline and did not stop; it was abandoned"
    ).to_dict()
    again = action.kind in IDEMPOTENT_KINDS and retries(settings, action)
    event_ids: list[str] = []
    try:
        with engine.begin() as conn:
            ordering.fence(conn, lease, settings.lease_seconds)
            if again:
                delay = backoff(settings, action.attempts)
                ordering.retry_later(conn, lease, action.id, error=error, delay=delay)
            else:
                ordering.finish(conn, lease, action.id, status=ActionStatus.FAILED, error=error)
                event = error_event(error, action.kind, action.attempts)
                event_ids = outbox.record_events(
                    conn, settings, lease.project_id, action.id, [event]
                )
            ordering.release(conn, lease)
    except (sa.exc.SQLAlchemyError, LeaseLost) as exc:
        # The lease expires on its own; recovery settles the action then.
        alog.warning("could not settle the abandoned %s: %s", action.kind, type(exc).__name__)
        return
    alog.error(
        "%s abandoned after its deadline (%s)", action.kind, "retrying" if again else "failed"
    )
    # Its held stages go out (before the done if it failed), and whatever the stuck call
    # reports later does not: the action is settled.
    watched.notices.finish(None if again else {"type": "done", "status": ActionStatus.FAILED})
    if not again:
        dispatch.deliver(event_ids)
    if not action.messaged:  # monitoring heard it start from this drain: tell it the end
        dispatch.monitor.finished(action.id, Verdict.RETRY if again else Verdict.FAILED, 0.0)
        dispatch.monitor.flush()
    dispatch.kick(lease.project_id, 0.0)
