"""Count the Redis round trips that carry PUBLISH, and hear what an action's channel got.

A pipeline is one ``send_packed_command`` on one connection, a lone command another: counting
those sends counts round trips (commandstats would count the PUBLISH commands, which a
pipeline does not save).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis

from qai_jobs import notify


class _Counting(redis.Connection):
    sends: list[int] = []  # PUBLISH commands per round trip that carried any

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        raw = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        publishes = raw.count(b"\r\nPUBLISH\r\n")
        if publishes:
            _Counting.sends.append(publishes)
        super().send_packed_command(command, check_health)


def count_publishes(monkeypatch: pytest.MonkeyPatch, url: str) -> list[int]:
    """From now on the notices of this process go through a counting client; the list gets
    one entry per round trip carrying PUBLISH (how many PUBLISH it carried)."""
    counted: redis.Redis[bytes] = redis.Redis.from_url(url, connection_class=_Counting)
    monkeypatch.setattr(notify, "client", lambda _url: counted)
    _Counting.sends = []
    return _Counting.sends


class Listener:
    """Subscribed to actions' channels before they run: ``heard`` gives what each got."""

    def __init__(self, url: str, action_ids: list[uuid.UUID]) -> None:
        self._redis: redis.Redis[bytes] = redis.Redis.from_url(url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(*(notify.channel(a) for a in action_ids))
        self.got: dict[str, list[tuple[float, dict[str, Any]]]] = {
            notify.channel(a): [] for a in action_ids
        }
        self._wait_subscribed(len(action_ids))

    def _wait_subscribed(self, n: int) -> None:
        deadline = time.monotonic() + 5
        while sum(1 for _, count in self._redis.pubsub_numsub(*self.got) if count) < n:
            assert time.monotonic() < deadline, "subscription not confirmed"
            self._pubsub.get_message(timeout=0.05)

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            raw = self._pubsub.get_message(timeout=min(left, 0.05))
            if raw is not None and raw["type"] == "message":
                chan = raw["channel"].decode()
                self.got[chan].append((time.monotonic(), json.loads(raw["data"])))

    def heard(self, action_id: uuid.UUID) -> list[dict[str, Any]]:
        return [m for _, m in self.got[notify.channel(action_id)]]

    def close(self) -> None:
        self._pubsub.close()
        self._redis.close()
