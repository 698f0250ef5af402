"""``GET /v1/actions/{id}/events``: one action's progress, live output and end, as Server-Sent
Events, for producers that only speak HTTP.

The worker already announces progress, output and completion on the action's Redis channel
(``qai_jobs.notify``). A stream subscribes to that channel *before* it reads the action from
Postgres, so an action that finishes between the two still ends the stream; Postgres stays the
truth (re-read on every completion notice and every few seconds), so a lost notice only delays
the end. The end is one ``done`` event carrying the action as ``GET /v1/actions/{id}`` shows it,
and it is never dropped: a client that reconnects (``Last-Event-ID``) after losing the
connection gets at least that ``done``, at once if the action finished meanwhile.

What a slow client can make the API hold is bounded: a reader task always drains Redis (so
Redis never queues for us), into a buffer of at most ``MAX_BUFFERED_BYTES`` per stream; beyond
it output and progress are dropped (output events carry their offset per stream, so the client
sees the gap, and the final action carries the output kept). A client that takes no bytes for
``SEND_TIMEOUT_SECONDS`` is cut off and may reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import redis
import sqlalchemy as sa
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from qai_jobs.api.models import ErrorBody
from qai_jobs.client import WorkspaceClient
from qai_jobs.constants import TERMINAL
from qai_jobs.notify import channel

log = logging.getLogger("qai_jobs.api")

# A client that takes no bytes for this long is cut off (its EventSource reconnects).
SEND_TIMEOUT_SECONDS = 30.0
# Events read from Redis but not yet taken by the client, per stream.
MAX_BUFFERED_BYTES = 256 * 1024
# Postgres is re-read at least this often while nothing arrives (a lost notice).
RECHECK_SECONDS = 2.0
# What EventSource clients should wait before reconnecting (ms; the browser default is ~3 s).
RETRY_MS = 1000
EVENT_KINDS = frozenset({"progress", "output"})

router = APIRouter()

# One event of the stream (OpenAPI 3.1 describes an event stream by its events).
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["progress", "output", "done"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "progress: {stage, done, total}; output: {stream, offset, data}; "
            "done: the Action",
        },
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["event", "data", "id"],
}


class _Buffer:
    """What the reader took from Redis and the client has not been sent yet."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: deque[tuple[str, str]] = deque()
        self.size = 0
        self.dropped = 0
        self.done = False  # a completion notice came: re-read Postgres
        self.wake = asyncio.Event()

    def put(self, event: str, data: str) -> None:
        # An empty buffer takes any one event, so a single large chunk still gets through.
        if self.items and self.size + len(data) > self.limit:
            self.dropped += 1
            return
        self.items.append((event, data))
        self.size += len(data)
        self.wake.set()

    def take(self) -> tuple[str, str] | None:
        if not self.items:
            return None
        event, data = self.items.popleft()
        self.size -= len(data)
        return event, data

    def notice_done(self) -> None:
        self.done = True
        self.wake.set()


def _parse(raw: Any) -> tuple[str, str] | None:
    """(event, data) from one notification; None for what a stream does not forward."""
    if not isinstance(raw, dict) or raw.get("type") != "message":
        return None
    try:
        message = json.loads(raw["data"])
    except (TypeError, ValueError):
        return None
    if not isinstance(message, dict):
        return None
    kind = message.pop("type", None)
    if kind == "done":
        return "done", ""
    if kind not in EVENT_KINDS:
        return None
    return str(kind), json.dumps(message, separators=(",", ":"), sort_keys=True)


def _first_id(last_event_id: str | None) -> int:
    """Ids keep counting up across reconnects, so a client can order what it saw."""
    if last_event_id and last_event_id.isdigit() and len(last_event_id) <= 15:
        return int(last_event_id) + 1
    return 1


