"""operator page indexes: workspaces by last activity, a project's failures, dead webhooks

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_workspaces_activity", "workspaces", ["last_activity_at", "project_id"], unique=False
    )
    op.create_index(
        "ix_actions_failed",
        "actions",
        ["project_id", "seq"],
        unique=False,
        postgresql_where=sa.text("status = 'failed'"),
    )
    op.create_index(
        "ix_webhook_events_dead",
        "webhook_events",
        ["created_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'dead'"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_dead", table_name="webhook_events")
    op.drop_index("ix_actions_failed", table_name="actions")
    op.drop_index("ix_workspaces_activity", table_name="workspaces")
