"""worker hosts and the host holding each local workspace

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("host_id", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("capacity", sa.Integer(), server_default="1", nullable=False),
        sa.Column("draining", sa.Boolean(), server_default="false", nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_hosts")),
    )
    op.add_column("workspaces", sa.Column("host_id", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_workspaces_host_id"), "workspaces", ["host_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_workspaces_host_id"), table_name="workspaces")
    op.drop_column("workspaces", "host_id")
    op.drop_table("hosts")
