"""One attempt at one action: run it through the runner and decide what it came to.

A transient provider error is retried with exponential backoff and full jitter (kept in
Postgres by the caller, so the action keeps its place at the head), up to
``WORKSPACE_MAX_ATTEMPTS``; anything else is final. Only a final failure announces
``workspace.error``.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.cancel import Cancel
from qai_jobs.config import Settings
from qai_jobs.constants import WorkspaceStatus
from qai_jobs.db import file_record, history, manifest, ordering, snapshots
from qai_jobs.db.workspace_state import WorkspaceState, last_activity
from qai_jobs.errors import (
    DeadlineExceeded,
    ErrorCode,
    LeaseLost,
    QaiJobsError,
    SandboxGone,
    TransientError,
)
from qai_jobs.events import Event, error_event
from qai_jobs.logs import for_action
from qai_jobs.runner import ActionContext, execute
from qai_jobs.schemas import IDEMPOTENT_KINDS
from qai_jobs.sealing import unseal_payload
from qai_jobs.validation import PayloadLimits, validate_payload
from qai_jobs.worker.heartbeat import Heartbeat
from qai_jobs.worker.progress import Notices, output_publisher, progress_writer


class Verdict(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"


@dataclass
class Outcome:
    verdict: Verdict
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    delay: float = 0.0
    events: list[Event] = field(default_factory=list)


# Kinds that may install and start the dev server (after a wake, restore or rebuild too).
_STARTING_KINDS = frozenset({"ensure", "wake", "restore", "preview"})


def deadline_seconds(settings: Settings, action: ordering.Started) -> float:
    """How long ``action`` may run before it is stopped with deadline_exceeded."""
    if action.kind == "command":
        timeout = action.payload.get("timeout_s", 300)
        timeout = float(timeout) if isinstance(timeout, int | float) else 300.0
        return timeout + settings.workspace_deadline_margin_seconds
    base = settings.workspace_action_deadline_seconds
    if action.kind in _STARTING_KINDS:
        base += settings.workspace_install_timeout_seconds
        base += settings.workspace_dev_server_timeout_seconds
    return base


def retries(settings: Settings, action: ordering.Started) -> bool:
    """Whether a stopped or transiently failed attempt of ``action`` runs again."""
    return action.attempts < settings.workspace_max_attempts


def backoff(settings: Settings, attempts: int) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's recommendation)."""
    ceiling = min(
        settings.workspace_retry_max_seconds,
        settings.workspace_retry_base_seconds * 2 ** max(0, attempts - 1),
    )
    return random.uniform(0, ceiling)


