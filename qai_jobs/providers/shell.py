"""The shared base of the providers driven through a shell inside the sandbox (modal, e2b).

Both SDKs can only run commands and move bytes, so deletes, hashes, safe-path checks and the
dev server's bookkeeping are bash scripts (``scripts``) run through one primitive,
:meth:`ShellProvider.script`. A subclass supplies that primitive, its handle lookup, and the
calls its SDK does natively (create, sleep, file reads and writes, exec with live output).
"""

from __future__ import annotations

import abc
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from qai_jobs.errors import ErrorCode, PermanentError, SandboxGone
from qai_jobs.providers import scripts
from qai_jobs.providers.base import Provider, ReadBudget, Sandbox, safe_text

HANDLES_KEPT = 256  # SDK handles cached per process (a connection cache only)


class ShellProvider(Provider):
    """A provider whose sandbox-side work is done by shell scripts."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._lock = threading.Lock()
        # sandbox id -> the SDK's handle (and what a subclass keeps with it); nothing durable:
        # everything needed to find a sandbox again is in Sandbox.state.
        self._handles: OrderedDict[str, Any] = OrderedDict()

    # -- what a subclass provides -------------------------------------------------------------
    @abc.abstractmethod
    def script(
        self, sb: Sandbox, script: str, *, timeout_s: float = 120
    ) -> tuple[int, bytes, bytes]:
        """Run a bash script of ours in the sandbox's workspace: (exit code, stdout, stderr)."""

    @abc.abstractmethod
    def _read_file(self, sb: Sandbox, path: str, max_bytes: int) -> bytes | None:
        """One file's bytes (a path already checked to be a regular file), None if missing;
        at most ``max_bytes`` + 1 of them where the SDK can stream."""

    def _asleep(self, sb: Sandbox) -> bool:
        """Whether the recorded state already says the sandbox sleeps (no call needed)."""
        return False

    # -- the handle cache ---------------------------------------------------------------------
    def _cached(self, sandbox_id: str) -> Any:
        with self._lock:
            value = self._handles.get(sandbox_id)
            if value is not None:
                self._handles.move_to_end(sandbox_id)
            return value

    def _remember(self, sandbox_id: str, value: Any) -> None:
        with self._lock:
            self._handles[sandbox_id] = value
            self._handles.move_to_end(sandbox_id)
            while len(self._handles) > HANDLES_KEPT:
                self._handles.popitem(last=False)

    def _forget(self, sandbox_id: str) -> None:
        with self._lock:
            self._handles.pop(sandbox_id, None)

    # -- scripts ------------------------------------------------------------------------------
    def _checked(self, sb: Sandbox, script: str, *, timeout_s: float = 120) -> bytes:
        code, out, err = self.script(sb, script, timeout_s=timeout_s)
        if code != 0:
            raise PermanentError(
                f"sandbox helper failed ({code}): {err.decode(errors='replace')[-300:]}",
                code=ErrorCode.PROVIDER_ERROR,
            )
        return out

    def _paths(self, sb: Sandbox, script: str) -> list[str]:
        """The NUL-separated paths a script prints."""
        out = self._checked(sb, script)
        return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]

    # -- files --------------------------------------------------------------------------------
    def delete_files(self, sb: Sandbox, paths: Sequence[str]) -> list[str]:
        gone: list[str] = []
        for part in scripts.chunks(paths):
            gone += self._paths(sb, scripts.delete_script(part))
        return gone

    def read_files(self, sb: Sandbox, paths: Sequence[str]) -> dict[str, bytes | None]:
        result: dict[str, bytes | None] = dict.fromkeys(paths)
        sizes: dict[str, int] = {}
        for part in scripts.chunks(list(result)):
            # Regular files inside the workspace only: never a symlink out of it.
            sizes |= scripts.parse_sizes(self._paths(sb, scripts.safe_files_script(part)))
        budget = ReadBudget(self.settings, sizes)  # refused here, before a byte is read
        for path in sizes:
            data = self._read_file(sb, path, budget.cap())
            if data is not None:
                budget.spend(path, len(data))
            result[path] = data
        return result

    def hashes(self, sb: Sandbox, paths: Sequence[str] | None = None) -> dict[str, str]:
        cap = self.settings.tracked_max_file_bytes
        if paths is None:
            out = self._checked(sb, scripts.hash_script(None, cap), timeout_s=600)
            return scripts.parse_hashes(out, filter_ignored=True)
        result: dict[str, str] = {}
        for part in scripts.chunks(paths):
            out = self._checked(sb, scripts.hash_script(part, cap), timeout_s=600)
            result.update(scripts.parse_hashes(out, filter_ignored=False))
        return result

    # -- processes ----------------------------------------------------------------------------
    def _quietly(self, sb: Sandbox, script: str, timeout_s: float) -> tuple[int, bytes] | None:
        """Run a bookkeeping script; None when the sandbox is gone or asleep."""
        try:
            code, out, _ = self.script(sb, script, timeout_s=timeout_s)
        except SandboxGone:
            return None
        except PermanentError as exc:
            if exc.code == ErrorCode.SANDBOX_SLEEPING:
                return None
            raise
        return code, out

    def process_alive(self, sb: Sandbox, proc: Mapping[str, Any]) -> bool:
        if self._asleep(sb) or not scripts.proc_matches(sb, proc):
            return False
        done = self._quietly(sb, scripts.alive_script(int(proc["pid"])), 30)
        return done is not None and done[0] == 0

    def stop_process(self, sb: Sandbox, proc: Mapping[str, Any]) -> None:
        if not self._asleep(sb) and scripts.proc_matches(sb, proc):
            self._quietly(sb, scripts.stop_script(int(proc["pid"])), 30)

    def read_log(self, sb: Sandbox, proc: Mapping[str, Any], tail: int) -> str:
        if self._asleep(sb) or not proc.get("proc_id"):
            return ""
        done = self._quietly(sb, scripts.tail_script(str(proc["proc_id"]), tail), 30)
        return safe_text(done[1]) if done is not None else ""

    def port_ready(self, sb: Sandbox, port: int) -> bool:
        done = self._quietly(sb, scripts.port_script(port), 15)
        return done is not None and done[0] == 0


def replace(sb: Sandbox, new: Sandbox) -> Sandbox:
    """Point ``sb`` at the new sandbox in place (callers may keep the old object) and return it."""
    sb.sandbox_id, sb.state = new.sandbox_id, new.state
    return sb
