"""Executes ONE action against a provider: the ensure flow, auto-provision and auto-wake, results.

The runner knows nothing of Celery, leases or transactions: it reads and changes a
:class:`WorkspaceState` and returns the action's result, or raises a ``QaiJobsError``. Every
action first reconciles the workspace with the provider's truth (a sandbox killed behind our
back is recreated from its last snapshot, a sleeping one is woken).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from . import schemas as s
from .config import Settings
from .egress import Egress
from .errors import MANIFEST_STALE, PermanentError, QaiJobsError, SandboxGone
from .manifest import Manifest, ManifestUpdate
from .providers.base import CreateSpec, Provider, Sandbox, SandboxStatus
from .providers.select import create_with_fallback, get_provider
from .sealing import seal_env, unseal_env
from .sync import INSTALL_INPUTS, install_command_for, install_fingerprint, plan_writes
from .workspace_state import WorkspaceState

Progress = Callable[[str, int | None, int | None], None]
FileChanges = tuple[list[tuple[str, bytes]], list[str]]  # (files written, paths deleted)
History = Callable[[str | None], list[FileChanges]]
Output = Callable[[str, bytes], None]


@dataclass
class ActionContext:
    settings: Settings
    action_id: uuid.UUID
    kind: str
    payload: BaseModel
    ws: WorkspaceState
    progress: Progress = lambda stage, done, total: None
    output: Output | None = None
    # Webhook events decided by this action: (type, data); written with its final status.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Snapshots taken by this action: (snapshot_id, kind, manifest), recorded with it.
    snapshots: list[tuple[str, str, dict[str, str] | None]] = field(default_factory=list)
    # The file changes of the project's earlier successful ensure/write actions, oldest first,
    # since the given snapshot (all of them for None): what to replay into a recreated sandbox.
    history: History = lambda snapshot_id: []
    # The project's synced-files manifest as this action finds it, and what a successful sync
    # changes in it (written with the final status).
    manifest: Callable[[], Manifest] = lambda: Manifest(None, {})
    manifest_update: ManifestUpdate | None = None


def execute(ctx: ActionContext) -> dict[str, Any]:
    handler = _HANDLERS[ctx.kind]
    return handler(ctx)


# --- reconciliation --------------------------------------------------------------------------


def _provider(ctx: ActionContext) -> Provider:
    assert ctx.ws.provider is not None
    return get_provider(ctx.ws.provider, ctx.settings)


def _spec(ctx: ActionContext, snapshot_id: str | None = None) -> CreateSpec:
    return CreateSpec(
        project_id=ctx.ws.project_id,
        workspace_id=str(ctx.ws.id),
        port=ctx.ws.port or ctx.settings.workspace_preview_port,
        env=unseal_env(ctx.settings, ctx.ws.env),
        snapshot_id=snapshot_id,
        egress=_egress(ctx),
    )


def _egress(ctx: ActionContext) -> Egress:
    """The workspace's egress policy: what an ensure set, else the configured default."""
    egress: Egress = (ctx.ws.network or {}).get("egress", ctx.settings.workspace_egress)
    return egress


def _has_sandbox(ws: WorkspaceState) -> bool:
    return ws.sandbox is not None and ws.status != "destroyed"


def _provision(ctx: ActionContext, snapshot_id: str | None = None) -> Sandbox:
    ctx.progress("provisioning", None, None)
    if ctx.ws.status == "destroyed":
        ctx.ws.id = uuid.uuid4()  # a destroyed workspace comes back as a new one
    if ctx.ws.provider and snapshot_id:
        sb = _provider(ctx).create(_spec(ctx, snapshot_id))
    else:
        sb = create_with_fallback(ctx.settings, _spec(ctx, snapshot_id))
    ctx.ws.set_sandbox(sb)
    ctx.ws.status = "ready"
    ctx.ws.dev_process = None
    ctx.ws.preview_url = None  # the old sandbox's URL means nothing for the new one
    if snapshot_id is None:
        ctx.ws.install_hash = None
    return sb


