"""Waiting for an action by notification: Redis pub/sub first, Postgres as the truth.

``wait`` subscribes to the action's channel before it reads Postgres, so a completion between
the two cannot be missed; Postgres is read again on every "done" and at a slow safety interval,
in case a notification was lost (Redis is a fast, forgetful transport).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from typing import Any

import redis

from qai_jobs.constants import TERMINAL
from qai_jobs.errors import NotFound
from qai_jobs.notify import channel
from qai_jobs.notify import client as redis_client

# How often a waiter re-reads Postgres even without a notification (lost-message safety net).
SAFETY_RECHECK_SECONDS = 2.0


def wait_for(
    subscriber: Subscriber,
    get_action: Callable[[uuid.UUID], dict[str, Any]],
    uid: uuid.UUID,
    timeout: float | None,
    on_event: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """Block until the action is terminal; return it (any terminal status)."""
    action_id = uid
    deadline = None if timeout is None else time.monotonic() + timeout
    with closing(_Subscription(subscriber, channel(uid))) as messages:
        while True:
            try:
                action = get_action(uid)
            except NotFound:
                # Sent straight to the broker by another producer: recorded on receipt.
                action = {"status": "unrecorded"}
            if action["status"] in TERMINAL:
                return action
            recheck_at = time.monotonic() + SAFETY_RECHECK_SECONDS
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError(
                        f"action {action_id} is still {action['status']} after {timeout}s"
                    )
                limit = recheck_at if deadline is None else min(recheck_at, deadline)
                message = messages(max(0.0, limit - now))
                if message is None:
                    if time.monotonic() >= recheck_at:
                        break
                    continue
                if message.get("type") == "done":
                    break
                if on_event is not None:
                    on_event(message)


class Subscriber(threading.local):
    """One pub/sub connection per thread (and process), kept open between waits: opening one
    costs a TCP connect, while subscribing on an open one is a single round trip."""

    def __init__(self, url: str):
        self.url = url
        self.idle: tuple[int, redis.client.PubSub] | None = None

    def borrow(self) -> redis.client.PubSub:
        """The kept connection; a new one if there is none, or if it is lent out already (a
        wait inside another wait's on_event must not read the outer wait's messages)."""
        held, self.idle = self.idle, None
        if held is not None and held[0] == os.getpid():
            return held[1]
        return redis_client(self.url).pubsub()

    def give_back(self, pubsub: redis.client.PubSub) -> None:
        if self.idle is None:
            self.idle = (os.getpid(), pubsub)
        else:
            _close(pubsub)


def _close(pubsub: redis.client.PubSub) -> None:
    with contextlib.suppress(redis.RedisError):
        pubsub.close()


class _Subscription:
    def __init__(self, subscriber: Subscriber, name: str):
        self.subscriber = subscriber
        self.name = name.encode()
        self.pubsub: redis.client.PubSub | None = None
        # A kept connection may have died since (Redis restarted, an idle timeout): one more
        # try on a fresh one; after that, degrade to the safety re-check.
        for _ in range(2):
            try:
                self.pubsub = subscriber.borrow()
                self._subscribe()
                return
            except redis.RedisError:
                self._broken()

    def _subscribe(self) -> None:
        assert self.pubsub is not None
        self.pubsub.subscribe(self.name)
        # Wait for the confirmation: only then can no later PUBLISH pass us by. Whatever an
        # earlier wait on this connection left unread comes first: skip it.
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            raw = self.pubsub.get_message(timeout=left)
            if raw is not None and raw["type"] == "subscribe" and raw["channel"] == self.name:
                return

    def _broken(self) -> None:
        if self.pubsub is not None:
            _close(self.pubsub)
        self.pubsub = None

    def __call__(self, timeout: float) -> dict[str, Any] | None:
        if self.pubsub is None:
            time.sleep(min(timeout, SAFETY_RECHECK_SECONDS))
            return None
        try:
            raw = self.pubsub.get_message(timeout=timeout)
        except redis.RedisError:
            self._broken()
            return None
        if raw is None or raw.get("type") != "message" or raw.get("channel") != self.name:
            return None
        try:
            message: dict[str, Any] = json.loads(raw["data"])
        except (TypeError, ValueError):
            return None
        return message

    def close(self) -> None:
        if self.pubsub is None:
            return
        try:
            self.pubsub.unsubscribe(self.name)
        except redis.RedisError:
            self._broken()
            return
        self.subscriber.give_back(self.pubsub)
        self.pubsub = None
