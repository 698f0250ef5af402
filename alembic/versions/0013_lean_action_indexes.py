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


def upgrade() -> None:
    # An action is written three times (queued, running, settled), and a status change is never
    # a HOT update, so each version enters every index whose predicate it meets. Three indexes
    # took versions no query looks for:
    # - ix_actions_finished: every version by finished_at; nothing filters on it across
    #   projects (the prune sweep reads ix_actions_prunable, which it duplicated).
    # - ix_actions_status_created: (status, created_at) of every version. Worse, the grant's
    #   lookup of a project's running actions (ordering._ACQUIRE) chose it, scanning every
    #   running entry of every project, dead versions included (about 200 per grant under
    #   load), where one project's few were wanted. ix_actions_running holds just the running
    #   versions, by project (the grant; recovery's scan); the metrics' oldest queued action
    #   reads ix_actions_pending, bounded by the backlog. (A queued-only index was tried: the
    #   start of a project's head then chose to walk it, every project's queued actions, over
    #   the primary key.)
    # - the idempotency key's uniqueness indexed the versions without a key (most): a partial
    #   unique index enforces the same (NULLs never collide) and serves the key's lookup
    #   (enqueue._FIND_KEY: ``idempotency_key = :k`` implies NOT NULL).
    # The new indexes are built CONCURRENTLY, outside the migration's transaction: actions is
    # the hot table, and a plain build would stop enqueues and drains for its whole scan. (A
    # build that fails leaves an invalid index: drop it and run the upgrade again.)
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_actions_running",
            "actions",
            ["project_id"],
            unique=False,
            postgresql_where=sa.text("status = 'running'"),
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
    op.drop_index("ix_actions_running", table_name="actions")
    op.create_index("ix_actions_status_created", "actions", ["status", "created_at"], unique=False)
    op.create_index("ix_actions_finished", "actions", ["finished_at"], unique=False)