def _sandbox(ctx: ActionContext) -> tuple[Sandbox, bool]:
    """The workspace's sandbox, running: provisioned, woken or recreated as needed.

    Returns (sandbox, created).
    """
    ws = ctx.ws
    if not _has_sandbox(ws):
        return _provision(ctx), True
    sb = ws.sb
    assert sb is not None
    provider = _provider(ctx)
    status = provider.status(sb)
    if status is SandboxStatus.RUNNING:
        if ws.status == "sleeping":  # resumed behind our back: its processes did not survive
            ws.status = "ready"
            ws.dev_process = None
            if _wants_dev_server(ws):
                _after_start(ctx, sb)
        if provider.needs_recycle(sb):
            # Near the provider's lifetime cap (Modal: 24 h): move to a fresh sandbox now,
            # between actions, rather than lose it in the middle of one.
            ctx.progress("recycling sandbox", None, None)
            sb = provider.recycle(sb)
            ws.set_sandbox(sb)
            ws.dev_process = None
            if _wants_dev_server(ws):
                _after_start(ctx, sb)
        return sb, False
    if status is SandboxStatus.SLEEPING:
        ctx.progress("waking", None, None)
        sb = provider.wake(sb)
        ws.set_sandbox(sb)
        ws.status = "ready"
        ws.dev_process = None
        _verify_after_wake(ctx, sb)
        if _wants_dev_server(ws):  # any action wakes the workspace whole, preview included
            _after_start(ctx, sb)
        return sb, False
    # Gone behind our back: recreate from the last snapshot we know of, then replay what
    # qai-jobs itself wrote since (a command's own changes since then cannot be recovered).
    ws.dev_process = None
    snapshot_id = ws.last_snapshot_id
    try:
        sb = _provision(ctx, snapshot_id)
    except PermanentError as exc:
        if exc.code != "snapshot_not_found" or snapshot_id is None:
            raise
        snapshot_id = None  # the provider lost the snapshot too: rebuild from history alone
        sb = _provision(ctx, None)
    _replay(ctx, sb, snapshot_id)
    return sb, True


def _replay(ctx: ActionContext, sb: Sandbox, snapshot_id: str | None) -> None:
    changes = ctx.history(snapshot_id)
    if not changes and not ctx.ws.repo:
        return
    ctx.progress("restoring files", None, None)
    provider = _provider(ctx)
    if ctx.ws.repo:
        provider.git_sync(sb, ctx.ws.repo["url"], ctx.ws.repo["ref"])
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
    provider = _provider(ctx)
    actual = provider.hashes(sb, list(expected))
    if actual != expected:
        ctx.progress("restoring lost files", None, None)
        sb = provider.restore(sb, ctx.ws.last_snapshot_id)
        ctx.ws.set_sandbox(sb)


# --- files -----------------------------------------------------------------------------------


def _check_base(ctx: ActionContext, payload: s._WithFiles, adopting: bool = False) -> Manifest:
    """The manifest, after refusing a delta computed against another one (nothing changed yet)."""
    manifest = ctx.manifest()
    base = payload.manifest_base
    if base is not None and adopting:
        raise _stale("a delta cannot adopt a sandbox (its files were never synced)")
    if base is not None and base != manifest.seq:
        now = (
            f"is at {manifest.seq}"
            if manifest.seq is not None
            else "has none (never synced, or destroyed)"
        )
        raise _stale(f"this delta was computed against manifest {base}; the workspace's {now}")
    return Manifest(None, {}) if adopting else manifest


def _stale(why: str) -> PermanentError:
    return PermanentError(f"{why}; send the full tree", code=MANIFEST_STALE)


