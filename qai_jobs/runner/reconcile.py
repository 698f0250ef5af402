"""Reconciliation: every action first brings the workspace's sandbox in line with the provider.

A workspace with no sandbox is provisioned, a sleeping one woken (dev server included), one near
its provider's lifetime cap recycled, and one gone behind our back recreated from its last
snapshot plus the file changes qai-jobs itself made since.
"""

from __future__ import annotations

import uuid

from qai_jobs.constants import WorkspaceStatus
from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.events import Event, EventType
from qai_jobs.gateway.urls import new_preview_id
from qai_jobs.providers.base import Sandbox, SandboxStatus
from qai_jobs.providers.select import create_with_fallback
from qai_jobs.runner.context import ActionContext
from qai_jobs.runner.devserver import after_start, wanted
from qai_jobs.sealing import unseal_url


def has_sandbox(ws: WorkspaceState) -> bool:
    return ws.sandbox is not None and ws.status != WorkspaceStatus.DESTROYED


def provision(ctx: ActionContext, snapshot_id: str | None = None) -> Sandbox:
    ctx.progress("provisioning", None, None)
    if ctx.ws.status == WorkspaceStatus.DESTROYED:
        ctx.ws.id = uuid.uuid4()  # a destroyed workspace comes back as a new one
        ctx.ws.preview_id = new_preview_id()  # and its old preview URL does not reach it
    if ctx.ws.provider and snapshot_id:
        sb = ctx.provider.create(ctx.spec(snapshot_id))
    else:
        sb = create_with_fallback(
            ctx.settings, ctx.spec(snapshot_id), breaker=ctx.breaker, providers=ctx.provider_named
        )
    ctx.ws.set_sandbox(sb)
    ctx.ws.status = WorkspaceStatus.READY
    ctx.ws.dev_process = None
    ctx.ws.preview_url = None  # the old sandbox's URL means nothing for the new one
    if snapshot_id is None:
        ctx.ws.install_hash = None
    return sb


def running_sandbox(ctx: ActionContext) -> tuple[Sandbox, bool]:
    """The workspace's sandbox, running: provisioned, woken or recreated as needed.

    Returns (sandbox, created).
    """
    ws = ctx.ws
    if not has_sandbox(ws):
        return provision(ctx), True
    sb = ws.sb
    assert sb is not None
    held_by = sb.state.get("host") if ws.provider == "local" else None
    if held_by is not None and held_by != ctx.settings.workspace_host_id:
        return _move(ctx, str(held_by)), True
    provider = ctx.provider
    status = provider.status(sb)
    if status is SandboxStatus.RUNNING:
        if ws.status == WorkspaceStatus.SLEEPING:
            # Resumed behind our back: its processes survived only where sleep keeps them.
            ws.status = WorkspaceStatus.READY
            if not provider.keeps_processes_asleep:
                ws.dev_process = None
            if wanted(ws):
                after_start(ctx, sb)
        if provider.needs_recycle(sb):
            # Near the provider's lifetime cap (Modal: 24 h): move to a fresh sandbox now,
            # between actions, rather than lose it in the middle of one.
            ctx.progress("recycling sandbox", None, None)
            sb = provider.recycle(sb)
            ws.set_sandbox(sb)
            if not provider.keeps_processes_asleep:  # E2B recycles by a pause and resume
                ws.dev_process = None
            if wanted(ws):
                after_start(ctx, sb)
        return sb, False
    if status is SandboxStatus.SLEEPING:
        ctx.progress("waking", None, None)
        sb = provider.wake(sb)
        ws.set_sandbox(sb)
        ws.status = WorkspaceStatus.READY
        if not provider.keeps_processes_asleep:
            ws.dev_process = None
        _verify_after_wake(ctx, sb)
        if wanted(ws):  # any action wakes the workspace whole: a live dev server is reused
            after_start(ctx, sb)
        return sb, False
    return _recreate(ctx), True


def _move(ctx: ActionContext, from_host: str) -> Sandbox:
    """The workspace was another host's (dead, or drained): rebuild it here. The old host's
    copy is never touched from here."""
    return _rebuild_announced(ctx, "moving to this host", from_host)


def _recreate(ctx: ActionContext) -> Sandbox:
    """Gone behind our back: recreate from the last snapshot we know of, then replay what
    qai-jobs itself wrote since (a command's own changes since then cannot be recovered)."""
    # A cloud sandbox has no host of ours: its provider is where it was.
    here = ctx.settings.workspace_host_id if ctx.ws.provider == "local" else ctx.ws.provider
    return _rebuild_announced(ctx, "rebuilding lost sandbox", here)


def _rebuild_announced(ctx: ActionContext, stage: str, from_host: str | None) -> Sandbox:
    """Rebuild, and say in ``workspace.moved`` from where, from which snapshot, and which
    commands' changes were lost since it was taken."""
    ctx.progress(stage, None, None)
    sb, snapshot_id = _rebuild(ctx)
    to_host = ctx.settings.workspace_host_id if ctx.ws.provider == "local" else ctx.ws.provider
    data = {
        "from_host": from_host,
        "to_host": to_host,
        "snapshot_id": snapshot_id,
        "lost": ctx.lost(snapshot_id),
    }
    ctx.events.append(Event(EventType.MOVED, data))
    return sb


def _rebuild(ctx: ActionContext) -> tuple[Sandbox, str | None]:
    ctx.ws.dev_process = None
    snapshot_id = ctx.ws.last_snapshot_id
    try:
        sb = provision(ctx, snapshot_id)
    except PermanentError as exc:
        if exc.code != ErrorCode.SNAPSHOT_NOT_FOUND or snapshot_id is None:
            raise
        snapshot_id = None  # the provider lost the snapshot too: rebuild from history alone
        sb = provision(ctx, None)
    _replay(ctx, sb, snapshot_id)
    return sb, snapshot_id


def _replay(ctx: ActionContext, sb: Sandbox, snapshot_id: str | None) -> None:
    changes = ctx.history(snapshot_id)
    if not changes and not ctx.ws.repo:
        return
    ctx.progress("restoring files", None, None)
    provider = ctx.provider
    if ctx.ws.repo:
        url = unseal_url(ctx.settings, ctx.ws.repo["url"])
        provider.git_sync(sb, url, ctx.ws.repo["ref"])
    for files, deleted in changes:
        if files:
            provider.write_files(sb, files)
        if deleted:
            provider.delete_files(sb, deleted)


def _verify_after_wake(ctx: ActionContext, sb: Sandbox) -> None:
    """Woken sandboxes have been seen to lose files: compare with the sleep manifest."""
    expected = ctx.ws.sandbox.get("sleep_manifest") if ctx.ws.sandbox else None
    if not expected or not ctx.ws.last_snapshot_id:
        return
    provider = ctx.provider
    actual = provider.hashes(sb, list(expected))
    if actual != expected:
        ctx.progress("restoring lost files", None, None)
        sb = provider.restore(sb, ctx.ws.last_snapshot_id)
        ctx.ws.set_sandbox(sb)


def prepare(ctx: ActionContext) -> Sandbox:
    """Every kind but ensure: provision a bare workspace first if there is none, or wake it."""
    sb, created = running_sandbox(ctx)
    if created and wanted(ctx.ws):
        after_start(ctx, sb)
    return sb
