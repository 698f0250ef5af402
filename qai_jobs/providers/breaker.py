"""A per-provider circuit breaker for creating new workspaces.

After ``threshold`` consecutive transient create failures a provider is skipped for
``cooldown`` seconds; then it is tried again (half-open): one success closes the breaker, one
more failure opens it for another cool-down. The state must be shared by every worker process
(each may be the one that sees the failures), so production keeps it in Redis; tests use the
in-memory store. Clock and store are injectable so tests can run the cool-down fast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from qai_jobs.constants import BREAKER_KEY

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 3
DEFAULT_COOLDOWN_S = 60.0
KEY_PREFIX = BREAKER_KEY


class BreakerStore(Protocol):
    def failures(self, provider: str) -> tuple[int, float]:
        """(consecutive failures, time the breaker opened or 0)."""

    def record_failure(self, provider: str, now: float, threshold: int) -> int:
        """Count one failure; open the breaker (stamp ``now``) when reaching ``threshold``."""

    def reset(self, provider: str) -> None: ...


class MemoryBreakerStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[int, float]] = {}

    def failures(self, provider: str) -> tuple[int, float]:
        with self._lock:
            return self._state.get(provider, (0, 0.0))

    def record_failure(self, provider: str, now: float, threshold: int) -> int:
        with self._lock:
            count, opened = self._state.get(provider, (0, 0.0))
            count += 1
            if count >= threshold:
                opened = now
            self._state[provider] = (count, opened)
            return count

    def reset(self, provider: str) -> None:
        with self._lock:
            self._state.pop(provider, None)


# Increment and (maybe) open in one step, so concurrent workers never lose a count.
_RECORD_LUA = """
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if n >= tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'opened_at', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"""


class RedisBreakerStore:
    def __init__(self, url: str, ttl_s: int = 24 * 3600) -> None:
        from qai_jobs.notify import client

        self.r = client(url)
        self.ttl_s = ttl_s
        self._record = self.r.register_script(_RECORD_LUA)

    def failures(self, provider: str) -> tuple[int, float]:
        raw: dict[bytes, bytes] = self.r.hgetall(KEY_PREFIX + provider)
        return int(raw.get(b"failures", 0)), float(raw.get(b"opened_at", 0))

    def record_failure(self, provider: str, now: float, threshold: int) -> int:
        return int(self._record(keys=[KEY_PREFIX + provider], args=[now, threshold, self.ttl_s]))

    def reset(self, provider: str) -> None:
        self.r.delete(KEY_PREFIX + provider)


class CircuitBreaker:
    def __init__(
        self,
        store: BreakerStore,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock

    def state(self, provider: str) -> str:
        """ "closed", "open" (skip it) or "half-open" (cool-down over: one try allowed).

        The breaker fails open: when its store (Redis) cannot be read, every provider may be
        tried, since an unreadable breaker must not turn into a failed provisioning.
        """
        try:
            count, opened = self.store.failures(provider)
        except Exception as exc:
            _warn(exc)
            return "closed"
        if count < self.threshold or not opened:
            return "closed"
        return "open" if self.clock() - opened < self.cooldown_s else "half-open"

    def allows(self, provider: str) -> bool:
        return self.state(provider) != "open"

    def record_success(self, provider: str) -> None:
        try:
            self.store.reset(provider)
        except Exception as exc:
            _warn(exc)

    def record_failure(self, provider: str) -> None:
        # In half-open the count is already >= threshold, so this re-opens with a fresh stamp.
        try:
            self.store.record_failure(provider, self.clock(), self.threshold)
        except Exception as exc:
            _warn(exc)


def _warn(exc: Exception) -> None:
    log.warning(
        "circuit breaker unavailable (%s): trying providers as if closed", type(exc).__name__
    )
