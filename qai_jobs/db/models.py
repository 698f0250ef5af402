"""SQLAlchemy 2 models: the truth about every workspace and action.

A workspace row exists for every project that ever had an action; it carries the per-project
counters (action sequence, event sequence) and the project's lease, so the row lock on it is
what serialises enqueues and lease grants of one project.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, datetime: DateTime(timezone=True)}


class Workspace(Base):
    __tablename__ = "workspaces"

    project_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True, default=uuid.uuid4)
    # The DNS label of the gateway URL (gateway/urls.py): random, renewed with ``id``.
    preview_id: Mapped[str] = mapped_column(
        String(32), unique=True, server_default=text("replace(gen_random_uuid()::text, '-', '')")
    )
    # new -> provisioning -> ready <-> sleeping; error; destroyed
    status: Mapped[str] = mapped_column(String(16), default="new", server_default="new")
    provider: Mapped[str | None] = mapped_column(String(32))
    sandbox_id: Mapped[str | None] = mapped_column(String(255))
    sandbox: Mapped[dict[str, Any] | None]
    preview_url: Mapped[str | None] = mapped_column(Text)
    port: Mapped[int | None] = mapped_column(Integer)
    dev_command: Mapped[str | None] = mapped_column(Text)
    install_command: Mapped[str | None] = mapped_column(Text)
    # The install inputs' fingerprint as the producer sent them and as the last good install
    # left them ("<before> <after>", or one when the install changed none): runner/install.py
    install_hash: Mapped[str | None] = mapped_column(String(160))
    # env for the dev server and install, encrypted (see secrets.py)
    env: Mapped[dict[str, Any] | None]
    dev_process: Mapped[dict[str, Any] | None]
    repo: Mapped[dict[str, Any] | None]
    # {"egress": ...} from the last ensure that set it; null follows WORKSPACE_EGRESS
    network: Mapped[dict[str, Any] | None]
    last_snapshot_id: Mapped[str | None] = mapped_column(String(255))
    # The host holding a local workspace (hosts.host_id); null for cloud providers.
    host_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # seq of the ensure/write that last recorded workspace_files (see manifest.py)
    manifest_seq: Mapped[int | None] = mapped_column(BigInteger)
    next_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    event_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lease_gen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    # A drain that used its budget gave the slot up: until its turn's message (carrying this
    # token) takes the lease, or until it expires, the lease is refused to every other message.
    turn: Mapped[str | None] = mapped_column(Text)
    turn_expires_at: Mapped[datetime | None]
    # The seq of the action whose Celery message is on its way and has not tried to drain yet:
    # actions enqueued meanwhile send none (db/enqueue.py); every drain attempt clears it.
    hint_seq: Mapped[int | None] = mapped_column(BigInteger)
    hint_at: Mapped[datetime | None]
    last_activity_at: Mapped[datetime] = mapped_column(server_default=func.now())
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        Index("ix_workspaces_status_activity", "status", "last_activity_at"),
        # The operator's page lists workspaces by last activity, keyset-paginated.
        Index("ix_workspaces_activity", "last_activity_at", "project_id"),
        # The orphan sweeps look up the sandboxes they found, not every workspace.
        Index("ix_workspaces_sandbox", "sandbox_id"),
    )


# Every finished action: a rebuild restores from the file record (file_record.py), and the
# settings it needs besides (commands, env, repo, network) are on the workspace row, so no
# payload is needed once it has settled.
PRUNABLE = "status IN ('succeeded', 'failed', 'cancelled')"


class Host(Base):
    """A worker host of the fleet, as its workers last reported it (their heartbeat)."""

    __tablename__ = "hosts"

    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(64))
    capacity: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # An operator's `hosts drain`: no new workspaces, and its sleeping ones move away.
    draining: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Action(Base):
    __tablename__ = "actions"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("workspaces.project_id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # queued -> running -> succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    stage: Mapped[dict[str, Any] | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    # Who runs it, under which lease generation, and when it last said so.
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_gen: Mapped[int | None] = mapped_column(BigInteger)
    heartbeat_at: Mapped[datetime | None]
    # When a Celery message was last sent for it (recovery re-sends stale ones).
    kicked_at: Mapped[datetime | None]
    # False: enqueued behind its project's message in flight, with no message of its own; the
    # worker then tells monitoring (Flower) of it itself.
    messaged: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    __table_args__ = (
        UniqueConstraint("project_id", "seq", name="uq_actions_project_seq"),
        # Only keyed actions: most have none (alembic 0013).
        Index(
            "uq_actions_project_idempotency",
            "project_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "ix_actions_pending",
            "project_id",
            "seq",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # A project's running actions (the grant, recovery), found without walking every
        # project's (alembic 0013).
        Index("ix_actions_running", "project_id", postgresql_where=text("status = 'running'")),
        # What the prune sweep may delete, oldest first.
        Index(
            "ix_actions_prunable",
            "finished_at",
            postgresql_where=text(PRUNABLE),
        ),
        # A workspace's last error, found without walking its successes.
        Index("ix_actions_failed", "project_id", "seq", postgresql_where=text("status = 'failed'")),
    )


class WorkspaceFile(Base):
    """One synced path of a workspace and the content hash its last sync left there."""

    __tablename__ = "workspace_files"

    project_id: Mapped[str] = mapped_column(
        String(128),
        ForeignKey("workspaces.project_id", ondelete="CASCADE"),
        primary_key=True,
    )
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    # The content qai-jobs last wrote here, which a rebuild restores (file_record.py); null
    # when none is held (recorded before migration 0010 with no payload left to say).
    content_sha256: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("file_blobs.sha256"), index=True
    )


class FileBlob(Base):
    """File content by its sha256, once however many workspaces and paths hold it."""

    __tablename__ = "file_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class WorkspaceDeletion(Base):
    """A recorded path a sync deleted, and when: a rebuild from an older snapshot deletes it
    too. Kept only while the workspace's last snapshot is older (the prune sweep)."""

    __tablename__ = "workspace_deletions"

    project_id: Mapped[str] = mapped_column(
        String(128),
        ForeignKey("workspaces.project_id", ondelete="CASCADE"),
        primary_key=True,
    )
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Snapshot(Base):
    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("workspaces.project_id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # sleep | snapshot
    manifest: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class WebhookEvent(Base):
    """The outbox: written in the transaction that decides the event, delivered afterwards."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id, msg_...
    project_id: Mapped[str] = mapped_column(String(128), index=True)
    action_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    type: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    target: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # the exact JSON that is signed and sent
    # pending -> delivered | dead
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_webhook_events_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_webhook_events_dead", "created_at", "id", postgresql_where=text("status = 'dead'")
        ),
        # Newest first for the list, oldest first for the prune sweep.
        Index("ix_webhook_events_created", "created_at", "id"),
    )


class ProviderEvent(Base):
    """An inbound provider hook already applied (``/api/workspaces/events``), by its own event
    id: providers deliver at least once, and a redelivered event must change nothing twice."""

    __tablename__ = "provider_events"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)  # e2b | standard
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)


class FleetCount(Base):
    """Counters kept by triggers as rows change (see migration 0009), so the metrics cost the
    same at any amount of history: sum ``n``/``total`` over ``shard`` per (metric, kind, label).
    """

    __tablename__ = "fleet_counts"

    metric: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    total: Mapped[float] = mapped_column(Float, default=0, server_default="0")


class DeploymentSecret(Base):
    """Secrets every process of the deployment shares without a file of its own: the key that
    seals ``env`` values when WORKSPACE_SECRET_KEY is unset (name ``sealing``)."""

    __tablename__ = "deployment_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("length(value) >= 32", name="value_not_short"),)
