"""The drainer: holds a project's lease and runs its queued actions in order.

Called by every action task (and by recovery kicks). Celery gives neither exclusion nor order,
so a task here only says "project P has work"; whichever task gets the lease does the work for
all of them, and the others leave at once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.config import Settings
from qai_jobs.db import manifest, ordering
from qai_jobs.db.session import db_retry, engine_for
from qai_jobs.db.workspace_state import WorkspaceState, write_changes
from qai_jobs.errors import ErrorCode, LeaseLost, QaiJobsError, SandboxGone, TransientError
from qai_jobs.logs import for_action, for_project
from qai_jobs.notify import publish, publish_many
from qai_jobs.runner import handlers as runner
from qai_jobs.schemas import FileEntry, validate_payload
from qai_jobs.sealing import unseal_payload
from qai_jobs.worker.webhooks import error_event, record_events

log = logging.getLogger("qai_jobs.drain")

# A lease is given back after this much work so one busy project cannot hog a worker slot.
BATCH_ACTIONS = 100
BATCH_SECONDS = 30.0


@dataclass
class Dispatch:
    """How the drainer talks back to Celery (kept abstract to avoid an import cycle)."""

    kick: Callable[[str, float], None]  # (project_id, countdown seconds)
    deliver: Callable[[list[str]], None]  # outbox event ids


@dataclass
class Outcome:
    status: str  # succeeded | failed | retry
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    delay: float = 0.0
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Heartbeat(threading.Thread):
    """Renews the lease and the running action's heartbeat until stopped."""

    def __init__(self, engine: Engine, lease: ordering.Lease, settings: Settings):
        super().__init__(name=f"qai-heartbeat-{lease.project_id}", daemon=True)
        self.engine = engine
        self.lease = lease
        self.settings = settings
        self.current: uuid.UUID | None = None
        self.lost = threading.Event()
        # Not `_stop`: that name is a method of Thread, used after fork.
        self._halt = threading.Event()

    def run(self) -> None:
        renewed = time.monotonic()
        while not self._halt.wait(self.settings.workspace_heartbeat_seconds):
            try:
                with self.engine.begin() as conn:
                    held = ordering.renew(
                        conn, self.lease, self.settings.lease_seconds, self.current
                    )
            except sa.exc.SQLAlchemyError:
                # Postgres may be restarting: try again next beat, but once the lease could
                # have expired, another worker may hold the project: we must stop.
                if time.monotonic() - renewed >= self.settings.lease_seconds:
                    self.lost.set()
                    return
                continue
            if not held:
                self.lost.set()
                return
            renewed = time.monotonic()

    def check(self) -> None:
        """Raise LeaseLost if the lease is (or may be) gone: nothing more may be done."""
        if self.lost.is_set():
            raise LeaseLost(f"lease {self.lease.gen} of {self.lease.project_id} was lost")

    def stop(self) -> None:
        self._halt.set()


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def backoff(settings: Settings, attempts: int) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's recommendation)."""
    ceiling = min(
        settings.workspace_retry_max_seconds,
        settings.workspace_retry_base_seconds * 2 ** max(0, attempts - 1),
    )
    return random.uniform(0, ceiling)


def drain(settings: Settings, project_id: str, dispatch: Dispatch) -> int:
    """Run the project's due actions while holding its lease; return how many ran."""
    engine = engine_for(settings.database_url)
    ran = 0
    while True:
        owner = owner_name()
        got = _acquire(engine, settings, project_id, owner)
        if got is None:
            return ran
        lease, ws, first, settled = got
        beat = Heartbeat(engine, lease, settings)
        beat.start()
        try:
            # Redis and Celery I/O: only now, with the heartbeat keeping the lease, because
            # nothing checks the lease again before the already started first action runs.
            settled.announce(settings, dispatch)
            done, cut = _run_batch(engine, settings, lease, ws, beat, dispatch, first)
            ran += done
        except LeaseLost:
            for_project(project_id).warning("lease lost; a newer holder owns the project")
            return ran
        finally:
            beat.stop()
        delay = db_retry(_release)(engine, lease)
        if delay is None:
            return ran
        if delay > 0 or cut:
            # Not due yet (backoff), or fairness: hand the rest to a fresh message.
            dispatch.kick(project_id, delay)
            return ran
        # Due now: an action committed while we were releasing. Take the lease again.


