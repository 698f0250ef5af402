"""The Python producer API (CONTRACT 6): ``WorkspaceClient`` talks to Postgres and Redis directly.

Enqueue = validate, then one transaction that records the action, then (after commit) the
Celery message. ``wait`` subscribes to the action's Redis channel before it looks at Postgres,
so a completion between the two cannot be missed; Postgres is re-read on every wake-up and at
a slow safety interval in case a notification was lost.
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
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import manifest, ordering
from .config import Settings, load_settings
from .db.session import db_retry, engine_for
from .errors import ActionFailed, Conflict, NotFound, ValidationFailed
from .gateway.tokens import DEFAULT_TTL_S, mint_for_project
from .gateway.urls import public_preview
from .notify import channel
from .notify import client as redis_client
from .schemas import Limits, check_project_id, payload_to_json, validate_payload
from .sealing import seal_payload
from .sync import Syncing

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# How often a waiter re-reads Postgres even without a notification (lost-message safety net).
SAFETY_RECHECK_SECONDS = 2.0

_ACTION_COLUMNS = (
    "id, project_id, kind, status, attempts, result, error, stage, created_at, started_at, "
    "finished_at, seq, next_attempt_at"
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def action_row_to_dict(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "project_id": row.project_id,
        "kind": row.kind,
        "status": row.status,
        "attempts": row.attempts,
        "result": row.result,
        "error": row.error,
        "stage": row.stage,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "seq": row.seq,
        "next_attempt_at": _iso(row.next_attempt_at),
    }


class ActionHandle:
    """An enqueued action: ``.id`` and ``.wait(timeout)``."""

    def __init__(self, client: WorkspaceClient, action_id: uuid.UUID, project_id: str, kind: str):
        self.client = client
        self.id = str(action_id)
        self.project_id = project_id
        self.kind = kind

    def __repr__(self) -> str:
        return f"<ActionHandle {self.kind} {self.id} project={self.project_id}>"

    def get(self) -> dict[str, Any]:
        return self.client.get_action(self.id)

    def wait(
        self, timeout: float | None = None, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """The result once the action succeeds; ActionFailed if it fails or is cancelled;
        TimeoutError after ``timeout`` seconds. ``on_event`` sees progress and output."""
        action = self.client.wait_for(self.id, timeout=timeout, on_event=on_event)
        if action["status"] == "succeeded":
            result: dict[str, Any] = action["result"] or {}
            return result
        raise ActionFailed(
            self.id, action["error"] or {"code": action["status"], "message": action["status"]}
        )


class WorkspaceClient(Syncing):
    """Enqueue workspace actions and inspect them, straight against Postgres and Redis."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or engine_for(settings.database_url)
        self.limits = Limits(
            max_file_bytes=settings.workspace_max_file_bytes,
            max_action_bytes=settings.workspace_max_action_bytes,
            max_files=settings.workspace_max_files,
            max_timeout_s=settings.workspace_max_timeout_s,
        )
        self._pool: tuple[int, Any] | None = None
        self._subscriber = _Subscriber(settings.redis_url)

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkspaceClient:
        return cls(load_settings(**overrides))

    # -- enqueue -----------------------------------------------------------------------------
    def enqueue(
        self, project_id: str, kind: str, idempotency_key: str | None = None, **payload: Any
    ) -> ActionHandle:
        """Validate and record one action, then announce it to the workers."""
        return self.enqueue_payload(project_id, kind, payload, idempotency_key)

    def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> ActionHandle:
        """``enqueue`` with the payload as a mapping: any key is payload, none can collide
        with this method's own arguments (the HTTP API passes request bodies through)."""
        check_project_id(project_id)
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
            raise ValidationFailed("idempotency_key: 1 to 255 characters", field="idempotency_key")
        payload = {k: v for k, v in payload.items() if v is not None}
        parsed = validate_payload(kind, payload, self.limits)
        stored = seal_payload(self.settings, payload_to_json(parsed))
        action_id = uuid.uuid4()
        got = self._record(action_id, project_id, kind, stored, idempotency_key)
        # Ours even when not "created": a retry found the row its first attempt committed.
        if got.created or got.id == action_id:
            self._send(kind, project_id, got.id)
        return ActionHandle(self, got.id, project_id, kind)

    @db_retry
    def _record(
        self,
        action_id: uuid.UUID,
        project_id: str,
        kind: str,
        stored: dict[str, Any],
        idempotency_key: str | None,
    ) -> ordering.Enqueued:
        with self.engine.begin() as conn:
            return ordering.enqueue(
                conn,
                action_id=action_id,
                project_id=project_id,
                kind=kind,
                payload=stored,
                idempotency_key=idempotency_key,
            )

    def _send(self, kind: str, project_id: str, action_id: uuid.UUID) -> None:
        """Announce after commit; if the broker is down the recovery sweep re-sends it."""
        from .celery_app import app

        try:
            # This client's own broker (its settings), not whatever the process-wide app was
            # configured with: one process may hold clients for several deployments.
            with self._broker().acquire(block=True, timeout=5) as conn:
                app.send_task(
                    f"qai_jobs.{kind}",
                    kwargs={"project_id": project_id},
                    task_id=str(action_id),
                    connection=conn,
                    retry=False,
                )
        except Exception:  # kombu raises many types; the action is durable either way
            import logging

            logging.getLogger("qai_jobs.client").warning(
                "[project_id=%s action_id=%s] broker unavailable; recovery will send it",
                project_id,
                action_id,
            )

    def _broker(self) -> Any:
        """A pool of broker connections for this client, per process (never across a fork)."""
        if self._pool is None or self._pool[0] != os.getpid():
            from kombu import Connection

            self._pool = (os.getpid(), Connection(self.settings.redis_url).Pool(limit=16))
        return self._pool[1]

    def ensure(self, project_id: str, **payload: Any) -> ActionHandle:
        return self.enqueue(project_id, "ensure", **payload)

    def write(
        self, project_id: str, files: Any, delete: list[str] | None = None, **kw: Any
    ) -> ActionHandle:
        return self.enqueue(project_id, "write", files=files, delete=delete, **kw)

    def read(self, project_id: str, paths: list[str], **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "read", paths=paths, **kw)

    def command(self, project_id: str, cmd: str | None = None, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "command", cmd=cmd, **kw)

    def preview(self, project_id: str, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "preview", **kw)

    def logs(self, project_id: str, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "logs", **kw)

    def sleep(self, project_id: str, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "sleep", **kw)

    def wake(self, project_id: str, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "wake", **kw)

    def snapshot(self, project_id: str, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "snapshot", **kw)

    def restore(self, project_id: str, snapshot_id: str, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "restore", snapshot_id=snapshot_id, **kw)

    def destroy(self, project_id: str, **kw: Any) -> ActionHandle:
        return self.enqueue(project_id, "destroy", **kw)

    # -- inspection --------------------------------------------------------------------------
    @db_retry
    def get_action(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        uid = _uuid(action_id)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(f"SELECT {_ACTION_COLUMNS} FROM actions WHERE id = :id"), {"id": uid}
            ).first()
        if row is None:
            raise NotFound(f"no action {action_id}")
        return action_row_to_dict(row)

    @db_retry
    def list_actions(
        self, project_id: str, limit: int = 100, status: str | None = None
    ) -> list[dict[str, Any]]:
        check_project_id(project_id)
        query = f"SELECT {_ACTION_COLUMNS} FROM actions WHERE project_id = :p"
        params: dict[str, Any] = {"p": project_id, "limit": limit}
        if status:
            query += " AND status = :status"
            params["status"] = status
        query += " ORDER BY seq DESC LIMIT :limit"
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(query), params).all()
        return [action_row_to_dict(r) for r in reversed(rows)]

    @db_retry
    def get_workspace(self, project_id: str) -> dict[str, Any]:
        check_project_id(project_id)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    """SELECT w.project_id, w.id, w.preview_id, w.status, w.provider, w.sandbox_id,
                              w.preview_url, w.port, w.last_snapshot_id, w.last_activity_at,
                              w.created_at, w.updated_at, w.repo,
                              (SELECT count(*) FROM actions a WHERE a.project_id = w.project_id
                                 AND a.status IN ('queued', 'running')) AS pending
                       FROM workspaces w WHERE w.project_id = :p"""
                ),
                {"p": project_id},
            ).first()
        if row is None:
            raise NotFound(f"no workspace for project {project_id}")
        return {
            "project_id": row.project_id,
            "workspace_id": str(row.id),
            "status": row.status,
            "provider": row.provider,
            "sandbox_id": row.sandbox_id,
            "preview_url": public_preview(self.settings, row.preview_id, row.preview_url),
            # The provider's own URL (for operators; the gateway proxies to it).
            "upstream_url": row.preview_url,
            "preview_id": row.preview_id,
            "port": row.port,
            "last_snapshot_id": row.last_snapshot_id,
            "last_activity_at": _iso(row.last_activity_at),
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
            "repo": row.repo,
            "pending_actions": row.pending,
        }

    @db_retry
    def preview_token(self, project_id: str, ttl_s: float = DEFAULT_TTL_S) -> dict[str, Any]:
        """A gateway URL for the project with a short-lived token: ``{"url", "token",
        "expires_at"}`` (for ``WORKSPACE_PREVIEW_AUTH=token``)."""
        check_project_id(project_id)
        with self.engine.connect() as conn:
            return mint_for_project(self.settings, conn, project_id, ttl_s)

    @db_retry
    def get_manifest(self, project_id: str) -> dict[str, Any]:
        """The files the project's syncs left in its workspace: ``{"manifest_seq", "files":
        {path: sha256}}``; ``manifest_seq`` is None when there is nothing to diff against."""
        check_project_id(project_id)
        with self.engine.connect() as conn:
            got = manifest.read(conn, project_id)
        return {"project_id": project_id, "manifest_seq": got.seq, "files": got.files}

    @db_retry
    def list_workspaces(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            ids = (
                conn.execute(
                    sa.text("SELECT project_id FROM workspaces ORDER BY project_id LIMIT :l"),
                    {"l": limit},
                )
                .scalars()
                .all()
            )
        return [self.get_workspace(p) for p in ids]

    def cancel(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        """Cancel a queued action; Conflict if it is running or already finished."""
        uid = _uuid(action_id)
        with self.engine.begin() as conn:
            cancelled = ordering.cancel(conn, uid)
        action = self.get_action(uid)
        if not cancelled:
            raise Conflict(
                f"action {action_id} is {action['status']}; only a queued action can be cancelled"
            )
        from .notify import publish

        publish(self.settings.redis_url, uid, {"type": "done", "status": "cancelled"})
        return action

    # -- waiting -----------------------------------------------------------------------------
    def wait_for(
        self,
        action_id: str | uuid.UUID,
        timeout: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the action is terminal; return it (any terminal status)."""
        uid = _uuid(action_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with closing(_Subscription(self._subscriber, channel(uid))) as messages:
            while True:
                try:
                    action = self.get_action(uid)
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


class _Subscriber(threading.local):
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
    def __init__(self, subscriber: _Subscriber, name: str):
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


def _uuid(value: str | uuid.UUID) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no action {value}") from None


# The HTTP twin of WorkspaceClient, named here by CONTRACT 6/7; imported last to avoid a cycle.
from .http_client import HttpWorkspaceClient  # noqa: E402, F401
