"""wait()'s pub/sub connection is kept per thread between waits; it must stay correct."""

from __future__ import annotations

import uuid

import redis

from qai_jobs.client import WorkspaceClient
from qai_jobs.client.waiting import _Subscription
from qai_jobs.config import Settings


def _channel() -> str:
    return f"qai:test:{uuid.uuid4().hex}"


def test_a_wait_never_sees_what_an_earlier_wait_left_unread(settings: Settings) -> None:
    client = WorkspaceClient(settings)
    admin = redis.Redis.from_url(settings.redis_url)
    first, second = _channel(), _channel()
    sub = _Subscription(client._subscriber, first)
    admin.publish(first, '{"type": "done", "for": "first"}')  # never read
    sub.close()
    sub = _Subscription(client._subscriber, second)
    assert sub(0.2) is None  # the first channel's message is skipped, not returned
    admin.publish(second, '{"type": "done", "for": "second"}')
    assert sub(5.0) == {"type": "done", "for": "second"}
    sub.close()


def test_a_kept_connection_that_died_is_replaced(settings: Settings) -> None:
    client = WorkspaceClient(settings)
    admin = redis.Redis.from_url(settings.redis_url)
    sub = _Subscription(client._subscriber, _channel())
    assert sub.pubsub is not None and sub.pubsub.connection is not None
    kept = sub.pubsub.connection._sock.getsockname()
    sub.close()
    admin.client_kill(f"{kept[0]}:{kept[1]}")  # as a Redis restart or an idle timeout would
    channel = _channel()
    sub = _Subscription(client._subscriber, channel)
    admin.publish(channel, '{"type": "done"}')
    # Live, not degraded to the 2 s safety re-check (which returns None here).
    assert sub(5.0) == {"type": "done"}
    sub.close()


def test_waits_reuse_one_connection(settings: Settings) -> None:
    client = WorkspaceClient(settings)
    seen = set()
    for _ in range(3):
        sub = _Subscription(client._subscriber, _channel())
        assert sub.pubsub is not None and sub.pubsub.connection is not None
        seen.add(sub.pubsub.connection._sock.getsockname())
        sub.close()
    assert len(seen) == 1


def test_a_wait_inside_another_waits_callback_leaves_the_outer_one_its_messages(
    settings: Settings,
) -> None:
    client = WorkspaceClient(settings)
    admin = redis.Redis.from_url(settings.redis_url)
    outer_channel, inner_channel = _channel(), _channel()
    outer = _Subscription(client._subscriber, outer_channel)
    inner = _Subscription(client._subscriber, inner_channel)  # e.g. from outer's on_event
    admin.publish(outer_channel, '{"type": "done", "for": "outer"}')
    admin.publish(inner_channel, '{"type": "done", "for": "inner"}')
    assert inner(5.0) == {"type": "done", "for": "inner"}
    inner.close()
    assert outer(5.0) == {"type": "done", "for": "outer"}
    outer.close()
