"""install fingerprints before and after the install

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


def downgrade() -> None:
    op.alter_column(
        "workspaces",
        "install_hash",
        existing_type=sa.String(length=160),
        type_=sa.String(length=64),
        existing_nullable=True,
        postgresql_using="left(install_hash, 64)",
    )
