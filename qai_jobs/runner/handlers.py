"""One handler per action kind, and :func:`execute`, which runs the handler an action names.

A handler reads and changes ``ctx.ws`` and returns the kind's result, or raises a
``QaiJobsError``. Each receives its own payload class, checked once here. The kinds that work
inside a workspace (its files and processes: ensure, write, read, command, preview, logs) are
here; those that change its sandbox's life (sleep, wake, snapshot, restore, destroy) are in
``lifecycle``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from qai_jobs import schemas as s
from qai_jobs.constants import WorkspaceStatus
from qai_jobs.errors import ErrorCode, PermanentError, SandboxGone
from qai_jobs.gateway.urls import publish_result
from qai_jobs.providers.base import Sandbox
from qai_jobs.results import (
    ActionResult,
    CommandResult,
    EnsureResult,
    LogsResult,
    PreviewResult,
    ReadFile,
    ReadResult,
    WriteResult,
)
from qai_jobs.runner.context import ActionContext
from qai_jobs.runner.devserver import dev_server, ready_event, set_wanted, wanted
from qai_jobs.runner.files import check_base, record_after_install, sync_files
from qai_jobs.runner.install import install
from qai_jobs.runner.lifecycle import destroy, restore, sleep, snapshot, wake
from qai_jobs.runner.rebuild import incomplete, mark_complete
from qai_jobs.runner.reconcile import has_sandbox, prepare, running_sandbox
from qai_jobs.sealing import seal_env, seal_url

# Every kind's handler stays importable from here, wherever it is defined.
__all__ = [
    "Handler",
    "command",
    "destroy",
    "ensure",
    "execute",
    "logs",
    "preview",
    "read",
    "restore",
    "sleep",
    "snapshot",
    "wake",
    "write",
]

P = TypeVar("P", bound=BaseModel)
# What an ensure sets on the workspace before it touches the sandbox.
_ENSURE_SETTINGS = ("env", "dev_command", "install_command", "port", "network")
Handler = Callable[[ActionContext], ActionResult]


def execute(ctx: ActionContext) -> ActionResult:
    result = dict(_HANDLERS[ctx.kind](ctx))
    # With the gateway, producers see its stable URL, never the provider's current one.
    return cast(ActionResult, publish_result(ctx.settings, ctx.ws.preview_id, result, ctx.events))


def ensure(ctx: ActionContext, p: s.EnsurePayload) -> EnsureResult:
    ws = ctx.ws
    adopting = bool(p.sandbox_id and p.sandbox_id != ws.sandbox_id)
    untrusted = (
        "an adopted sandbox (its files were never synced)"
        if adopting
        else (f"a partial rebuild ({incomplete(ws)})" if incomplete(ws) else None)
    )
    manifest = check_base(ctx, p, untrusted)  # before anything changes
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
    if adopting:
        assert p.sandbox_id is not None
        provider_name = ws.provider or ctx.settings.workspace_runtime[0]
        sb = ctx.provider_named(provider_name).adopt(p.sandbox_id, ctx.spec())
        ws.set_sandbox(sb)
        ws.status = WorkspaceStatus.READY
        ws.dev_process = None
        ws.install_hash = None
    try:
        sb, created = running_sandbox(ctx)
        if created:
            ws.status = WorkspaceStatus.PROVISIONING
        # In order: what this ensure does next (fetch, install, dev server) runs under its policy.
        _apply_egress(ctx, sb)
    except PermanentError as exc:
        if exc.code == ErrorCode.UNSUPPORTED_NETWORK_POLICY:
            # Refused before the sandbox changed: the workspace keeps the settings it had, or
            # every later action would fail on the policy this ensure asked for.
            ws.revert(*_ENSURE_SETTINGS)
        raise
    if p.repo is not None:
        ctx.progress("fetching repository", None, None)
        head = ctx.provider.git_sync(sb, p.repo.url, p.repo.ref)
        url = seal_url(ctx.settings, p.repo.url)  # a token in it never lies in the row open
        ws.repo = {"url": url, "ref": p.repo.ref, "head": head}
    try:
        counts = sync_files(ctx, sb, p, manifest)
    except PermanentError as exc:
        if exc.code == ErrorCode.MANIFEST_STALE:
            # Refused: the new settings wait for the full sync that follows.
            ws.revert(*_ENSURE_SETTINGS)
            _apply_egress(ctx, sb)
        raise
    if incomplete(ws) and ctx.manifest_update is not None:
        # The producer's full tree is in: the record is rebuilt from it, blobs and all (the
        # failed rebuild may have found one corrupt), and nothing of the partial tree is left.
        ctx.manifest_update.rewrite_blobs = True
        mark_complete(ws)
    installed = install(ctx, sb, p.install_command)
    if installed:
        record_after_install(ctx, sb)
    preview_url = ws.preview_url
    if p.start_dev_server:
        set_wanted(ws, True)
        preview_url = dev_server(ctx, sb)
    ws.status = WorkspaceStatus.READY
    ready_event(ctx, sb)
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


def write(ctx: ActionContext, p: s.WritePayload) -> WriteResult:
    manifest = check_base(ctx, p)
    counts = sync_files(ctx, prepare(ctx), p, manifest)
    return {
        "files_written": counts["files_written"],
        "files_unchanged": counts["files_unchanged"],
        "files_deleted": counts["files_deleted"],
    }


def read(ctx: ActionContext, p: s.ReadPayload) -> ReadResult:
    contents = ctx.provider.read_files(prepare(ctx), p.paths)
    files: list[ReadFile] = []
    missing: list[str] = []
    for path in p.paths:
        data = contents.get(path)
        if data is None:
            missing.append(path)
            continue
        text = _utf8_text(data)
        if text is not None:
            files.append({"path": path, "content": text, "encoding": "utf-8", "size": len(data)})
        else:
            content = base64.b64encode(data).decode()
            files.append(
                {"path": path, "content": content, "encoding": "base64", "size": len(data)}
            )
    return {"files": files, "missing": missing}


def _apply_egress(ctx: ActionContext, sb: Sandbox) -> None:
    """The workspace's policy onto its sandbox. A provider that fixes the network at creation
    (Modal) moves the workspace to a new sandbox, whose processes start afresh."""
    before = sb.sandbox_id
    ctx.provider.set_egress(sb, ctx.egress())
    if sb.sandbox_id != before:
        ctx.ws.set_sandbox(sb)
        ctx.ws.dev_process = None
    elif ctx.ws.sandbox is not None:
        ctx.ws.set_sandbox(sb)  # the policy rides in the sandbox's state


def _utf8_text(data: bytes) -> str | None:
    """The file as text if it is NUL-free UTF-8 (anything else travels as base64)."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def command(ctx: ActionContext, p: s.CommandPayload) -> CommandResult:
    sb = prepare(ctx)
    argv = ["bash", "-lc", p.cmd] if p.cmd is not None else list(p.argv or [])
    env = {**ctx.env(), **(p.env or {})}
    ctx.progress("running", None, None)
    result = ctx.provider.run(
        sb,
        argv,
        cwd=p.cwd,
        env=env,
        timeout_s=p.timeout_s,
        on_output=ctx.output,
        cancel=ctx.cancel,
    )
    return result.to_json()


