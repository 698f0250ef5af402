"""fewer index entries per action: every row version of an action went into eight indexes

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 12:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSETTLED = "status IN ('queued', 'running')"


def upgrade() -> None:
    # An action is written three times (queued, running, settled), and a status change is never
    # a HOT update, so each version enters every index whose predicate it meets. Three indexes
    # took versions no query looks for:
    # - ix_actions_finished: every version by finished_at; nothing filters on it across
    #   projects (the prune sweep reads ix_actions_prunable, which it duplicated).
    # - ix_actions_status_created: (status, created_at) of every version, where its readers
    #   (recovery's running actions, the metrics' oldest queued one) need only the unsettled.
    # - the idempotency key's uniqueness indexed the versions without a key (most): a partial
    #   unique index enforces the same (NULLs never collide) and serves the key's lookup
    #   (enqueue._FIND_KEY: ``idempotency_key = :k`` implies NOT NULL).
    # The new indexes are built CONCURRENTLY, outside the migration's transaction: actions is
    # the hot table, and a plain build would stop enqueues and drains for its whole scan. (A
    # build that fails leaves an invalid index: drop it and run the upgrade again.)
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_actions_unsettled",
            "actions",
            ["status", "created_at"],
            unique=False,
            postgresql_where=sa.text(UNSETTLED),
            postgresql_concurrently=True,
        )
        op.create_index(
            "uq_actions_project_idempotency_keyed",
            "actions",
            ["project_id", "idempotency_key"],
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_concurrently=True,
        )
    # Only catalog changes from here on: brief locks.
    op.drop_constraint("uq_actions_project_idempotency", "actions", type_="unique")
    op.execute(
        "ALTER INDEX uq_actions_project_idempotency_keyed RENAME TO uq_actions_project_idempotency"
    )
    with op.get_context().autocommit_block():
        op.drop_index("ix_actions_finished", table_name="actions", postgresql_concurrently=True)
        op.drop_index(
            "ix_actions_status_created", table_name="actions", postgresql_concurrently=True
        )


def downgrade() -> None:
    op.drop_index("uq_actions_project_idempotency", table_name="actions")
    op.create_unique_constraint(
        "uq_actions_project_idempotency", "actions", ["project_id", "idempotency_key"]
    )
    op.drop_index("ix_actions_unsettled", table_name="actions")
    op.create_index("ix_actions_status_created", "actions", ["status", "created_at"], unique=False)
    op.create_index("ix_actions_finished", "actions", ["finished_at"], unique=False)