# For commits whose loss in a Postgres crash costs only time, not correctness: no wait for the
# WAL flush (about 3 ms a commit on these disks). The next synchronous commit flushes them.
_ASYNC_COMMIT = sa.text("SET LOCAL synchronous_commit TO OFF")


def _release(engine: Engine, lease: ordering.Lease) -> float | None:
    """Release the lease, then look for work that arrived meanwhile (seconds until due).

    A lost release only leaves the lease to expire, so its commit need not wait for the disk.
    """
    with engine.begin() as conn:
        conn.execute(_ASYNC_COMMIT)
        ordering.release(conn, lease)
        return ordering.pending_delay(conn, lease.project_id)


@dataclass
class _Settled:
    """What taking the lease settled, to announce once the heartbeat runs."""

    failed: list[uuid.UUID] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)

    def announce(self, settings: Settings, dispatch: Dispatch) -> None:
        publish_many(
            settings.redis_url, [(i, {"type": "done", "status": "failed"}) for i in self.failed]
        )
        if self.event_ids:
            dispatch.deliver(self.event_ids)


@db_retry
def _acquire(
    engine: Engine, settings: Settings, project_id: str, owner: str
) -> tuple[ordering.Lease, WorkspaceState, ordering.Started | None, _Settled] | None:
    """Take the lease, settle what a dead holder left running, and start the head action if it
    is due: one transaction, so one commit waiting for the disk instead of two."""
    settled = _Settled()
    with engine.begin() as conn:
        got = ordering.acquire(
            conn, project_id, owner, settings.lease_seconds, settings.workspace_max_attempts
        )
        if got is None:
            return None
        lease, rows = got
        ws = WorkspaceState.load(conn, project_id)
        for row in rows:
            alog = for_action(project_id, row.id)
            if row.status == "failed":
                alog.warning("worker lost while running a %s: failed with worker_lost", row.kind)
                error = {
                    "code": ErrorCode.WORKER_LOST,
                    "message": "the worker running this action stopped before it finished",
                    "retryable": False,
                }
                settled.failed.append(row.id)
                settled.event_ids += record_events(
                    conn, settings, project_id, row.id, [error_event(error, row.kind, row.attempts)]
                )
            else:
                alog.warning("worker lost while running a %s: queued to run again", row.kind)
        first = ordering.start_next(conn, lease)
    return lease, ws, first, settled


def _run_batch(
    engine: Engine,
    settings: Settings,
    lease: ordering.Lease,
    ws: WorkspaceState,
    beat: Heartbeat,
    dispatch: Dispatch,
    first: ordering.Started | None,
) -> tuple[int, bool]:
    """Run due actions in order, from ``first`` (started with the lease); return how many ran
    and whether the batch limit cut it."""
    started_at = time.monotonic()
    current = first
    ran = 0
    more = True
    while current is not None:
        beat.check()
        beat.current = current.id
        outcome, ctx = _run_one(settings, engine, lease, ws, current, beat)
        more = ran + 1 < BATCH_ACTIONS and time.monotonic() - started_at < BATCH_SECONDS
        current_id, kind = current.id, current.kind
        current, event_ids = _settle(engine, settings, lease, ws, current, outcome, ctx, more)
        publish(settings.redis_url, current_id, {"type": "done", "status": outcome.status})
        if event_ids:
            dispatch.deliver(event_ids)
        _log_outcome(lease.project_id, current_id, kind, outcome)
        ran += 1
    return ran, not more


def _log_outcome(project_id: str, action_id: uuid.UUID, kind: str, outcome: Outcome) -> None:
    alog = for_action(project_id, action_id)
    if outcome.status == "succeeded":
        alog.info("%s succeeded", kind)
    elif outcome.status == "retry":
        error = outcome.error or {}
        alog.warning(
            "%s failed transiently (%s); retrying in %.2fs", kind, error.get("code"), outcome.delay
        )
    elif (outcome.error or {}).get("code") == ErrorCode.MANIFEST_STALE:
        alog.info("%s refused a stale delta; the producer sends its full tree", kind)
    else:
        error = outcome.error or {}
        alog.error("%s failed: %s: %s", kind, error.get("code"), error.get("message"))


