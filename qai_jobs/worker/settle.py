"""Settling a drained action: its outcome, the workspace's changes and the next start, in one
fenced transaction (``qai_jobs.db.handover`` holds the folded statements).

The drain (``qai_jobs.worker.drain``) calls :func:`settle_or_fail` after each action; a retry
of the transaction whose first commit succeeded unseen finds the action already moved on and
leaves what it did standing.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.config import Settings
from qai_jobs.constants import ActionStatus
from qai_jobs.db import handover, manifest, ordering, outbox, snapshots
from qai_jobs.db.session import db_retry
from qai_jobs.db.workspace_state import MUTABLE, WorkspaceState, write_changes
from qai_jobs.errors import ErrorCode
from qai_jobs.events import error_event
from qai_jobs.logs import for_action
from qai_jobs.runner import ActionContext
from qai_jobs.worker.attempt import Outcome, Verdict


@dataclass
class Settlement:
    following: ordering.Started | None  # the next action, started; None: the lease is back
    event_ids: list[str]
    delay: float | None = None  # with no next action: seconds until one is due
    turn: str | None = None  # the fairness turn the release recorded (its token)


def settle_or_fail(
    engine: Engine,
    settings: Settings,
    lease: ordering.Lease,
    ws: WorkspaceState,
    action: ordering.Started,
    outcome: Outcome,
    ctx: ActionContext | None,
    start_another: bool,
    turn: handover.Turn | None = None,
) -> Settlement:
    """Settle; if Postgres refuses what the action produced (a value it cannot store, say),
    fail the action with result_rejected at once instead of leaving it running: first with
    the runner's changes to the workspace, then (if those are what it refuses) without."""
    error = {
        "code": ErrorCode.RESULT_REJECTED,
        "message": "Postgres could not store the action's outcome",
        "retryable": False,
    }
    refused = Outcome(
        Verdict.FAILED, error=error, events=[error_event(error, action.kind, action.attempts)]
    )
    for attempt, (what, context) in enumerate(((outcome, ctx), (refused, None))):
        try:
            return settle(engine, settings, lease, ws, action, what, context, start_another, turn)
        except sa.exc.DBAPIError as exc:
            if isinstance(exc, sa.exc.OperationalError) or exc.connection_invalidated:
                raise
            if attempt == 0:
                for_action(lease.project_id, action.id).error(
                    "Postgres refused the %s's outcome: %s", action.kind, type(exc.orig).__name__
                )
    ws.revert(*MUTABLE)  # what the runner changed is what Postgres refuses: keep the row
    return settle(engine, settings, lease, ws, action, refused, None, start_another, turn)


@db_retry
def settle(
    engine: Engine,
    settings: Settings,
    lease: ordering.Lease,
    ws: WorkspaceState,
    action: ordering.Started,
    outcome: Outcome,
    ctx: ActionContext | None,
    start_another: bool,
    turn: handover.Turn | None = None,
) -> Settlement:
    """One fenced transaction: workspace changes, the action's status, outbox rows, and the
    start of the next action, or, with none to start, the lease given back (recording
    ``turn``, the budget's cut, when the head is due)."""
    with engine.begin() as conn:
        touch = ctx is None or ctx.counts_as_activity
        if handover.fence_for_settle(conn, lease, settings.lease_seconds, action.id, touch=touch):
            # A retry of this very transaction, whose first commit succeeded unseen: what it
            # did stands (its webhook deliveries are left to the sweep).
            ws.mark_clean()
            following = handover.own_running(conn, lease) if start_another else None
            if following is not None:
                return Settlement(handover.with_manifest(conn, lease, following), [])
            handed = handover.start_or_release(conn, lease, start=False, turn=turn)
            return Settlement(None, [], handed.due_in, handed.turn)
        changed = write_changes(conn, ws)
        # An asynchronous commit only for a step that loses nothing else (handover.RELAXED_KINDS)
        relaxed = (
            action.kind in handover.RELAXED_KINDS
            and action.attempts < settings.workspace_max_attempts
            and not outcome.events
            and not (ctx is not None and ctx.snapshots)
            and not changed
        )
        if ctx is not None and ctx.snapshots:
            taken = [(t.snapshot_id, t.kind, t.manifest) for t in ctx.snapshots]
            snapshots.record(conn, lease.project_id, ws.provider or "", taken)
        succeeded = outcome.verdict is Verdict.SUCCEEDED
        if succeeded and ctx is not None and ctx.manifest_update is not None:
            manifest.apply(conn, lease.project_id, action.seq, ctx.manifest_update)
        finish: handover.Finish | None = None
        if outcome.verdict is Verdict.RETRY:
            ordering.retry_later(
                conn, lease, action.id, error=outcome.error or {}, delay=outcome.delay
            )
        else:
            status = ActionStatus.SUCCEEDED if succeeded else ActionStatus.FAILED
            finish = handover.Finish(action.id, status, outcome.result, outcome.error)
        event_ids = outbox.record_events(
            conn, settings, lease.project_id, action.id, outcome.events
        )
        handed = handover.start_or_release(
            conn, lease, start=start_another, finish=finish, turn=turn, relaxed=relaxed
        )
    ws.mark_clean()
    return Settlement(handed.started, event_ids, handed.due_in, handed.turn)
