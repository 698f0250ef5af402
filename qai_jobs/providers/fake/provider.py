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
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from qai_jobs.config import Settings
from qai_jobs.constants import FAKE_KEY
from qai_jobs.errors import ErrorCode, PermanentError, SandboxGone, TransientError
from qai_jobs.providers.base import (
    CreateSpec,
    ExecResult,
    OutputCallback,
    Provider,
    Sandbox,
    SandboxStatus,
    SleepOutcome,
)
from qai_jobs.sync import is_ignored, sha256

PREFIX = FAKE_KEY


class Store(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes) -> None: ...
    def delete(self, *keys: str) -> None: ...
    def hgetall(self, key: str) -> dict[str, bytes]: ...
    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None: ...
    def hdel(self, key: str, *fields: str) -> int: ...
    def append(self, key: str, value: str) -> None: ...
    def take_fault(self, op: str) -> dict[str, Any] | None: ...


class MemoryStore:
    """In-process store for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.lists: dict[str, list[str]] = {}
        self.faults: list[dict[str, Any]] = []

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def set(self, key: str, value: bytes) -> None:
        self.values[key] = value

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.values.pop(key, None)
            self.hashes.pop(key, None)

    def hgetall(self, key: str) -> dict[str, bytes]:
        return dict(self.hashes.get(key, {}))

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    def hdel(self, key: str, *fields: str) -> int:
        h = self.hashes.get(key, {})
        return sum(1 for f in fields if h.pop(f, None) is not None)

    def append(self, key: str, value: str) -> None:
        self.lists.setdefault(key, []).append(value)

    def take_fault(self, op: str) -> dict[str, Any] | None:
        with self._lock:
            return _take(self.faults, op)

    def inject(self, fault: dict[str, Any]) -> None:
        self.faults.append(fault)


def _take(faults: list[dict[str, Any]], op: str) -> dict[str, Any] | None:
    for fault in faults:
        if fault["op"] in ("*", op) and fault["count"] > 0:
            fault["count"] -= 1
            return dict(fault)
    return None


# Atomically pick and decrement the first matching fault (several workers share the list).
_TAKE_FAULT_LUA = """
local faults = cjson.decode(redis.call('GET', KEYS[1]) or '[]')
for i, f in ipairs(faults) do
  if (f.op == '*' or f.op == ARGV[1]) and f.count > 0 then
    f.count = f.count - 1
    redis.call('SET', KEYS[1], cjson.encode(faults))
    return cjson.encode(f)
  end
end
return false
"""


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url)
        self._take = self.r.register_script(_TAKE_FAULT_LUA)

    def get(self, key: str) -> bytes | None:
        return self.r.get(PREFIX + key)

    def set(self, key: str, value: bytes) -> None:
        self.r.set(PREFIX + key, value)

    def delete(self, *keys: str) -> None:
        if keys:
            self.r.delete(*(PREFIX + k for k in keys))

    def hgetall(self, key: str) -> dict[str, bytes]:
        raw: dict[bytes, bytes] = self.r.hgetall(PREFIX + key)
        return {k.decode(): v for k, v in raw.items()}

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        if mapping:
            self.r.hset(PREFIX + key, mapping=dict(mapping))  # type: ignore[arg-type]

    def hdel(self, key: str, *fields: str) -> int:
        return int(self.r.hdel(PREFIX + key, *fields)) if fields else 0

    def append(self, key: str, value: str) -> None:
        self.r.rpush(PREFIX + key, value)

    def take_fault(self, op: str) -> dict[str, Any] | None:
        raw = self._take(keys=[PREFIX + "faults"], args=[op])
        return json.loads(raw) if raw else None


def inject_fault(
    redis_url: str,
    *,
    op: str = "*",
    count: int = 1,
    mode: str = "transient",
    latency: float = 0.0,
) -> None:
    """Make the next ``count`` calls of ``op`` ("*" = any) on every fake provider misbehave.

    ``mode`` is "transient", "permanent", "gone" (the sandbox vanished) or "latency" (only slow).
    """
    import redis

    r = redis.Redis.from_url(redis_url)
    faults = json.loads(r.get(PREFIX + "faults") or b"[]")
    faults.append({"op": op, "count": count, "mode": mode, "latency": latency})
    r.set(PREFIX + "faults", json.dumps(faults))


def clear_faults(redis_url: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).delete(PREFIX + "faults")


def journal(redis_url: str, project_id: str) -> list[dict[str, Any]]:
    """Every call the fake provider made for a project: op, start, end, pid, sandbox."""
    import redis

    r = redis.Redis.from_url(redis_url)
    rows: list[bytes] = r.lrange(PREFIX + f"journal:{project_id}", 0, -1)
    return [json.loads(row) for row in rows]


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
        self._meta(sandbox_id)
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
        self._done("read_files", sb, started)
        return {p: existing.get(p) for p in paths}

    def hashes(self, sb: Sandbox, paths: Sequence[str] | None = None) -> dict[str, str]:
        _, started = self._live("hashes", sb)
        existing = self.store.hgetall(f"files:{sb.sandbox_id}")
        wanted = paths if paths is not None else [p for p in existing if not is_ignored(p)]
        self._done("hashes", sb, started)
        return {p: sha256(existing[p]) for p in wanted if p in existing}

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
    ) -> ExecResult:
        _, started = self._live("run", sb)
        script = argv[2] if len(argv) == 3 and argv[:2] == ["bash", "-lc"] else shlex.join(argv)
        code, out, timed_out = self._interpret(sb, script, timeout_s)
        if out and on_output is not None:
            on_output("stdout", out.encode())
        self._journal("run", self._project(sb), started, sb.sandbox_id, script)
        return ExecResult(code, out, "", int((time.time() - started) * 1000), timed_out)

    def _interpret(self, sb: Sandbox, script: str, timeout_s: float) -> tuple[int, str, bool]:
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
            time.sleep(min(seconds, timeout_s))
            return (124, "", True) if seconds > timeout_s else (0, "", False)
        if head == "cat":
            files = self.store.hgetall(f"files:{sb.sandbox_id}")
            missing = [a for a in args if a not in files]
            if missing:
                return 1, "", False
            return 0, "".join(files[a].decode(errors="replace") for a in args), False
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