def run_one(
    settings: Settings,
    engine: Engine,
    lease: ordering.Lease,
    ws: WorkspaceState,
    action: ordering.Started,
    beat: Heartbeat,
    cancel: Cancel,
    notices: Notices,
) -> tuple[Outcome, ActionContext | None]:
    alog = for_action(lease.project_id, action.id)
    try:
        payload = validate_payload(
            action.kind,
            unseal_payload(settings, action.payload),
            PayloadLimits.from_settings(settings),
        )
    except QaiJobsError as exc:
        error = {**exc.to_dict(), "code": ErrorCode.INVALID_PAYLOAD}
        events = [error_event(error, action.kind, 1)]
        return Outcome(Verdict.FAILED, error=error, events=events), None

    def lost_since(snapshot_id: str | None) -> list[dict[str, object]]:
        return history.lost_since(engine, lease.project_id, action.seq, snapshot_id)

    def recorded_manifest() -> manifest.Manifest:
        if action.manifest is not None:  # read when the action started, in that transaction
            return action.manifest
        with engine.connect() as conn:
            return manifest.read(conn, lease.project_id)

    def activity() -> datetime | None:
        with engine.connect() as conn:
            return last_activity(conn, lease.project_id)

    def snapshot_owner(snapshot_id: str) -> str | None:
        with engine.connect() as conn:
            return snapshots.owner(conn, snapshot_id)

    def still_ours() -> None:  # between steps: stop before doing more
        beat.check()
        cancel.check()

    ctx = ActionContext(
        settings=settings,
        action_id=action.id,
        kind=action.kind,
        payload=payload,
        ws=ws,
        progress=progress_writer(notices, beat.note_stage, still_ours),
        output=output_publisher(notices) if action.kind == "command" else None,
        record=file_record.RecordReader(engine, lease.project_id),
        lost=lost_since,
        manifest=recorded_manifest,
        last_activity=activity,
        snapshot_owner=snapshot_owner,
        cancel=cancel,
    )
    alog.info("%s started (attempt %d)", action.kind, action.attempts)
    try:
        result = execute(ctx)
    except LeaseLost:
        raise  # another worker owns the project now: record nothing
    except DeadlineExceeded as exc:
        error = exc.to_dict()
        if action.kind in IDEMPOTENT_KINDS and retries(settings, action):
            delay = backoff(settings, action.attempts)
            return Outcome(Verdict.RETRY, error={**error, "retryable": True}, delay=delay), ctx
        return _failed(ctx, action, error), ctx
    except (TransientError, SandboxGone) as exc:
        if isinstance(exc, SandboxGone):
            ws.status = WorkspaceStatus.ERROR  # the next attempt reconciles and recreates
        if retries(settings, action):
            delay = backoff(settings, action.attempts)
            return Outcome(Verdict.RETRY, error=exc.to_dict(), delay=delay), ctx
        return _failed(ctx, action, exc.to_dict()), ctx
    except QaiJobsError as exc:
        return _failed(ctx, action, exc.to_dict()), ctx
    except (sa.exc.OperationalError, redis.RedisError) as exc:
        # Our own infrastructure (Postgres, Redis) failing under the action is transient.
        alog.warning("%s: infrastructure error %s", action.kind, type(exc).__name__)
        error = {
            "code": ErrorCode.INFRASTRUCTURE_UNAVAILABLE,
            "message": f"Postgres or Redis failed: {type(exc).__name__}",
            "retryable": True,
        }
        if retries(settings, action):
            return Outcome(
                Verdict.RETRY, error=error, delay=backoff(settings, action.attempts)
            ), ctx
        return _failed(ctx, action, error), ctx
    except Exception as exc:  # a bug or an unmapped library error: fail, and keep the trace
        alog.exception("%s raised unexpectedly", action.kind)
        error = {
            "code": ErrorCode.INTERNAL_ERROR,
            "message": f"{type(exc).__name__}: {exc}"[:2000],
            "retryable": False,
        }
        return _failed(ctx, action, error), ctx
    return Outcome(Verdict.SUCCEEDED, result=dict(result), events=list(ctx.events)), ctx


def _failed(ctx: ActionContext, action: ordering.Started, error: dict[str, Any]) -> Outcome:
    if error.get("code") == ErrorCode.MANIFEST_STALE:  # a step of delta sync, not an error
        if ctx.ws.status == WorkspaceStatus.PROVISIONING:
            ctx.ws.status = WorkspaceStatus.READY  # refused after provisioning: the sandbox is up
        return Outcome(Verdict.FAILED, error=error)
    if ctx.ws.status in (WorkspaceStatus.PROVISIONING, WorkspaceStatus.NEW):
        ctx.ws.status = WorkspaceStatus.ERROR
    events = [error_event(error, action.kind, action.attempts)]
    return Outcome(Verdict.FAILED, error=error, events=events)


def log_outcome(project_id: str, action: ordering.Started, outcome: Outcome) -> None:
    alog = for_action(project_id, action.id)
    error = outcome.error or {}
    if outcome.verdict is Verdict.SUCCEEDED:
        alog.info("%s succeeded", action.kind)
    elif outcome.verdict is Verdict.RETRY:
        alog.warning(
            "%s failed transiently (%s); retrying in %.2fs",
            action.kind,
            error.get("code"),
            outcome.delay,
        )
    elif error.get("code") == ErrorCode.MANIFEST_STALE:
        alog.info("%s refused a stale delta; the producer sends its full tree", action.kind)
    else:
        alog.error("%s failed: %s: %s", action.kind, error.get("code"), error.get("message"))
