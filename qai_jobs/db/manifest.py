"""The synced-files manifest: what each workspace holds of the files its producers sent.

Every successful ``ensure``/``write`` records, in its own fenced finishing transaction, the
content hash of each path it synced, and stamps the workspace with its ``seq``
(``workspaces.manifest_seq``). A producer reads that manifest in one statement, hashes its own
tree, and sends only what differs, naming the ``seq`` it diffed against (``manifest_base``).

The sandbox, not this table, is the truth: commands, dev servers, installs, a sandbox woken or
rebuilt may all have changed recorded files since. So every sync re-hashes the recorded paths
it was not sent in the sandbox (the local provider's hash cache makes that a stat per file). A
delta whose base is no longer current, or whose unsent files no longer match, fails with
``manifest_stale`` before any file is written, and the producer sends its full tree instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from qai_jobs.db import file_record


@dataclass
class Manifest:
    seq: int | None  # None: nothing recorded (never synced, destroyed, or adopted anew)
    files: dict[str, str]


@dataclass
class ManifestUpdate:
    """What a successful sync changes in the manifest, written when the action settles."""

    upsert: dict[str, str] = field(default_factory=dict)
    delete: set[str] = field(default_factory=set)
    replace: bool = False  # forget every recorded path first (an adopted sandbox)
    clear: bool = False  # the workspace is gone: forget everything, no seq
    # The file record (file_record.py): the content hash qai-jobs wrote at each synced path,
    # and the content by hash. Upserted paths not in ``contents`` (drift found in the sandbox)
    # keep the content they had.
    contents: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    rewrite_blobs: bool = False  # repairing a failed rebuild: a stored blob may be corrupt


# One statement, so the seq and the rows come from the same snapshot of the database; one JSON
# object rather than a row per file, since decoding it is several times faster than building
# thousands of rows.
_READ = sa.text(
    """
    SELECT w.manifest_seq AS seq,
           (SELECT json_object_agg(f.path, f.sha256) FROM workspace_files f
            WHERE f.project_id = w.project_id) AS files
    FROM workspaces w WHERE w.project_id = :p
    """
)


def read(conn: Connection, project_id: str) -> Manifest:
    """The recorded manifest; ``Manifest(None, {})`` when there is none."""
    row = conn.execute(_READ, {"p": project_id}).first()
    if row is None or row.seq is None:
        return Manifest(None, {})
    return Manifest(row.seq, dict(row.files or {}))


def apply(conn: Connection, project_id: str, seq: int, update: ManifestUpdate) -> None:
    """Record ``update`` as of action ``seq`` (inside the action's fenced transaction)."""
    if update.clear or update.replace:
        conn.execute(
            sa.text("DELETE FROM workspace_files WHERE project_id = :p"), {"p": project_id}
        )
    if update.clear:
        file_record.forget_deletions(conn, project_id)
        conn.execute(
            sa.text("UPDATE workspaces SET manifest_seq = NULL WHERE project_id = :p"),
            {"p": project_id},
        )
        return
    if update.delete:
        gone = conn.execute(
            sa.text(
                """DELETE FROM workspace_files WHERE project_id = :p AND path = ANY(:paths)
                RETURNING path"""
            ),
            {"p": project_id, "paths": sorted(update.delete)},
        )
        file_record.record_deletions(conn, project_id, [r.path for r in gone])
    # Upserted paths whose content qai-jobs wrote (and holds) this time; drift found in the
    # sandbox keeps the content recorded before.
    held = {p: h for p, h in update.contents.items() if p in update.upsert and h in update.blobs}
    blobs = {h: update.blobs[h] for h in set(held.values())}
    if not update.rewrite_blobs and sum(map(len, blobs.values())) <= file_record.FOLD_BYTES:
        file_record.record_small(conn, project_id, seq, update.upsert, held, blobs)
        return
    if update.upsert:
        file_record.store_blobs(conn, project_id, held, update.blobs, update.rewrite_blobs)
        conn.execute(
            sa.text(
                """INSERT INTO workspace_files (project_id, path, sha256, content_sha256)
                SELECT :p, * FROM unnest(CAST(:paths AS text[]), CAST(:hashes AS text[]),
                                         CAST(:contents AS text[]))
                ON CONFLICT (project_id, path) DO UPDATE SET sha256 = EXCLUDED.sha256,
                    content_sha256 = coalesce(EXCLUDED.content_sha256,
                                              workspace_files.content_sha256)"""
            ),
            {
                "p": project_id,
                "paths": list(update.upsert),
                "hashes": list(update.upsert.values()),
                "contents": [held.get(path) for path in update.upsert],
            },
        )
    conn.execute(
        sa.text("UPDATE workspaces SET manifest_seq = :seq WHERE project_id = :p"),
        {"p": project_id, "seq": seq},
    )
