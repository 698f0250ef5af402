"""The dev server: reuse a live one or start it, wait until its port answers HTTP."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.events import Event, EventType
from qai_jobs.providers.base import Sandbox
from qai_jobs.runner.context import ActionContext
from qai_jobs.runner.install import install


def wanted(ws: WorkspaceState) -> bool:
    """Whether the workspace should have a dev server (an ensure asked for one)."""
    return bool(ws.sandbox and ws.sandbox.get("dev_server_wanted"))


def set_wanted(ws: WorkspaceState, value: bool) -> None:
    if ws.sandbox is not None:
        ws.sandbox = {**ws.sandbox, "dev_server_wanted": value}


def dev_server(ctx: ActionContext, sb: Sandbox) -> str:
    """Reuse a live dev server or start one; wait for its port to answer HTTP."""
    ws = ctx.ws
    provider = ctx.provider
    port = provider.dev_port(sb, ws.port or ctx.settings.workspace_preview_port)
    command = (ws.dev_command or ctx.settings.workspace_dev_command).replace("{port}", str(port))
    proc = ws.dev_process
    alive = proc is not None and proc.get("command") == command and provider.process_alive(sb, proc)
    if not alive:
        if proc:
            provider.stop_process(sb, proc)
        ctx.progress("starting dev server", None, None)
        proc = dict(provider.start_process(sb, command, env=ctx.env()))
        proc["command"] = command
        ws.dev_process = proc
    assert proc is not None
    _wait_for_port(ctx, sb, proc, port)
    ws.preview_url = provider.preview_url(sb, port)
    return ws.preview_url


def _wait_for_port(ctx: ActionContext, sb: Sandbox, proc: Mapping[str, Any], port: int) -> None:
    provider = ctx.provider
    started = time.monotonic()
    timeout = ctx.settings.workspace_dev_server_timeout_seconds
    deadline = started + timeout
    ctx.progress("waiting for port", None, None)
    while True:
        if provider.port_ready(sb, port):
            return
        if not provider.process_alive(sb, proc):
            log = provider.read_log(sb, proc, 40)
            ctx.ws.dev_process = None
            raise PermanentError(
                f"the dev server exited before port {port} answered:\n{log}",
                code=ErrorCode.DEV_SERVER_TIMEOUT,
            )
        if time.monotonic() > deadline:
            log = provider.read_log(sb, proc, 40)
            provider.stop_process(sb, proc)
            ctx.ws.dev_process = None
            raise PermanentError(
                f"the dev server did not answer on port {port} within {timeout:g}s:\n{log}",
                code=ErrorCode.DEV_SERVER_TIMEOUT,
            )
        early, later = provider.port_poll_seconds
        time.sleep(early if time.monotonic() - started < 2 else later)


def after_start(ctx: ActionContext, sb: Sandbox) -> str | None:
    """After wake/restore/recreate: reinstall if needed and bring the dev server back."""
    install(ctx, sb, None)
    if wanted(ctx.ws):
        return dev_server(ctx, sb)
    return ctx.ws.preview_url


def ready_event(ctx: ActionContext, sb: Sandbox) -> None:
    ctx.events.append(
        Event(
            EventType.READY,
            {
                "preview_url": ctx.ws.preview_url,
                "provider": sb.provider,
                "sandbox_id": sb.sandbox_id,
                "workspace_id": str(ctx.ws.id),
            },
        )
    )
