"""the file record a rebuild restores from: content by hash, deletions, every finished action prunable

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_PRUNABLE = (
    "status IN ('failed', 'cancelled') "
    "OR (status = 'succeeded' AND kind NOT IN ('ensure', 'write', 'destroy'))"
)
NEW_PRUNABLE = "status IN ('succeeded', 'failed', 'cancelled')"

# Each recorded path's content is the last one a succeeded ensure/write sent for it since the
# workspace was last destroyed (what the old rebuild replayed), computed in Postgres: payloads
# are plain jsonb (only ``env`` is sealed), stored as lists of {path, content, encoding}. A
# recorded path no payload mentions keeps a null content_sha256, and a rebuild that needs it
# fails history_incomplete rather than restore a partial tree.
BACKFILL = """
CREATE TEMP TABLE qai_backfill ON COMMIT DROP AS
WITH since AS (
    SELECT project_id, coalesce(max(seq) FILTER (WHERE kind = 'destroy'), 0) AS after
    FROM actions WHERE status = 'succeeded' GROUP BY project_id
),
entries AS (
    SELECT a.project_id, e.f->>'path' AS path, a.seq, e.ord,
           CASE WHEN e.f->>'encoding' = 'base64' THEN decode(e.f->>'content', 'base64')
                ELSE convert_to(e.f->>'content', 'UTF8') END AS content
    FROM actions a JOIN since s ON s.project_id = a.project_id AND a.seq > s.after
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(a.payload->'files') = 'array' THEN a.payload->'files'
             ELSE '[]'::jsonb END) WITH ORDINALITY AS e(f, ord)
    WHERE a.kind IN ('ensure', 'write') AND a.status = 'succeeded'
),
latest AS (
    SELECT DISTINCT ON (project_id, path) project_id, path, content
    FROM entries ORDER BY project_id, path, seq DESC, ord DESC
)
SELECT l.project_id, l.path, encode(sha256(l.content), 'hex') AS h, l.content
FROM latest l JOIN workspace_files w ON w.project_id = l.project_id AND w.path = l.path
"""
BACKFILL_BLOBS = """
INSERT INTO file_blobs (sha256, content, size)
SELECT DISTINCT ON (h) h, content, octet_length(content) FROM qai_backfill
ON CONFLICT (sha256) DO NOTHING
"""
BACKFILL_FILES = """
UPDATE workspace_files w SET content_sha256 = b.h FROM qai_backfill b
WHERE w.project_id = b.project_id AND w.path = b.path
"""


def _prunable_index(predicate: str) -> None:
    """ix_actions_prunable again, with the prune sweep's predicate word for word."""
    op.drop_index("ix_actions_prunable", table_name="actions")
    op.create_index(
        "ix_actions_prunable",
        "actions",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text(predicate),
    )


def upgrade() -> None:
    op.create_table(
        "file_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_file_blobs")),
    )
    op.add_column(
        "workspace_files", sa.Column("content_sha256", sa.String(length=64), nullable=True)
    )
    op.create_foreign_key(
        op.f("fk_workspace_files_content_sha256_file_blobs"),
        "workspace_files",
        "file_blobs",
        ["content_sha256"],
        ["sha256"],
    )
    op.create_index(
        op.f("ix_workspace_files_content_sha256"), "workspace_files", ["content_sha256"]
    )
    op.create_table(
        "workspace_deletions",
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column(
            "deleted_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["workspaces.project_id"],
            name=op.f("fk_workspace_deletions_project_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "path", name=op.f("pk_workspace_deletions")),
    )
    # Settles wait (SHARE) so no sync lands between the backfill's read and its write.
    op.execute("LOCK TABLE actions, workspace_files IN SHARE MODE")
    op.execute(BACKFILL)
    op.execute(BACKFILL_BLOBS)
    op.execute(BACKFILL_FILES)
    _prunable_index(NEW_PRUNABLE)


def downgrade() -> None:
    _prunable_index(OLD_PRUNABLE)
    op.drop_table("workspace_deletions")
    op.drop_index(op.f("ix_workspace_files_content_sha256"), table_name="workspace_files")
    op.drop_constraint(
        op.f("fk_workspace_files_content_sha256_file_blobs"), "workspace_files", type_="foreignkey"
    )
    op.drop_column("workspace_files", "content_sha256")
    op.drop_table("file_blobs")