def preview(ctx: ActionContext, p: s.PreviewPayload) -> PreviewResult:
    sb = prepare(ctx)
    if p.port is not None and p.port != ctx.ws.port:
        ctx.ws.port = p.port
    healthy = False
    if wanted(ctx.ws):
        try:
            dev_server(ctx, sb)
            healthy = True
        except PermanentError as exc:
            if exc.code != ErrorCode.DEV_SERVER_TIMEOUT:
                raise
    else:
        provider = ctx.provider
        port = provider.dev_port(sb, ctx.ws.port or ctx.settings.workspace_preview_port)
        ctx.ws.preview_url = provider.preview_url(sb, port)
        healthy = provider.port_ready(sb, port)
    return {"preview_url": ctx.ws.preview_url, "healthy": healthy}


def logs(ctx: ActionContext, p: s.LogsPayload) -> LogsResult:
    ws = ctx.ws
    if not has_sandbox(ws) or not ws.dev_process:
        return {"text": ""}
    sb = ws.sb
    assert sb is not None
    try:
        return {"text": ctx.provider.read_log(sb, ws.dev_process, p.tail)}
    except SandboxGone:
        return {"text": ""}


def _bind(model: type[P], fn: Callable[[ActionContext, P], Any]) -> Handler:
    """A handler taking the context alone: the payload's class is checked here, once."""

    def run(ctx: ActionContext) -> ActionResult:
        if not isinstance(ctx.payload, model):
            raise TypeError(f"a {ctx.kind} action needs a {model.__name__}")
        result: ActionResult = fn(ctx, ctx.payload)
        return result

    return run


_HANDLERS: dict[str, Handler] = {
    "ensure": _bind(s.EnsurePayload, ensure),
    "write": _bind(s.WritePayload, write),
    "read": _bind(s.ReadPayload, read),
    "command": _bind(s.CommandPayload, command),
    "preview": _bind(s.PreviewPayload, preview),
    "logs": _bind(s.LogsPayload, logs),
    "sleep": _bind(s.SleepPayload, sleep),
    "wake": _bind(s.EmptyPayload, wake),
    "snapshot": _bind(s.EmptyPayload, snapshot),
    "restore": _bind(s.RestorePayload, restore),
    "destroy": _bind(s.EmptyPayload, destroy),
}
