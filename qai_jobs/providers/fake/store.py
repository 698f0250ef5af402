"""Where the fake provider keeps its sandboxes: Redis (shared by every worker) or memory.

Faults to inject and the per-project journal of calls live in the same store, so a test can
steer and observe worker processes it does not share memory with.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from qai_jobs.constants import FAKE_KEY

PREFIX = FAKE_KEY
# Where the sandboxes live when not on the broker's Redis: `qai-jobs bench` gives them a server
# of its own, so their commands are not counted as the job system's (qai_jobs.bench.fakestore).
STORE_URL_ENV = "QAI_FAKE_STORE_URL"


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

        from qai_jobs.notify import client

        self.r = client(os.environ.get(STORE_URL_ENV) or url)
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