def _sync_files(
    ctx: ActionContext, sb: Sandbox, payload: s._WithFiles, manifest: Manifest
) -> dict[str, int]:
    provider = _provider(ctx)
    entries = [(f.path, f.data()) for f in payload.files or []]
    sent = {path for path, _ in entries}
    deleting = set(payload.delete or []) - sent  # sent and deleted: the file wins
    update = ManifestUpdate(replace=manifest.seq is None)
    # The sandbox is the truth, and commands, dev servers, installs, a woken or rebuilt sandbox
    # may have changed any recorded file since: hash those this sync leaves alone (a stat each
    # on the local provider) before a delta relies on them, and record what is really there.
    others = {p: h for p, h in manifest.files.items() if p not in sent and p not in deleting}
    if others:
        actual = provider.hashes(sb, list(others))
        drifted = sorted(p for p, h in others.items() if actual.get(p) != h)
        if drifted and payload.manifest_base is not None:
            shown = ", ".join(drifted[:5]) + (" ..." if len(drifted) > 5 else "")
            raise _stale(f"{len(drifted)} unsent file(s) changed in the workspace ({shown})")
        for path in drifted:
            if path in actual:
                update.upsert[path] = actual[path]
            else:
                update.delete.add(path)
    deleted = written = unchanged = 0
    if deleting:
        # Deletes first, deepest first: a tree that turned a file into a directory (or back)
        # sends the new path and deletes the old one, which would be in the new one's way.
        order = sorted(deleting, key=lambda p: (-p.count("/"), p))
        deleted = len(provider.delete_files(sb, order))
        update.delete |= deleting
    if entries:
        current = provider.hashes(sb, [p for p, _ in entries])
        plan = plan_writes(entries, current)
        total = len(plan.to_write)
        ctx.progress("syncing", 0, total)
        chunk = 500
        for i in range(0, total, chunk):
            provider.write_files(sb, plan.to_write[i : i + chunk])
            ctx.progress("syncing", min(total, i + chunk), total)
        written, unchanged = total, len(plan.unchanged)
        update.upsert.update(plan.hashes)
    update.delete -= update.upsert.keys()
    ctx.manifest_update = update
    return {"files_written": written, "files_unchanged": unchanged, "files_deleted": deleted}


def _record_after_install(ctx: ActionContext, sb: Sandbox) -> None:
    """An install may rewrite synced files (a lock file): record what it left, so the next
    delta sends the producer's version instead of trusting one the sandbox no longer has."""
    update = ctx.manifest_update
    if update is None or not update.upsert:
        return
    actual = _provider(ctx).hashes(sb, list(update.upsert))
    for path in list(update.upsert):
        if path in actual:
            update.upsert[path] = actual[path]
        else:
            del update.upsert[path]
            update.delete.add(path)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _install(ctx: ActionContext, sb: Sandbox, command: str | None) -> bool:
    """Run the install when the manifest or lock file changed since the last good install."""
    provider = _provider(ctx)
    present = provider.hashes(sb, list(INSTALL_INPUTS))
    fingerprint = install_fingerprint(present)
    command = command or ctx.ws.install_command or ctx.settings.workspace_install_command
    command = command or install_command_for(list(present))
    if fingerprint is None or command is None or fingerprint == ctx.ws.install_hash:
        return False
    ctx.progress("installing", None, None)
    result = provider.run(
        sb,
        ["bash", "-lc", command],
        env=unseal_env(ctx.settings, ctx.ws.env),
        timeout_s=ctx.settings.workspace_install_timeout_seconds,
    )
    if result.exit_code != 0:
        ctx.ws.install_hash = None
        output = _tail(result.stdout + "\n" + result.stderr)
        reason = "timed out" if result.timed_out else f"exited with {result.exit_code}"
        raise PermanentError(f"install ({command}) {reason}:\n{output}", code="install_failed")
    ctx.ws.install_hash = fingerprint
    return True


# --- dev server ------------------------------------------------------------------------------


