"""workspaces.preview_id: the random DNS label of the workspace's gateway URL

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 03:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Volatile, so existing rows each get their own value when the column is added.
PREVIEW_ID_DEFAULT = "replace(gen_random_uuid()::text, '-', '')"


def upgrade() -> None:
    op.add_column(
        "workspaces",
        sa.Column(
            "preview_id",
            sa.String(length=32),
            server_default=sa.text(PREVIEW_ID_DEFAULT),
            nullable=False,
        ),
    )
    op.create_unique_constraint(op.f("uq_workspaces_preview_id"), "workspaces", ["preview_id"])


def downgrade() -> None:
    op.drop_constraint(op.f("uq_workspaces_preview_id"), "workspaces", type_="unique")
    op.drop_column("workspaces", "preview_id")