def _run_one(
    settings: Settings,
    engine: Engine,
    lease: ordering.Lease,
    ws: WorkspaceState,
    action: ordering.Started,
    beat: Heartbeat,
) -> tuple[Outcome, runner.ActionContext | None]:
    alog = for_action(lease.project_id, action.id)
    try:
        payload = validate_payload(action.kind, unseal_payload(settings, action.payload))
    except QaiJobsError as exc:
        error = {**exc.to_dict(), "code": ErrorCode.INVALID_PAYLOAD}
        return Outcome("failed", error=error, events=[error_event(error, action.kind, 1)]), None
    ctx = runner.ActionContext(
        settings=settings,
        action_id=action.id,
        kind=action.kind,
        payload=payload,
        ws=ws,
        progress=_progress_writer(settings, engine, lease, action.id, beat.check),
        output=_output_publisher(settings, action.id) if action.kind == "command" else None,
        history=_history_loader(engine, lease.project_id, action.seq),
        manifest=_manifest_loader(engine, lease.project_id),
    )
    alog.info("%s started (attempt %d)", action.kind, action.attempts)
    try:
        result = runner.execute(ctx)
    except LeaseLost:
        raise  # another worker owns the project now: record nothing
    except (TransientError, SandboxGone) as exc:
        if isinstance(exc, SandboxGone):
            ws.status = "error"  # the next attempt reconciles and recreates
        if action.attempts < settings.workspace_max_attempts:
            return Outcome(
                "retry", error=exc.to_dict(), delay=backoff(settings, action.attempts)
            ), ctx
        return _failed(ctx, action, exc.to_dict()), ctx
    except QaiJobsError as exc:
        return _failed(ctx, action, exc.to_dict()), ctx
    except Exception as exc:  # a bug or an unmapped library error: fail, and keep the trace
        alog.exception("%s raised unexpectedly", action.kind)
        error = {
            "code": ErrorCode.INTERNAL_ERROR,
            "message": f"{type(exc).__name__}: {exc}"[:2000],
            "retryable": False,
        }
        return _failed(ctx, action, error), ctx
    return Outcome("succeeded", result=result, events=list(ctx.events)), ctx


def _failed(ctx: runner.ActionContext, action: ordering.Started, error: dict[str, Any]) -> Outcome:
    if error.get("code") == ErrorCode.MANIFEST_STALE:  # a step of delta sync, not a workspace error
        if ctx.ws.status == "provisioning":
            ctx.ws.status = "ready"  # refused after provisioning: the sandbox is there
        return Outcome("failed", error=error)
    if ctx.ws.status in ("provisioning", "new"):
        ctx.ws.status = "error"
    events = [error_event(error, action.kind, action.attempts)]
    return Outcome("failed", error=error, events=events)


@db_retry
def _settle(
    engine: Engine,
    settings: Settings,
    lease: ordering.Lease,
    ws: WorkspaceState,
    action: ordering.Started,
    outcome: Outcome,
    ctx: runner.ActionContext | None,
    start_another: bool,
) -> tuple[ordering.Started | None, list[str]]:
    """One fenced transaction: workspace changes, the action's status, outbox rows, and the
    start of the next action (saving a commit per action)."""
    with engine.begin() as conn:
        ordering.fence(conn, lease, settings.lease_seconds)
        write_changes(conn, ws)
        conn.execute(
            sa.text("UPDATE workspaces SET last_activity_at = now() WHERE project_id = :p"),
            {"p": lease.project_id},
        )
        if ctx is not None:
            for snapshot_id, kind, snap_manifest in ctx.snapshots:
                conn.execute(
                    sa.text(
                        """INSERT INTO snapshots (id, project_id, provider, kind, manifest)
                        VALUES (:id, :p, :provider, :kind, CAST(:m AS jsonb))
                        ON CONFLICT (id) DO NOTHING"""
                    ),
                    {
                        "id": snapshot_id,
                        "p": lease.project_id,
                        "provider": ws.provider or "",
                        "kind": kind,
                        "m": json.dumps(snap_manifest) if snap_manifest is not None else None,
                    },
                )
        if outcome.status == "succeeded" and ctx is not None and ctx.manifest_update is not None:
            manifest.apply(conn, lease.project_id, action.seq, ctx.manifest_update)
        if outcome.status == "retry":
            ordering.retry_later(
                conn, lease, action.id, error=outcome.error or {}, delay=outcome.delay
            )
        else:
            ordering.finish(
                conn,
                lease,
                action.id,
                status=outcome.status,
                result=outcome.result,
                error=outcome.error,
            )
        event_ids = record_events(conn, settings, lease.project_id, action.id, outcome.events)
        following = ordering.start_next(conn, lease) if start_another else None
    ws.mark_clean()
    return following, event_ids