def _dev_server(ctx: ActionContext, sb: Sandbox) -> str:
    """Reuse a live dev server or start one; wait for its port to answer HTTP."""
    ws = ctx.ws
    provider = _provider(ctx)
    port = provider.dev_port(sb, ws.port or ctx.settings.workspace_preview_port)
    command = (ws.dev_command or ctx.settings.workspace_dev_command).replace("{port}", str(port))
    proc = ws.dev_process
    alive = proc is not None and proc.get("command") == command and provider.process_alive(sb, proc)
    if not alive:
        if proc:
            provider.stop_process(sb, proc)
        ctx.progress("starting dev server", None, None)
        proc = dict(provider.start_process(sb, command, env=unseal_env(ctx.settings, ws.env)))
        proc["command"] = command
        ws.dev_process = proc
    assert proc is not None
    _wait_for_port(ctx, sb, proc, port)
    ws.preview_url = provider.preview_url(sb, port)
    return ws.preview_url


def _wait_for_port(ctx: ActionContext, sb: Sandbox, proc: Mapping[str, Any], port: int) -> None:
    provider = _provider(ctx)
    started = time.monotonic()
    deadline = started + ctx.settings.workspace_dev_server_timeout_seconds
    ctx.progress("waiting for port", None, None)
    while True:
        if provider.port_ready(sb, port):
            return
        if not provider.process_alive(sb, proc):
            log = provider.read_log(sb, proc, 40)
            ctx.ws.dev_process = None
            raise PermanentError(
                f"the dev server exited before port {port} answered:\n{log}",
                code="dev_server_timeout",
            )
        if time.monotonic() > deadline:
            log = provider.read_log(sb, proc, 40)
            provider.stop_process(sb, proc)
            ctx.ws.dev_process = None
            raise PermanentError(
                f"the dev server did not answer on port {port} within "
                f"{ctx.settings.workspace_dev_server_timeout_seconds:g}s:\n{log}",
                code="dev_server_timeout",
            )
        early, later = provider.port_poll_seconds
        time.sleep(early if time.monotonic() - started < 2 else later)


def _wants_dev_server(ws: WorkspaceState) -> bool:
    return bool(ws.sandbox and ws.sandbox.get("dev_server_wanted"))


def _set_wants_dev_server(ws: WorkspaceState, wanted: bool) -> None:
    if ws.sandbox is not None:
        ws.sandbox = {**ws.sandbox, "dev_server_wanted": wanted}


def _after_start(ctx: ActionContext, sb: Sandbox) -> str | None:
    """After wake/restore/recreate: reinstall if needed and bring the dev server back."""
    _install(ctx, sb, None)
    if _wants_dev_server(ctx.ws):
        return _dev_server(ctx, sb)
    return ctx.ws.preview_url


def _ready_event(ctx: ActionContext, sb: Sandbox) -> None:
    ctx.events.append(
        (
            "workspace.ready",
            {
                "preview_url": ctx.ws.preview_url,
                "provider": sb.provider,
                "sandbox_id": sb.sandbox_id,
                "workspace_id": str(ctx.ws.id),
            },
        )
    )


# --- handlers --------------------------------------------------------------------------------


