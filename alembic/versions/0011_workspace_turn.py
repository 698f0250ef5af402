"""a project's pending fairness turn on its workspace row, where the lease is taken

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding them rewrites nothing. A turn pending in Redis at upgrade
    # time is simply forgotten (its message drains as an ordinary one).
    op.add_column("workspaces", sa.Column("turn", sa.Text(), nullable=True))
    op.add_column(
        "workspaces", sa.Column("turn_expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("workspaces", "turn_expires_at")
    op.drop_column("workspaces", "turn")
