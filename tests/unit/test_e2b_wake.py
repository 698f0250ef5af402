"""E2B's pause keeps a sandbox's memory, processes included: a woken workspace's dev server is
the one it had. The runner drives the E2B adapter over the SDK fake, whose sandboxes run real
processes (a pause is SIGSTOP, a resume SIGCONT), so the dev server is a real HTTP server."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.providers.base import Provider
from qai_jobs.runner import ActionContext, execute
from qai_jobs.validation import validate_payload
from tests.fakes.cloud import e2b_provider


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(provider: Provider, ws: WorkspaceState, kind: str, **payload: Any) -> dict[str, Any]:
    ctx = ActionContext(
        settings=provider.settings,
        action_id=uuid.uuid4(),
        kind=kind,
        payload=validate_payload(kind, payload),
        ws=ws,
        providers=lambda name: provider,
    )
    return dict(execute(ctx))


def servers(world: Any, sandbox_id: str, port: int) -> list[int]:
    """The sandbox's live processes serving ``port`` (by command line)."""
    found = []
    for pid in world.sandboxes[sandbox_id].box.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"http.server {port}".encode() in cmdline and b"bash" not in cmdline:
            found.append(pid)
    return found


def test_wake_after_a_pause_reuses_the_dev_server_it_kept(tmp_path: Path) -> None:
    port = free_port()
    with e2b_provider(tmp_path / "e2b", workspace_runtime=["e2b"]) as (provider, world):
        ws = WorkspaceState("e2b-wake", uuid.uuid4())
        run(
            provider,
            ws,
            "ensure",
            files={"index.html": "hello\n"},
            port=port,
            dev_command="exec python3 -m http.server {port} --bind 127.0.0.1",
        )
        assert ws.dev_process is not None and ws.sandbox_id is not None
        first = dict(ws.dev_process)
        assert len(servers(world, ws.sandbox_id, port)) == 1

        run(provider, ws, "sleep")
        assert ws.status == "sleeping" and world.sandboxes[ws.sandbox_id].state == "paused"
        woke = run(provider, ws, "wake")
        assert woke["preview_url"].startswith("https://")
        assert ws.dev_process == first, "wake started another dev server"
        assert len(servers(world, ws.sandbox_id, port)) == 1
        # A paused workspace that is woken by any action (here a command) is the same.
        run(provider, ws, "sleep")
        run(provider, ws, "command", cmd="true")
        assert ws.dev_process == first
        assert len(servers(world, ws.sandbox_id, port)) == 1