def _progress_writer(
    settings: Settings,
    engine: Engine,
    lease: ordering.Lease,
    action_id: uuid.UUID,
    check_lease: Callable[[], None],
) -> runner.Progress:
    """Record the action's stage (throttled) so get_action and the CLI can show progress."""
    last = [0.0]
    recorded = [ordering.START_STAGE]  # what the row holds: start_next wrote it
    stmt = sa.text(
        "UPDATE actions SET stage = CAST(:stage AS jsonb) "
        "WHERE id = :id AND status = 'running' AND lease_gen = :g"
    )

    def progress(stage: str, done: int | None, total: int | None) -> None:
        check_lease()  # between steps: stop before doing more if the lease is gone
        now = time.monotonic()
        final = done is not None and done == total
        if now - last[0] < 0.2 and not final and done is not None:
            return
        last[0] = now
        value = {"stage": stage, "done": done, "total": total}
        if value != recorded[0]:
            try:
                with engine.begin() as conn:
                    conn.execute(_ASYNC_COMMIT)  # advisory: a stage lost in a crash is harmless
                    params = {"id": action_id, "g": lease.gen, "stage": json.dumps(value)}
                    conn.execute(stmt, params)
            except sa.exc.SQLAlchemyError:
                return  # progress is advisory
            recorded[0] = value
        publish(settings.redis_url, action_id, {"type": "progress", **value})

    return progress


_HISTORY = sa.text(
    """
    SELECT payload FROM actions
    WHERE project_id = :p AND kind IN ('ensure', 'write') AND status = 'succeeded'
      AND seq < :seq
      -- a destroyed workspace's files do not come back in the one that replaced it
      AND seq > coalesce((SELECT max(seq) FROM actions WHERE project_id = :p AND seq < :seq
                          AND kind = 'destroy' AND status = 'succeeded'), 0)
      AND (CAST(:snap AS text) IS NULL
           OR finished_at > (SELECT created_at FROM snapshots WHERE id = CAST(:snap AS text)))
    ORDER BY seq
    """
)


def _history_loader(engine: Engine, project_id: str, seq: int) -> runner.History:
    """The file changes of earlier successful ensure/write actions, read only when needed."""

    def load(snapshot_id: str | None) -> list[runner.FileChanges]:
        with engine.connect() as conn:
            rows = conn.execute(_HISTORY, {"p": project_id, "seq": seq, "snap": snapshot_id})
            payloads = [r.payload for r in rows]
        changes: list[runner.FileChanges] = []
        for payload in payloads:
            files = [FileEntry.model_validate(f) for f in payload.get("files") or []]
            changes.append(([(f.path, f.data()) for f in files], list(payload.get("delete") or [])))
        return changes

    return load


def _manifest_loader(engine: Engine, project_id: str) -> Callable[[], manifest.Manifest]:
    def load() -> manifest.Manifest:
        with engine.connect() as conn:
            return manifest.read(conn, project_id)

    return load


def _output_publisher(settings: Settings, action_id: uuid.UUID) -> runner.Output:
    """Live output; each chunk carries its offset so a late subscriber knows it missed some."""
    offsets: dict[str, int] = {}

    def output(stream: str, chunk: bytes) -> None:
        text = chunk.decode("utf-8", errors="replace")
        offset = offsets.get(stream, 0)
        offsets[stream] = offset + len(text)
        publish(
            settings.redis_url,
            action_id,
            {"type": "output", "stream": stream, "offset": offset, "data": text},
        )

    return output
