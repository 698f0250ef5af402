"""The local provider's processes: commands run to completion and detached dev servers, each
under the sandbox's jail and cgroup limits."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qai_jobs.cancel import Cancel
from qai_jobs.config import Settings
from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.providers.base import ExecResult, OutputCallback, Sandbox
from qai_jobs.providers.local.fs import SafeTree
from qai_jobs.providers.local.jail import Jail, Launch
from qai_jobs.providers.local.layout import Layout
from qai_jobs.providers.local.limits import SandboxLimits
from qai_jobs.providers.local.proc import alive as pid_alive
from qai_jobs.providers.local.proc import (
    run_captured,
    spawn_detached,
    start_time,
    stop_tree,
    tail_log,
)
from qai_jobs.providers.local.store import atomic_write

_KEEP_LOGS = 5


class LocalProcesses:
    """Mixed into ``LocalProvider``, which supplies the settings, layouts, jail and env."""

    settings: Settings

    def _layout(self, sb: Sandbox) -> Layout:
        raise NotImplementedError

    def _awake(self, sb: Sandbox) -> Layout:
        raise NotImplementedError

    def _jail(self, layout: Layout) -> Jail:
        raise NotImplementedError

    def _env(self, layout: Layout, env: Mapping[str, str] | None) -> dict[str, str]:
        raise NotImplementedError

    def run(
        self,
        sb: Sandbox,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 300,
        on_output: OutputCallback | None = None,
        cancel: Cancel | None = None,
    ) -> ExecResult:
        layout = self._awake(sb)
        if cwd and not SafeTree(layout.tree).is_dir(cwd):
            raise PermanentError(
                f"working directory {cwd!r} does not exist", code=ErrorCode.INVALID_CWD
            )
        merged = self._env(layout, env)
        launch = self._jail(layout).command(argv, cwd, merged, foreground=True)
        return self._run_confined(sb, launch, timeout_s, on_output, cancel)

    def _run_confined(
        self,
        sb: Sandbox,
        launch: Launch,
        timeout_s: float,
        on_output: OutputCallback | None = None,
        cancel: Cancel | None = None,
    ) -> ExecResult:
        """Run a jailed launch to completion under the sandbox's cgroup limits."""
        limits = SandboxLimits(self.settings, sb.sandbox_id)
        confine = limits.confine(limits.prepare())
        return run_captured(
            launch,
            confine=confine,
            timeout_s=max(timeout_s, 0.001),
            max_bytes=self.settings.workspace_max_output_bytes,
            on_output=on_output,
            cancel=cancel,
        )

    def start_process(
        self, sb: Sandbox, command: str, *, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        layout = self._awake(sb)
        limits = SandboxLimits(self.settings, sb.sandbox_id)
        # $PORT too, for servers started without the {port} placeholder (node server.js).
        port_env = {"PORT": str(sb.state["port"])} if sb.state.get("port") else {}
        merged = {**port_env, **self._env(layout, env)}
        confine = limits.confine(limits.prepare())
        layout.logs.mkdir(exist_ok=True)
        log_path = layout.logs / f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}.log"
        pid = spawn_detached(
            self._jail(layout).command(["bash", "-lc", command], None, merged, foreground=False),
            confine=confine,
            log_path=log_path,
        )
        started = start_time(pid)
        record = {"pid": pid, "started_at": started or 0, "log": str(log_path), "command": command}
        atomic_write(layout.procs / f"{pid}.json", json.dumps(record).encode())
        for old in sorted(layout.logs.glob("*.log"))[:-_KEEP_LOGS]:
            old.unlink(missing_ok=True)
        return record

    def process_alive(self, sb: Sandbox, proc: Mapping[str, Any]) -> bool:
        try:
            return pid_alive(int(proc["pid"]), int(proc["started_at"]))
        except (KeyError, TypeError, ValueError):
            return False

    def stop_process(self, sb: Sandbox, proc: Mapping[str, Any]) -> None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            stop_tree([(int(proc["pid"]), int(proc["started_at"]))])
            self._layout(sb).procs.joinpath(f"{int(proc['pid'])}.json").unlink(missing_ok=True)

    def read_log(self, sb: Sandbox, proc: Mapping[str, Any], tail: int) -> str:
        # A record from Postgres must not make us read anything but this sandbox's logs.
        return tail_log(self._layout(sb).logs, Path(str(proc.get("log", ""))), tail)
