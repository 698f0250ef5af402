"""a project's message in flight, so enqueues behind it send none of their own

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 09:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # workspaces.hint_seq: the seq of the action whose Celery message is on its way and has
    # not yet tried to drain (qai_jobs.db.enqueue), hint_at when it was set; null when none is. actions.messaged: false
    # for an action enqueued behind such a message, which got no message of its own (the
    # worker announces it to monitoring itself). A constant default rewrites no rows.
    op.add_column("workspaces", sa.Column("hint_seq", sa.BigInteger(), nullable=True))
    op.add_column("workspaces", sa.Column("hint_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "actions",
        sa.Column("messaged", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    op.drop_column("actions", "messaged")
    op.drop_column("workspaces", "hint_at")
    op.drop_column("workspaces", "hint_seq")