class ActionEvents:
    """One client's stream of one action's events."""

    def __init__(
        self,
        client: WorkspaceClient,
        redis_client: Any,
        action_id: str,
        next_id: int,
        timeout: float | None = None,
    ):
        self.client = client
        self.timeout = timeout
        self.redis = redis_client
        self.action_id = action_id
        self.next_id = next_id
        self.buffer = _Buffer(MAX_BUFFERED_BYTES)
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.action: dict[str, Any] = {}
        self.last_progress: str | None = None

    async def open(self) -> None:
        """Subscribe, then read the action: NotFound (a 404) before any byte is streamed."""
        try:
            self.pubsub = self.redis.pubsub()
            await self.pubsub.subscribe(channel(self.action_id))
            if not await self._confirmed():
                # Live events may pass unseen until Redis answers: say so, or a stream that
                # shows only the outcome looks like a bug elsewhere.
                log.warning("action %s: subscription not confirmed within 1 s", self.action_id)
            self.reader = asyncio.create_task(self._read())
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "action %s: no live events (%s); the stream re-reads Postgres",
                self.action_id,
                type(exc).__name__,
            )
            await self._drop_subscription()  # degrade to re-reading Postgres
        try:
            self.action = await run_in_threadpool(self.client.get_action, self.action_id)
        except BaseException:
            await self.close()
            raise

    async def _confirmed(self) -> bool:
        """Wait until Redis confirms the subscription: only then can no later notice pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while (left := deadline - loop.time()) > 0:
            raw = await self.pubsub.get_message(timeout=left)
            if raw is not None and raw.get("type") == "subscribe":
                return True
        return False

    async def _read(self) -> None:
        try:
            async for raw in self.pubsub.listen():
                parsed = _parse(raw)
                if parsed is None:
                    continue
                if parsed[0] == "done":
                    self.buffer.notice_done()
                else:
                    self.buffer.put(*parsed)
        except (redis.RedisError, OSError):
            pass  # the stream goes on re-reading Postgres

    def _event(self, event: str, data: str) -> ServerSentEvent:
        if event == "progress":
            self.last_progress = data
        elif event == "output":
            self.last_progress = None
        sse = ServerSentEvent(
            data, event=event, id=str(self.next_id), retry=RETRY_MS if self.next_id == 1 else None
        )
        self.next_id += 1
        return sse

    def _done(self) -> ServerSentEvent:
        if self.buffer.dropped:
            log.info(
                "[action_id=%s] a slow events client missed %d events",
                self.action_id,
                self.buffer.dropped,
            )
        return self._event("done", json.dumps(self.action, separators=(",", ":")))

    async def stream(self) -> AsyncIterator[ServerSentEvent]:
        try:
            if self.action["status"] in TERMINAL:
                yield self._done()
                return
            if self.action["status"] == "running" and self.action.get("stage"):
                # A late joiner learns the stage at once (the worker's own notice of the same
                # stage, if it comes next, is not repeated).
                stage = json.dumps(self.action["stage"], separators=(",", ":"), sort_keys=True)
                yield self._event("progress", stage)
            loop = asyncio.get_running_loop()
            recheck_at = loop.time() + RECHECK_SECONDS
            end_at = None if self.timeout is None else loop.time() + self.timeout
            while True:
                for event in self._drain():
                    yield event
                if end_at is not None and loop.time() >= end_at:
                    return  # the caller's own deadline: it ends without a done
                if self.buffer.done or loop.time() >= recheck_at:
                    self.buffer.done = False
                    recheck_at = loop.time() + RECHECK_SECONDS
                    if await self._finished():
                        for event in self._drain():  # what was published before the end
                            yield event
                        yield self._done()
                        return
                self.buffer.wake.clear()
                if self.buffer.items or self.buffer.done:
                    continue
                until = recheck_at if end_at is None else min(recheck_at, end_at)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.buffer.wake.wait(), max(0.0, until - loop.time()))
        finally:
            await self.close()

    def _drain(self) -> Iterator[ServerSentEvent]:
        while (item := self.buffer.take()) is not None:
            if item != ("progress", self.last_progress):
                yield self._event(*item)

    async def _finished(self) -> bool:
        try:
            self.action = await run_in_threadpool(self.client.get_action, self.action_id)
        except sa.exc.SQLAlchemyError:
            return False  # Postgres is away: try again at the next re-check
        return self.action["status"] in TERMINAL

    async def _drop_subscription(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()

    async def close(self) -> None:
        """Idempotent: runs when the stream ends, and again after the response in any case."""
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, redis.RedisError, OSError):
                await reader
        await self._drop_subscription()


@router.get(
    "/v1/actions/{action_id}/events",
    summary="One action's progress, live output and end (Server-Sent Events)",
    description=(
        "`progress` (`{stage, done, total}`) and `output` (`{stream, offset, data}`) events as "
        "they happen, then one `done` whose data is the action (as `GET /v1/actions/{id}`), "
        "then the stream ends; an action already finished answers `done` at once. Events "
        "carry increasing ids: reconnect with `Last-Event-ID` and at least the `done` comes. "
        "Comment lines keep an idle stream alive. With `?timeout=S` the stream ends after S "
        "seconds without a `done` if the action is still going."
    ),
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": EVENT_SCHEMA}}},
        401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
        404: {"model": ErrorBody, "description": "Unknown action"},
        503: {"model": ErrorBody, "description": "Postgres or Redis unreachable"},
    },
)
async def action_events(
    request: Request,
    action_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
    timeout: Annotated[
        float | None,
        Query(gt=0, le=86_400, description="End the stream after this many seconds."),
    ] = None,
) -> EventSourceResponse:
    events = ActionEvents(
        request.app.state.client,
        request.app.state.waiter.redis,
        action_id,
        _first_id(last_event_id),
        timeout,
    )
    await events.open()
    return EventSourceResponse(
        events.stream(),
        # A comment line this often keeps proxies and load balancers from cutting idle streams.
        ping=request.app.state.settings.workspace_events_heartbeat_seconds,
        send_timeout=SEND_TIMEOUT_SECONDS,
        background=BackgroundTask(events.close),
    )
