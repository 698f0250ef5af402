"""``WorkspaceClient``: the Python producer API, straight against Postgres and Redis.

Enqueue = validate, then one transaction that records the action, then (after commit) the
Celery message, sent by the process's sending thread (``sender``) so the enqueue returns at the
commit; if the broker is down, recovery sends it later. ``wait`` learns of completion
by notification (``waiting``).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from sqlalchemy.engine import Engine

from qai_jobs.client import sender
from qai_jobs.client.handle import ActionHandle, EventFn
from qai_jobs.client.kinds import KindMethods
from qai_jobs.client.sender import Broker, Message
from qai_jobs.client.waiting import Subscriber, wait_for
from qai_jobs.config import Settings, load_settings
from qai_jobs.constants import ActionStatus
from qai_jobs.db import enqueue, manifest, queries
from qai_jobs.db.session import db_retry, engine_for
from qai_jobs.errors import Conflict, NotFound, ValidationFailed
from qai_jobs.gateway.tokens import DEFAULT_TTL_S, mint_for_project
from qai_jobs.gateway.urls import public_preview
from qai_jobs.notify import publish
from qai_jobs.schemas import check_project_id
from qai_jobs.sealing import seal_payload
from qai_jobs.sync import Syncing
from qai_jobs.validation import PayloadLimits, payload_to_json, validate_payload


class WorkspaceClient(KindMethods, Syncing):
    """Enqueue workspace actions and inspect them, straight against Postgres and Redis."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or engine_for(settings.database_url)
        self.limits = PayloadLimits.from_settings(settings)
        self._link: Broker | None = None
        self._subscriber = Subscriber(settings.redis_url)

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkspaceClient:
        return cls(load_settings(**overrides))

    # -- enqueue -----------------------------------------------------------------------------
    def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> ActionHandle[Any]:
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
        # Ours even when not "created": a retry found the row its first attempt committed
        # (whether it was to carry a message is not known then: it sends one).
        if got.created or got.id == action_id:
            self._send(kind, project_id, got.id, messaged=got.messaged or not got.created)
        return ActionHandle(self, got.id, project_id, kind)

    @db_retry
    def _record(
        self,
        action_id: uuid.UUID,
        project_id: str,
        kind: str,
        stored: dict[str, Any],
        idempotency_key: str | None,
    ) -> enqueue.Enqueued:
        # Without a key, enqueue is one statement (bump and insert): on an autocommit
        # connection it is its own transaction, committed as durably (the server's synchronous
        # commit) in one round trip instead of BEGIN, statement and COMMIT.
        opened = (
            self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if idempotency_key is None
            else self.engine.begin()
        )
        with opened as conn:
            return enqueue.enqueue(
                conn,
                action_id=action_id,
                project_id=project_id,
                kind=kind,
                payload=stored,
                idempotency_key=idempotency_key,
            )

    def _send(
        self, kind: str, project_id: str, action_id: uuid.UUID, *, messaged: bool = True
    ) -> None:
        """Announce after commit: by this process's sending thread unless the settings say
        inline; if the broker is down the recovery sweep re-sends it. ``messaged`` False: the
        project's message in flight stands for it, and monitoring only hears it was sent."""
        message = Message(self._broker(), kind, project_id, action_id, coalesced=not messaged)
        if self.settings.workspace_enqueue_send == "inline":
            message.broker.publish(message)
        else:
            sender.current().submit(message)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the messages of the enqueues made so far are sent (or, after a broker
        error, left to recovery); False if ``timeout`` passed first. Runs by itself at
        interpreter exit; a process killed before then leaves its last messages to recovery."""
        return sender.flush(timeout)

    def _broker(self) -> Broker:
        """This client's own broker (its settings), not whatever the process-wide app was
        configured with: one process may hold clients for several deployments. Per process:
        a connection pool never crosses a fork."""
        if self._link is None or self._link.pid != os.getpid():
            self._link = Broker(self.settings.redis_url)
        return self._link

    # -- inspection --------------------------------------------------------------------------
    @db_retry
    def get_action(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        with self.engine.connect() as conn:
            found = queries.action(conn, _uuid(action_id))
        if found is None:
            raise NotFound(f"no action {action_id}")
        return found

    @db_retry
    def list_actions(
        self, project_id: str, limit: int = 100, status: str | None = None
    ) -> list[dict[str, Any]]:
        check_project_id(project_id)
        with self.engine.connect() as conn:
            return queries.actions(conn, project_id, limit, status)

    @db_retry
    def list_hosts(self) -> list[dict[str, Any]]:
        """The fleet's worker hosts, alive or not, with the workspaces each holds."""
        from qai_jobs.db import hosts

        with self.engine.connect() as conn:
            return hosts.list_hosts(conn, self.settings.workspace_host_dead_seconds)

    def get_workspace(self, project_id: str) -> dict[str, Any]:
        check_project_id(project_id)
        with self.engine.connect() as conn:
            found = queries.workspace(conn, project_id)
        if found is None:
            raise NotFound(f"no workspace for project {project_id}")
        # Producers see the gateway's stable URL; the provider's own stays for operators.
        upstream = found["preview_url"]
        found["preview_url"] = public_preview(self.settings, found["preview_id"], upstream)
        found["upstream_url"] = upstream
        return found

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
            ids = queries.project_ids(conn, limit)
        return [self.get_workspace(p) for p in ids]

    def cancel(self, action_id: str | uuid.UUID) -> dict[str, Any]:
        """Cancel a queued action; Conflict if it is running or already finished."""
        uid = _uuid(action_id)
        with self.engine.begin() as conn:
            cancelled = enqueue.cancel(conn, uid)
        action = self.get_action(uid)
        if not cancelled:
            raise Conflict(
                f"action {action_id} is {action['status']}; only a queued action can be cancelled"
            )
        publish(self.settings.redis_url, uid, {"type": "done", "status": ActionStatus.CANCELLED})
        return action

    # -- waiting -----------------------------------------------------------------------------
    def wait_for(
        self,
        action_id: str | uuid.UUID,
        timeout: float | None = None,
        on_event: EventFn | None = None,
    ) -> dict[str, Any]:
        """Block until the action is terminal; return it (any terminal status)."""
        return wait_for(self._subscriber, self.get_action, _uuid(action_id), timeout, on_event)


def _uuid(value: str | uuid.UUID) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no action {value}") from None