def _ensure(ctx: ActionContext) -> dict[str, Any]:
    p = ctx.payload
    assert isinstance(p, s.EnsurePayload)
    ws = ctx.ws
    adopting = bool(p.sandbox_id and p.sandbox_id != ws.sandbox_id)
    manifest = _check_base(ctx, p, adopting)  # before anything changes
    if p.env is not None:
        ws.env = seal_env(ctx.settings, p.env)
    if p.dev_command is not None:
        ws.dev_command = p.dev_command
    if p.install_command is not None:
        ws.install_command = p.install_command
    if p.port is not None:
        ws.port = p.port
    if p.network is not None:
        ws.network = p.network.model_dump(mode="json")
    created = False
    if adopting:
        assert p.sandbox_id is not None
        provider_name = ws.provider or ctx.settings.workspace_runtime[0]
        sb = get_provider(provider_name, ctx.settings).adopt(p.sandbox_id, _spec(ctx))
        ws.set_sandbox(sb)
        ws.status = "ready"
        ws.dev_process = None
        ws.install_hash = None
    sb, created = _sandbox(ctx)
    ws.status = "provisioning" if created else ws.status
    # In order: what this ensure does next (fetch, install, dev server) runs under its policy.
    _provider(ctx).set_egress(sb, _egress(ctx))
    if p.repo is not None:
        ctx.progress("fetching repository", None, None)
        head = _provider(ctx).git_sync(sb, p.repo.url, p.repo.ref)
        ws.repo = {"url": p.repo.url, "ref": p.repo.ref, "head": head}
    try:
        counts = _sync_files(ctx, sb, p, manifest)
    except PermanentError as exc:
        if exc.code == MANIFEST_STALE:  # refused: the settings wait for the full sync that follows
            ws.revert("env", "dev_command", "install_command", "port", "network")
            _provider(ctx).set_egress(sb, _egress(ctx))
        raise
    installed = _install(ctx, sb, p.install_command)
    if installed:
        _record_after_install(ctx, sb)
    preview_url = ws.preview_url
    if p.start_dev_server:
        _set_wants_dev_server(ws, True)
        preview_url = _dev_server(ctx, sb)
    ws.status = "ready"
    _ready_event(ctx, sb)
    return {
        "workspace_id": str(ws.id),
        "sandbox_id": sb.sandbox_id,
        "provider": sb.provider,
        "preview_url": preview_url,
        "created": created,
        "files_written": counts["files_written"],
        "files_unchanged": counts["files_unchanged"],
        "installed": installed,
    }


def _prepare(ctx: ActionContext) -> Sandbox:
    """Every kind but ensure: provision a bare workspace first if there is none, or wake it."""
    sb, created = _sandbox(ctx)
    if created and _wants_dev_server(ctx.ws):
        _after_start(ctx, sb)
    return sb


def _write(ctx: ActionContext) -> dict[str, Any]:
    p = ctx.payload
    assert isinstance(p, s.WritePayload)
    manifest = _check_base(ctx, p)
    return _sync_files(ctx, _prepare(ctx), p, manifest)


def _read(ctx: ActionContext) -> dict[str, Any]:
    p = ctx.payload
    assert isinstance(p, s.ReadPayload)
    contents = _provider(ctx).read_files(_prepare(ctx), p.paths)
    files: list[dict[str, Any]] = []
    missing: list[str] = []
    for path in p.paths:
        data = contents.get(path)
        if data is None:
            missing.append(path)
            continue
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode(), "base64"
        files.append({"path": path, "content": text, "encoding": encoding, "size": len(data)})
    return {"files": files, "missing": missing}


def _command(ctx: ActionContext) -> dict[str, Any]:
    p = ctx.payload
    assert isinstance(p, s.CommandPayload)
    sb = _prepare(ctx)
    argv = ["bash", "-lc", p.cmd] if p.cmd is not None else list(p.argv or [])
    env = {**unseal_env(ctx.settings, ctx.ws.env), **(p.env or {})}
    ctx.progress("running", None, None)
    result = _provider(ctx).run(
        sb, argv, cwd=p.cwd, env=env, timeout_s=p.timeout_s, on_output=ctx.output
    )
    return result.to_json()


def _preview(ctx: ActionContext) -> dict[str, Any]:
    p = ctx.payload
    assert isinstance(p, s.PreviewPayload)
    sb = _prepare(ctx)
    if p.port is not None and p.port != ctx.ws.port:
        ctx.ws.port = p.port
    healthy = False
    if _wants_dev_server(ctx.ws):
        try:
            _dev_server(ctx, sb)
            healthy = True
        except PermanentError as exc:
            if exc.code != "dev_server_timeout":
                raise
    else:
        provider = _provider(ctx)
        port = provider.dev_port(sb, ctx.ws.port or ctx.settings.workspace_preview_port)
        ctx.ws.preview_url = provider.preview_url(sb, port)
        healthy = provider.port_ready(sb, port)
    return {"preview_url": ctx.ws.preview_url, "healthy": healthy}


def _logs(ctx: ActionContext) -> dict[str, Any]:
    p = ctx.payload
    assert isinstance(p, s.LogsPayload)
    ws = ctx.ws
    if not _has_sandbox(ws) or not ws.dev_process:
        return {"text": ""}
    sb = ws.sb
    assert sb is not None
    try:
        return {"text": _provider(ctx).read_log(sb, ws.dev_process, p.tail)}
    except SandboxGone:
        return {"text": ""}


