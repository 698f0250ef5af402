"""install fingerprints before and after the install; inbound provider events seen

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "workspaces",
        "install_hash",
        existing_type=sa.String(length=64),
        type_=sa.String(length=160),
        existing_nullable=True,
    )
    op.create_table(
        "provider_events",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("source", "event_id", name=op.f("pk_provider_events")),
    )
    op.create_index(
        op.f("ix_provider_events_received_at"), "provider_events", ["received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_provider_events_received_at"), table_name="provider_events")
    op.drop_table("provider_events")
    op.alter_column(
        "workspaces",
        "install_hash",
        existing_type=sa.String(length=160),
        type_=sa.String(length=64),
        existing_nullable=True,
        postgresql_using="left(install_hash, 64)",
    )
