"""Redis pub/sub notifications: action done, progress, live command output.

Notifications are a fast path only; Postgres stays the truth. A waiter that misses one (Redis
wiped, connection dropped) still finds the outcome in Postgres on its next check.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

import redis

from qai_jobs.constants import ACTION_CHANNEL

_clients: dict[tuple[int, str], redis.Redis[bytes]] = {}
_lock = threading.Lock()


def client(url: str) -> redis.Redis[bytes]:
    key = (os.getpid(), url)
    with _lock:
        r = _clients.get(key)
        if r is None:
            # A Redis that hangs fails a call after a while instead of blocking it for ever.
            r = redis.Redis.from_url(
                url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
            )
            _clients[key] = r
        return r


def reset() -> None:
    """Forget clients inherited across a fork."""
    with _lock:
        _clients.clear()


def channel(action_id: uuid.UUID | str) -> str:
    return f"{ACTION_CHANNEL}{action_id}"


def publish(url: str, action_id: uuid.UUID | str, message: dict[str, Any]) -> None:
    try:
        client(url).publish(channel(action_id), json.dumps(message))
    except redis.RedisError:
        pass  # best effort: waiters fall back to Postgres


def publish_many(url: str, messages: list[tuple[uuid.UUID | str, dict[str, Any]]]) -> None:
    if not messages:
        return
    try:
        pipe = client(url).pipeline(transaction=False)
        for action_id, message in messages:
            pipe.publish(channel(action_id), json.dumps(message))
        pipe.execute()
    except redis.RedisError:
        pass
