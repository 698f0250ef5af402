"""What a running action tells its watchers: its stage (Postgres, Redis) and live output.

A quick action's notices cost one Redis round trip: its stages are held while it is young and
go out with its ``done`` in one pipeline (``Notices``). A longer one shows each stage at once
after that, and a stage held when it stops being young is sent by the heartbeat's watchdog
(``Heartbeat._watch_loop``) even while the action sits in one long provider call.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from qai_jobs.notify import publish, publish_many
from qai_jobs.providers.base import safe_text
from qai_jobs.runner.context import OutputFn, ProgressFn

STAGE_EVERY_SECONDS = 0.2  # at most this often a new count within one stage
# Stages are held this long from the action's start. A quick write or read (a few provider
# calls) ends within it, so its two or three stages ride in its done's pipeline: one round
# trip instead of three or four. It equals STAGE_EVERY_SECONDS, so a stage reaches a watcher
# no later than the throttle already lets counts through; with the watchdog's wake-ups (at
# most 0.5 s apart, sooner while a stage waits) a held stage is seen within about 0.5 s.
HOLD_SECONDS = 0.2


class Notices:
    """One running action's notices to its watchers, in the order they were made.

    The action's thread adds stages and output; the watchdog only asks (``due_in``) and
    starts a flush (``poke``); the drain ends it (``finish``, ``drop``). ``_lock`` guards the
    state and is never held across Redis I/O, so the watchdog never waits for Redis; ``_send``
    lets one send out at a time, each taking what is held when it starts, so pipelines leave
    in order.
    """

    def __init__(self, redis_url: str, action_id: uuid.UUID) -> None:
        self._url = redis_url
        self._id = action_id
        self._young_until = time.monotonic() + HOLD_SECONDS
        self._held: list[dict[str, Any]] = []
        self._closed = False  # done was sent, or the action ended without it: nothing more
        self._flushing = False  # a flush started by the watchdog is on its way
        self._lock = threading.Lock()
        self._send = threading.Lock()

    def stage(self, message: dict[str, Any]) -> None:
        """Hold ``message`` while the action is young; later send it at once, after what is held."""
        with self._lock:
            if self._closed:
                return
            if time.monotonic() < self._young_until:
                self._held.append(message)
                return
        self._send_after_held([message])

    def now(self, message: dict[str, Any]) -> None:
        """Send ``message`` (live output) at once, after what is held, in the same round trip."""
        self._send_after_held([message])

    def finish(self, done: dict[str, Any] | None) -> None:
        """Send what is held, then ``done`` (None: none), in one pipeline; nothing after."""
        self._send_after_held([] if done is None else [done], close=True)

    def drop(self) -> None:
        """The action ended here without a done (its lease is lost, or the drain failed): what
        is held is not sent. This worker records nothing more for it; whoever settles it next
        (the next holder, recovery's worker_lost) tells the watchers, and a late stage of this
        attempt arriving after the next attempt's would mislead them."""
        with self._lock:
            self._held.clear()
            self._closed = True

    def due_in(self, now: float) -> float | None:
        """Seconds until what is held is to be sent; None: nothing waits for the watchdog."""
        with self._lock:
            if not self._held or self._closed or self._flushing:
                return None
            return max(0.0, self._young_until - now)

    def poke(self, now: float) -> None:
        """The watchdog's turn: send what is held once the action is no longer young, on a
        thread of its own, since a hung Redis must not keep the watchdog from declaring the
        lease lost (heartbeat.py). Only actions that outlive the hold start one."""
        with self._lock:
            if not self._held or self._closed or self._flushing or now < self._young_until:
                return
            self._flushing = True
        threading.Thread(target=self._flush, name=f"qai-notices-{self._id}", daemon=True).start()

    def _flush(self) -> None:
        try:
            self._send_after_held([])
        finally:
            with self._lock:
                self._flushing = False

    def _send_after_held(self, messages: list[dict[str, Any]], close: bool = False) -> None:
        with self._send:
            with self._lock:
                if self._closed:
                    return
                batch, self._held = self._held + messages, []
                self._closed = close
            if len(batch) == 1:
                publish(self._url, self._id, batch[0])
            elif batch:
                publish_many(self._url, [(self._id, m) for m in batch])


def progress_writer(
    notices: Notices,
    note_stage: Callable[[dict[str, Any]], None],
    check_lease: Callable[[], None],
) -> ProgressFn:
    """Tell the action's watchers its stage (``Notices``: at once, or with its done if it is
    quick), and hand it to the heartbeat, which records it in Postgres with its next renewal:
    a quick action costs no transaction for its stages, a long one shows its stage within a
    heartbeat (get_action, the CLI)."""
    last = [0.0]
    published: list[dict[str, Any] | None] = [None]

    def progress(stage: str, done: int | None, total: int | None) -> None:
        check_lease()  # between steps: stop before doing more if the lease is gone
        now = time.monotonic()
        final = done is not None and done == total
        if now - last[0] < STAGE_EVERY_SECONDS and not final and done is not None:
            return
        last[0] = now
        value = {"stage": stage, "done": done, "total": total}
        if value == published[0]:
            return
        published[0] = value
        note_stage(value)
        notices.stage({"type": "progress", **value})

    return progress


def output_publisher(notices: Notices) -> OutputFn:
    """Live output, sent at once; each chunk carries its offset so a late subscriber knows it
    missed some."""
    offsets: dict[str, int] = {}

    def output(stream: str, chunk: bytes) -> None:
        text = safe_text(chunk)
        offset = offsets.get(stream, 0)
        offsets[stream] = offset + len(text)
        notices.now({"type": "output", "stream": stream, "offset": offset, "data": text})

    return output
