"""The kinds that change a sandbox's life rather than work inside it: sleep, wake, snapshot,
restore and destroy.

Apart from the other handlers (``handlers``, which holds the table of every kind) because they
change with the providers' lifecycle and the snapshot record, not with files and processes:
between them they record the snapshots taken or restored, clear the file record when the tree
is replaced or gone, and emit the sleeping, ready and destroyed events.
"""

from __future__ import annotations

from qai_jobs import schemas as s
from qai_jobs.constants import WorkspaceStatus
from qai_jobs.db.manifest import ManifestUpdate
from qai_jobs.errors import ErrorCode, PermanentError, QaiJobsError
from qai_jobs.events import Event, EventType
from qai_jobs.providers.base import SandboxStatus
from qai_jobs.results import DestroyResult, RestoreResult, SleepResult, SnapshotResult, WakeResult
from qai_jobs.runner.context import ActionContext, TakenSnapshot
from qai_jobs.runner.devserver import after_start, ready_event
from qai_jobs.runner.reconcile import has_sandbox, prepare, running_sandbox


def sleep(ctx: ActionContext, p: s.SleepPayload) -> SleepResult:
    ws = ctx.ws
    sweeping = p.idle_since is not None
    if sweeping:
        ctx.counts_as_activity = False  # the idle sweep's own sleep is nobody's activity
        last = ctx.last_activity()
        if last is not None and p.idle_since is not None and last > p.idle_since:
            # Enqueued just after something happened (an action that started the dev server, a
            # preview request): the workspace is no longer idle.
            return {"snapshot_id": None, "skipped": True}
    if not has_sandbox(ws) or ws.status == WorkspaceStatus.SLEEPING:
        return {"snapshot_id": ws.last_snapshot_id if has_sandbox(ws) else None}
    sb = ws.sb
    assert sb is not None
    provider = ctx.provider
    found = provider.status(sb)
    if found is SandboxStatus.SLEEPING:  # asleep already (paused behind our back)
        ws.status = WorkspaceStatus.SLEEPING
        if not provider.keeps_processes_asleep:
            ws.dev_process = None
        return {"snapshot_id": ws.last_snapshot_id}
    if found is SandboxStatus.GONE:
        if sweeping:  # nothing to put to sleep; the next action rebuilds it
            return {"snapshot_id": None, "skipped": True}
        sb, _ = running_sandbox(ctx)
    ctx.progress("sleeping", None, None)
    manifest = provider.hashes(sb)
    outcome = provider.sleep(sb)
    ws.set_sandbox(outcome.sandbox)
    if ws.sandbox is not None:
        ws.sandbox = {**ws.sandbox, "sleep_manifest": manifest}
    if not provider.keeps_processes_asleep:
        ws.dev_process = None
    ws.status = WorkspaceStatus.SLEEPING
    if outcome.snapshot_id:
        ws.last_snapshot_id = outcome.snapshot_id
        ctx.snapshots.append(TakenSnapshot(outcome.snapshot_id, "sleep", manifest))
    ctx.events.append(Event(EventType.SLEEPING, {"snapshot_id": outcome.snapshot_id}))
    return {"snapshot_id": outcome.snapshot_id}


def wake(ctx: ActionContext, p: s.EmptyPayload) -> WakeResult:
    sb = prepare(ctx)
    preview_url = after_start(ctx, sb)
    ready_event(ctx, sb)
    return {"preview_url": preview_url}


def snapshot(ctx: ActionContext, p: s.EmptyPayload) -> SnapshotResult:
    sb = prepare(ctx)
    provider = ctx.provider
    ctx.progress("snapshotting", None, None)
    manifest = provider.hashes(sb)
    snapshot_id = provider.snapshot(sb)
    ctx.ws.last_snapshot_id = snapshot_id
    ctx.snapshots.append(TakenSnapshot(snapshot_id, "snapshot", manifest))
    return {"snapshot_id": snapshot_id}


def restore(ctx: ActionContext, p: s.RestorePayload) -> RestoreResult:
    owner = ctx.snapshot_owner(p.snapshot_id)
    if owner is not None and owner != ctx.ws.project_id:
        # Another project's files: refused as if unknown, before anything changes.
        raise PermanentError(
            f"snapshot {p.snapshot_id} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
        )
    sb = prepare(ctx)
    ctx.progress("restoring", None, None)
    if ctx.ws.dev_process:
        ctx.provider.stop_process(sb, ctx.ws.dev_process)
        ctx.ws.dev_process = None
    sb = ctx.provider.restore(sb, p.snapshot_id)
    ctx.ws.set_sandbox(sb)
    ctx.ws.last_snapshot_id = p.snapshot_id
    # The tree is now the snapshot's: a rebuild starts from it, and what qai-jobs wrote or
    # deleted before the restore must not be re-applied on top (nor a delta computed before it).
    ctx.manifest_update = ManifestUpdate(clear=True)
    preview_url = after_start(ctx, sb)
    ready_event(ctx, sb)
    return {"preview_url": preview_url}


def destroy(ctx: ActionContext, p: s.EmptyPayload) -> DestroyResult:
    ws = ctx.ws
    ctx.manifest_update = ManifestUpdate(clear=True)
    if not has_sandbox(ws):
        return {}
    sb = ws.sb
    assert sb is not None
    provider = ctx.provider
    ctx.progress("destroying", None, None)
    if ws.dev_process:
        try:
            provider.stop_process(sb, ws.dev_process)
        except QaiJobsError:
            pass  # the sandbox is about to go anyway
    provider.destroy(sb)
    ws.set_sandbox(None)
    ws.status = WorkspaceStatus.DESTROYED
    ws.preview_url = None
    ws.dev_process = None
    ws.install_hash = None
    ws.repo = None
    ws.last_snapshot_id = None  # a workspace that comes back starts empty, not from these
    ctx.events.append(Event(EventType.DESTROYED, {"workspace_id": str(ws.id)}))
    return {}
