"""The ``fake`` provider: workspaces kept in memory, free, with fault injection.

Its state lives in Redis by default, so that every worker process sees the same sandboxes and a
test or benchmark can inject faults into workers it does not share memory with; unit tests pass
a :class:`MemoryStore`. Every call is also appended to a per-project journal (operation, start and
end time, pid), which lets tests observe what really ran and when, independently of the
pipeline's own bookkeeping.

Commands are not executed: a tiny interpreter understands ``true``, ``false``, ``exit N``,
``echo ...``, ``sleep S`` and ``cat PATH``; anything else exits 0 with no output.
"""

from __future__ import annotations

import json
import os
import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from qai_jobs.cancel import Cancel
from qai_jobs.config import Settings
from qai_jobs.errors import ErrorCode, PermanentError, SandboxGone, TransientError, not_owned
from qai_jobs.providers.base import (
    CreateSpec,
    ExecResult,
    OutputCallback,
    Provider,
    ReadBudget,
    Sandbox,
    SandboxStatus,
    SleepOutcome,
    safe_text,
)
from qai_jobs.providers.fake.store import RedisStore, Store
from qai_jobs.sync import is_ignored, sha256


class FakeProvider(Provider):
    name: ClassVar[str] = "fake"

    def __init__(self, settings: Settings, store: Store | None = None, latency: float = 0.0):
        super().__init__(settings)
        self.store: Store = store if store is not None else RedisStore(settings.redis_url)
        self.latency = latency

    # -- bookkeeping -------------------------------------------------------------------------
    def _meta(self, sandbox_id: str) -> dict[str, Any]:
        raw = self.store.get(f"sb:{sandbox_id}")
        if raw is None:
            raise SandboxGone(f"fake sandbox {sandbox_id} does not exist")
        meta: dict[str, Any] = json.loads(raw)
        return meta

    def _save(self, sandbox_id: str, meta: dict[str, Any]) -> None:
        self.store.set(f"sb:{sandbox_id}", json.dumps(meta).encode())

    def _call(self, op: str, sb: Sandbox | None, project_id: str | None = None) -> float:
        """Apply injected faults and latency; return the start time for the journal."""
        started = time.time()
        fault = self.store.take_fault(op)
        delay = self.latency + (fault["latency"] if fault else 0.0)
        if delay:
            time.sleep(delay)
        if fault:
            mode = fault["mode"]
            if mode == "transient":
                raise TransientError(f"injected transient fault in {op}")
            if mode == "permanent":
                raise PermanentError(f"injected permanent fault in {op}")
            if mode == "gone" and sb is not None:
                self.store.delete(f"sb:{sb.sandbox_id}", f"files:{sb.sandbox_id}")
        return started

    def _journal(
        self, op: str, project_id: str, started: float, sandbox_id: str = "", detail: str = ""
    ) -> None:
        entry = {
            "op": op,
            "start": started,
            "end": time.time(),
            "pid": os.getpid(),
            "sandbox_id": sandbox_id,
            "detail": detail,
        }
        self.store.append(f"journal:{project_id}", json.dumps(entry))

    def _project(self, sb: Sandbox) -> str:
        return str(sb.state.get("project_id", ""))

    def _live(self, op: str, sb: Sandbox) -> tuple[dict[str, Any], float]:
        started = self._call(op, sb)
        meta = self._meta(sb.sandbox_id)
        if meta["status"] != SandboxStatus.RUNNING:
            raise PermanentError(f"fake sandbox {sb.sandbox_id} is {meta['status']}")
        return meta, started

    def _done(self, op: str, sb: Sandbox, started: float) -> None:
        self._journal(op, self._project(sb), started, sb.sandbox_id)

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, spec: CreateSpec) -> Sandbox:
        started = self._call("create", None)
        sandbox_id = f"fake-{uuid.uuid4().hex[:12]}"
        files: dict[str, bytes] = {}
        if spec.snapshot_id:
            files = self._snapshot_files(spec.snapshot_id)
        meta = {"status": SandboxStatus.RUNNING, "project_id": spec.project_id, "processes": {}}
        self._save(sandbox_id, meta)
        self.store.hset(f"files:{sandbox_id}", files)
        self._journal("create", spec.project_id, started, sandbox_id)
        return Sandbox(self.name, sandbox_id, {"project_id": spec.project_id})

    def adopt(self, sandbox_id: str, spec: CreateSpec) -> Sandbox:
        if self._meta(sandbox_id).get("project_id") not in (None, spec.project_id):
            raise not_owned(sandbox_id, spec.project_id)
        return Sandbox(self.name, sandbox_id, {"project_id": spec.project_id})

    def status(self, sb: Sandbox) -> SandboxStatus:
        raw = self.store.get(f"sb:{sb.sandbox_id}")
        if raw is None:
            return SandboxStatus.GONE
        return SandboxStatus(json.loads(raw)["status"])

    def sleep(self, sb: Sandbox) -> SleepOutcome:
        started = self._call("sleep", sb)
        meta = self._meta(sb.sandbox_id)
        snapshot_id = self._take_snapshot(sb)
        meta.update(status=SandboxStatus.SLEEPING, processes={})
        self._save(sb.sandbox_id, meta)
        self._done("sleep", sb, started)
        return SleepOutcome(sb, snapshot_id)

    def wake(self, sb: Sandbox) -> Sandbox:
        started = self._call("wake", sb)
        meta = self._meta(sb.sandbox_id)
        meta["status"] = SandboxStatus.RUNNING
        self._save(sb.sandbox_id, meta)
        self._done("wake", sb, started)
        return sb

    def _take_snapshot(self, sb: Sandbox) -> str:
        snapshot_id = f"fakesnap-{uuid.uuid4().hex[:12]}"
        self.store.hset(f"snap:{snapshot_id}", self.store.hgetall(f"files:{sb.sandbox_id}"))
        self.store.set(f"snapmeta:{snapshot_id}", b"1")
        return snapshot_id

    def _snapshot_files(self, snapshot_id: str) -> dict[str, bytes]:
        if self.store.get(f"snapmeta:{snapshot_id}") is None:
            raise PermanentError(
                f"snapshot {snapshot_id} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
            )
        return self.store.hgetall(f"snap:{snapshot_id}")

    def snapshot(self, sb: Sandbox) -> str:
        _, started = self._live("snapshot", sb)
        snapshot_id = self._take_snapshot(sb)
        self._done("snapshot", sb, started)
        return snapshot_id

    def restore(self, sb: Sandbox, snapshot_id: str) -> Sandbox:
        _, started = self._live("restore", sb)
        files = self._snapshot_files(snapshot_id)
        self.store.delete(f"files:{sb.sandbox_id}")
        self.store.hset(f"files:{sb.sandbox_id}", files)
        self._done("restore", sb, started)
        return sb

    def destroy(self, sb: Sandbox) -> None:
        started = self._call("destroy", sb)
        self.store.delete(f"sb:{sb.sandbox_id}", f"files:{sb.sandbox_id}")
        self._done("destroy", sb, started)

    # -- files -------------------------------------------------------------------------------
    def write_files(self, sb: Sandbox, files: Sequence[tuple[str, bytes]]) -> None:
        _, started = self._live("write_files", sb)
        self.store.hset(f"files:{sb.sandbox_id}", dict(files))
        self._done("write_files", sb, started)

    def delete_files(self, sb: Sandbox, paths: Sequence[str]) -> list[str]:
        _, started = self._live("delete_files", sb)
        existing = self.store.hgetall(f"files:{sb.sandbox_id}")
        gone = [p for p in paths if p in existing]
        self.store.hdel(f"files:{sb.sandbox_id}", *gone)
        self._done("delete_files", sb, started)
        return gone

    def read_files(self, sb: Sandbox, paths: Sequence[str]) -> dict[str, bytes | None]:
        _, started = self._live("read_files", sb)
        existing = self.store.hgetall(f"files:{sb.sandbox_id}")
        found = {p: existing.get(p) for p in paths}
        ReadBudget(self.settings, {p: len(d) for p, d in found.items() if d is not None})
        self._done("read_files", sb, started)
        return found

    def hashes(self, sb: Sandbox, paths: Sequence[str] | None = None) -> dict[str, str]:
        _, started = self._live("hashes", sb)
        existing = self.store.hgetall(f"files:{sb.sandbox_id}")
        wanted = paths if paths is not None else [p for p in existing if not is_ignored(p)]
        self._done("hashes", sb, started)
        cap = self.settings.tracked_max_file_bytes
        return {p: sha256(existing[p]) for p in wanted if p in existing and len(existing[p]) <= cap}

    # -- processes ---------------------------------------------------------------------------
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
        _, started = self._live("run", sb)
        script = argv[2] if len(argv) == 3 and argv[:2] == ["bash", "-lc"] else shlex.join(argv)
        code, out, timed_out = self._interpret(sb, script, timeout_s, cancel)
        self._journal("run", self._project(sb), started, sb.sandbox_id, script)
        if cancel is not None:
            cancel.check()
        if out and on_output is not None:
            on_output("stdout", out.encode())
        return ExecResult(code, out, "", int((time.time() - started) * 1000), timed_out)

    def _interpret(
        self, sb: Sandbox, script: str, timeout_s: float, cancel: Cancel | None = None
    ) -> tuple[int, str, bool]:
        try:
            words = shlex.split(script)
        except ValueError:
            return 2, "", False
        if not words:
            return 0, "", False
        head, args = words[0], words[1:]
        if head == "true":
            return 0, "", False
        if head == "false":
            return 1, "", False
        if head == "exit":
            return int(args[0]) if args else 0, "", False
        if head == "echo":
            return 0, " ".join(args) + "\n", False
        if head == "sleep":
            seconds = float(args[0]) if args else 0.0
            # A cancel stops the sleep at once, as a kill stops a real one.
            (cancel or Cancel()).wait(min(seconds, timeout_s))
            return (124, "", True) if seconds > timeout_s else (0, "", False)
        if head == "cat":
            files = self.store.hgetall(f"files:{sb.sandbox_id}")
            missing = [a for a in args if a not in files]
            if missing:
                return 1, "", False
            return 0, "".join(safe_text(files[a]) for a in args), False
        return 0, "", False

    def start_process(
        self, sb: Sandbox, command: str, *, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        meta, started = self._live("start_process", sb)
        pid = int(time.time() * 1000) % 1_000_000
        meta["processes"][str(pid)] = {"command": command, "log": f"started: {command}\n"}
        self._save(sb.sandbox_id, meta)
        self._done("start_process", sb, started)
        return {"pid": pid, "started_at": started, "command": command}

    def process_alive(self, sb: Sandbox, proc: Mapping[str, Any]) -> bool:
        raw = self.store.get(f"sb:{sb.sandbox_id}")
        if raw is None:
            return False
        meta = json.loads(raw)
        return meta["status"] == SandboxStatus.RUNNING and str(proc.get("pid")) in meta["processes"]

    def stop_process(self, sb: Sandbox, proc: Mapping[str, Any]) -> None:
        raw = self.store.get(f"sb:{sb.sandbox_id}")
        if raw is None:
            return
        meta = json.loads(raw)
        meta["processes"].pop(str(proc.get("pid")), None)
        self._save(sb.sandbox_id, meta)

    def read_log(self, sb: Sandbox, proc: Mapping[str, Any], tail: int) -> str:
        meta = self._meta(sb.sandbox_id)
        entry = meta["processes"].get(str(proc.get("pid")))
        text = entry["log"] if entry else ""
        return "\n".join(text.splitlines()[-tail:])

    def preview_url(self, sb: Sandbox, port: int) -> str:
        return f"http://{sb.sandbox_id}.fake.invalid:{port}"

    def port_ready(self, sb: Sandbox, port: int) -> bool:
        return self.status(sb) is SandboxStatus.RUNNING

    def git_sync(self, sb: Sandbox, url: str, ref: str) -> str:
        _, started = self._live("git_sync", sb)
        self._done("git_sync", sb, started)
        return sha256(f"{url}@{ref}".encode())[:40]