def _sleep(ctx: ActionContext) -> dict[str, Any]:
    ws = ctx.ws
    if not _has_sandbox(ws) or ws.status == "sleeping":
        return {"snapshot_id": ws.last_snapshot_id if _has_sandbox(ws) else None}
    sb = ws.sb
    assert sb is not None
    provider = _provider(ctx)
    if provider.status(sb) is SandboxStatus.GONE:
        sb, _ = _sandbox(ctx)
    ctx.progress("sleeping", None, None)
    manifest = provider.hashes(sb)
    outcome = provider.sleep(sb)
    ws.set_sandbox(outcome.sandbox)
    if ws.sandbox is not None:
        ws.sandbox = {**ws.sandbox, "sleep_manifest": manifest}
    ws.dev_process = None
    ws.status = "sleeping"
    if outcome.snapshot_id:
        ws.last_snapshot_id = outcome.snapshot_id
        ctx.snapshots.append((outcome.snapshot_id, "sleep", manifest))
    ctx.events.append(("workspace.sleeping", {"snapshot_id": outcome.snapshot_id}))
    return {"snapshot_id": outcome.snapshot_id}


def _wake(ctx: ActionContext) -> dict[str, Any]:
    sb = _prepare(ctx)
    preview_url = _after_start(ctx, sb)
    _ready_event(ctx, sb)
    return {"preview_url": preview_url}


def _snapshot(ctx: ActionContext) -> dict[str, Any]:
    sb = _prepare(ctx)
    provider = _provider(ctx)
    ctx.progress("snapshotting", None, None)
    manifest = provider.hashes(sb)
    snapshot_id = provider.snapshot(sb)
    ctx.ws.last_snapshot_id = snapshot_id
    ctx.snapshots.append((snapshot_id, "snapshot", manifest))
    return {"snapshot_id": snapshot_id}


def _restore(ctx: ActionContext) -> dict[str, Any]:
    p = ctx.payload
    assert isinstance(p, s.RestorePayload)
    sb = _prepare(ctx)
    ctx.progress("restoring", None, None)
    if ctx.ws.dev_process:
        _provider(ctx).stop_process(sb, ctx.ws.dev_process)
        ctx.ws.dev_process = None
    sb = _provider(ctx).restore(sb, p.snapshot_id)
    ctx.ws.set_sandbox(sb)
    ctx.ws.last_snapshot_id = p.snapshot_id
    preview_url = _after_start(ctx, sb)
    _ready_event(ctx, sb)
    return {"preview_url": preview_url}


def _destroy(ctx: ActionContext) -> dict[str, Any]:
    ws = ctx.ws
    ctx.manifest_update = ManifestUpdate(clear=True)
    if not _has_sandbox(ws):
        return {}
    sb = ws.sb
    assert sb is not None
    provider = _provider(ctx)
    ctx.progress("destroying", None, None)
    if ws.dev_process:
        try:
            provider.stop_process(sb, ws.dev_process)
        except QaiJobsError:
            pass  # the sandbox is about to go anyway
    provider.destroy(sb)
    ws.set_sandbox(None)
    ws.status = "destroyed"
    ws.preview_url = None
    ws.dev_process = None
    ws.install_hash = None
    ws.repo = None
    ws.last_snapshot_id = None  # a workspace that comes back starts empty, not from these
    ctx.events.append(("workspace.destroyed", {"workspace_id": str(ws.id)}))
    return {}


_HANDLERS: dict[str, Callable[[ActionContext], dict[str, Any]]] = {
    "ensure": _ensure,
    "write": _write,
    "read": _read,
    "command": _command,
    "preview": _preview,
    "logs": _logs,
    "sleep": _sleep,
    "wake": _wake,
    "snapshot": _snapshot,
    "restore": _restore,
    "destroy": _destroy,
}
