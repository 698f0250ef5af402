"""deployment-wide secrets: the key that seals env values, shared by every process

Revision ID: 0007
Revises: 0008
Create Date: 2026-12-02 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The row itself is written by `qai-jobs migrate` (qai_jobs.db.secrets), which can import
    # a key file an older version left in its working directory.
    op.create_table(
        "deployment_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "length(value) >= 32", name=op.f("ck_deployment_secrets_value_not_short")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_deployment_secrets")),
    )


def downgrade() -> None:
    op.drop_table("deployment_secrets")
