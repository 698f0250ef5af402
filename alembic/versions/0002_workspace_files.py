"""workspace_files: the synced-files manifest behind delta sync

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("manifest_seq", sa.BigInteger(), nullable=True))
    op.create_table(
        "workspace_files",
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["workspaces.project_id"],
            name=op.f("fk_workspace_files_project_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "path", name=op.f("pk_workspace_files")),
    )


def downgrade() -> None:
    op.drop_table("workspace_files")
    op.drop_column("workspaces", "manifest_seq")
