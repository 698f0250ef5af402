"""The file record a rebuild restores from: the content of every file qai-jobs wrote that the
workspace still holds, stored once per content hash.

``workspace_files.content_sha256`` names the content qai-jobs last wrote at a path and
``file_blobs`` holds that content (plain, as payloads are: file contents are user data, not
secrets). Both are written in the fenced transaction that settles a successful ensure/write, so
the record is what the sandbox was left with: a deleted path loses its row (and leaves a row in
``workspace_deletions``, which a rebuild from an older snapshot needs). A rebuild reads the
record a batch of files at a time, never the history of payloads, so prune may delete old
actions and the rebuild still has everything, in memory bounded by a batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

STORE_CHUNK_BYTES = 16 * 1024 * 1024  # blob content sent to Postgres per statement
BATCH_BYTES = 16 * 1024 * 1024  # blob content a rebuild holds in memory at once
BATCH_FILES = 500


@dataclass(frozen=True)
class RecordedFile:
    path: str
    sha256: str  # what the manifest last saw in the sandbox
    content_sha256: str | None  # the content qai-jobs wrote there (None: not held)
    size: int | None  # of that content; None when its blob is missing


# Paths whose recorded content changes: an unchanged reference keeps its blob alive by itself.
_CHANGED = sa.text(
    """SELECT DISTINCT t.h FROM unnest(CAST(:paths AS text[]), CAST(:h AS text[])) AS t(path, h)
    WHERE NOT EXISTS (SELECT 1 FROM workspace_files f
                      WHERE f.project_id = :p AND f.path = t.path AND f.content_sha256 = t.h)"""
)
# Existing blobs are locked (KEY SHARE) before they are referenced, so the prune sweep's
# FOR UPDATE SKIP LOCKED passes them by; a blob it deleted first is simply inserted again.
_LOCK_BLOBS = sa.text("SELECT sha256 FROM file_blobs WHERE sha256 = ANY(:h) FOR KEY SHARE")
_INSERT_BLOBS = sa.text(
    """INSERT INTO file_blobs (sha256, content, size)
    SELECT h, c, octet_length(c)
    FROM unnest(CAST(:h AS text[]), CAST(:c AS bytea[])) AS t(h, c)
    ON CONFLICT (sha256) DO NOTHING"""
)
_REWRITE_BLOB = sa.text(
    "UPDATE file_blobs SET content = :c, size = octet_length(:c) WHERE sha256 = :h"
)
_TOMBSTONES = sa.text(
    """INSERT INTO workspace_deletions (project_id, path)
    SELECT :p, unnest(CAST(:paths AS text[]))
    ON CONFLICT (project_id, path) DO UPDATE SET deleted_at = now()"""
)


def store_blobs(
    conn: Connection,
    project_id: str,
    contents: Mapping[str, str],
    blobs: Mapping[str, bytes],
    rewrite: bool = False,
) -> None:
    """Make sure the blob of every path in ``contents`` (path -> sha256; content in ``blobs``)
    exists until this transaction ends. Only the paths whose recorded content changes are
    looked at (an unchanged sync locks nothing), and only missing blobs' content travels;
    ``rewrite`` sends every one and overwrites what is stored (it may be corrupt)."""
    if not contents:
        return
    params = {"p": project_id, "paths": list(contents), "h": list(contents.values())}
    changed = sorted(set(contents.values())) if rewrite else _changed(conn, params)
    if not changed:
        return
    present = {r.sha256 for r in conn.execute(_LOCK_BLOBS, {"h": changed})}
    if rewrite:
        for digest in sorted(present):
            conn.execute(_REWRITE_BLOB, {"h": digest, "c": blobs[digest]})
    chunk: dict[str, bytes] = {}
    size = 0
    for digest in sorted(set(changed) - present):
        chunk[digest] = blobs[digest]
        size += len(blobs[digest])
        if size >= STORE_CHUNK_BYTES:
            conn.execute(_INSERT_BLOBS, {"h": list(chunk), "c": list(chunk.values())})
            chunk, size = {}, 0
    if chunk:
        conn.execute(_INSERT_BLOBS, {"h": list(chunk), "c": list(chunk.values())})


# The settle of a small sync (every blob together under FOLD_BYTES) records in one statement
# what store_blobs, the workspace_files upsert and the manifest stamp do in four or more: each is
# a round trip paid on the hot path. It sends every changed blob's content (store_blobs sends
# only the missing ones, at the cost of asking first), which is why it is kept for small syncs.
# The same steps as store_blobs, in one snapshot: the blobs whose reference changes, existing
# ones locked (KEY SHARE) so the prune sweep passes them by, missing ones inserted; then the
# files, then the stamp. Data-modifying CTEs always run to completion, read or not; the foreign
# key on content_sha256 is checked at the statement's end, when the inserted blobs are there.
FOLD_BYTES = 256 * 1024
_RECORD_SMALL = sa.text(
    """
    WITH want AS (
        SELECT * FROM unnest(CAST(:paths AS text[]), CAST(:hashes AS text[]),
                             CAST(:contents AS text[])) AS t(path, sha256, content_sha256)
    ), changed AS (
        SELECT DISTINCT w.content_sha256 AS h FROM want w
        WHERE w.content_sha256 IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM workspace_files f
                          WHERE f.project_id = :p AND f.path = w.path
                            AND f.content_sha256 = w.content_sha256)
    ), locked AS (
        SELECT sha256 FROM file_blobs WHERE sha256 IN (SELECT h FROM changed) FOR KEY SHARE
    ), blobs AS (
        INSERT INTO file_blobs (sha256, content, size)
        SELECT t.h, t.c, octet_length(t.c)
        FROM unnest(CAST(:bh AS text[]), CAST(:bc AS bytea[])) AS t(h, c)
        WHERE t.h IN (SELECT h FROM changed) AND t.h NOT IN (SELECT sha256 FROM locked)
        ON CONFLICT (sha256) DO NOTHING
    ), files AS (
        INSERT INTO workspace_files (project_id, path, sha256, content_sha256)
        SELECT :p, path, sha256, content_sha256 FROM want
        ON CONFLICT (project_id, path) DO UPDATE SET sha256 = EXCLUDED.sha256,
            content_sha256 = coalesce(EXCLUDED.content_sha256, workspace_files.content_sha256)
    )
    UPDATE workspaces SET manifest_seq = :seq WHERE project_id = :p
    """
)


def record_small(
    conn: Connection,
    project_id: str,
    seq: int,
    hashes: Mapping[str, str],
    contents: Mapping[str, str | None],
    blobs: Mapping[str, bytes],
) -> None:
    """Upsert the files (path -> sha256 seen; path -> content hash written, or None to keep
    the recorded one), store their blobs and stamp the manifest with ``seq``: one statement.
    The caller has checked that ``blobs`` is small (FOLD_BYTES)."""
    params = {
        "p": project_id,
        "seq": seq,
        "paths": list(hashes),
        "hashes": list(hashes.values()),
        "contents": [contents.get(path) for path in hashes],
        "bh": list(blobs),
        "bc": list(blobs.values()),
    }
    conn.execute(_RECORD_SMALL, params)


def _changed(conn: Connection, params: Mapping[str, object]) -> list[str]:
    return sorted(r.h for r in conn.execute(_CHANGED, params))


def record_deletions(conn: Connection, project_id: str, paths: Sequence[str]) -> None:
    if paths:
        conn.execute(_TOMBSTONES, {"p": project_id, "paths": sorted(paths)})


def forget_deletions(conn: Connection, project_id: str) -> None:
    conn.execute(
        sa.text("DELETE FROM workspace_deletions WHERE project_id = :p"), {"p": project_id}
    )


_LISTING = sa.text(
    """SELECT f.path, f.sha256, f.content_sha256, b.size
    FROM workspace_files f LEFT JOIN file_blobs b ON b.sha256 = f.content_sha256
    WHERE f.project_id = :p ORDER BY f.path"""
)
_CONTENTS = sa.text(
    """SELECT f.path, b.content FROM workspace_files f
    JOIN file_blobs b ON b.sha256 = f.content_sha256
    WHERE f.project_id = :p AND f.path = ANY(:paths)"""
)
# Paths qai-jobs deleted after the snapshot was taken (all of them without one is never
# needed: a rebuild from nothing has nothing to delete).
_DELETED_SINCE = sa.text(
    """SELECT d.path FROM workspace_deletions d
    WHERE d.project_id = :p
      AND d.deleted_at > (SELECT created_at FROM snapshots WHERE id = :snap)
      AND NOT EXISTS (SELECT 1 FROM workspace_files f
                      WHERE f.project_id = d.project_id AND f.path = d.path)
    ORDER BY d.path"""
)


def batches(
    files: Sequence[RecordedFile],
    max_bytes: int = BATCH_BYTES,
    max_files: int = BATCH_FILES,
) -> Iterator[list[RecordedFile]]:
    """``files`` in order, cut so no batch holds more than ``max_bytes`` of content (a larger
    file travels alone) or ``max_files`` files."""
    batch: list[RecordedFile] = []
    size = 0
    for f in files:
        n = f.size or 0
        if batch and (size + n > max_bytes or len(batch) >= max_files):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += n
    if batch:
        yield batch


class RecordReader:
    """The project's record as a rebuild reads it: the listing (paths and hashes, no content)
    once, then content per batch, each on a short connection of its own."""

    def __init__(self, engine: Engine, project_id: str) -> None:
        self.engine = engine
        self.project_id = project_id

    def listing(self) -> list[RecordedFile]:
        with self.engine.connect() as conn:
            rows = conn.execute(_LISTING, {"p": self.project_id})
            return [RecordedFile(r.path, r.sha256, r.content_sha256, r.size) for r in rows]

    def contents(self, paths: Sequence[str]) -> dict[str, bytes]:
        with self.engine.connect() as conn:
            rows = conn.execute(_CONTENTS, {"p": self.project_id, "paths": list(paths)})
            return {r.path: bytes(r.content) for r in rows}

    def deleted_since(self, snapshot_id: str | None) -> list[str]:
        if snapshot_id is None:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(_DELETED_SINCE, {"p": self.project_id, "snap": snapshot_id})
            return [r.path for r in rows]


# Blobs no recorded file references, locked so a settle referencing one right now is passed by
# (it holds KEY SHARE on it); the foreign key stops the rare one that commits in between.
_GC_BLOBS = sa.text(
    """DELETE FROM file_blobs WHERE sha256 IN (
        SELECT b.sha256 FROM file_blobs b
        WHERE NOT EXISTS (SELECT 1 FROM workspace_files f WHERE f.content_sha256 = b.sha256)
        LIMIT :batch FOR UPDATE SKIP LOCKED)
    RETURNING size"""
)
# A deletion matters only to a rebuild from a snapshot taken before it: those older than the
# workspace's last snapshot (all, without one) are never read again.
_GC_DELETIONS = sa.text(
    """DELETE FROM workspace_deletions d USING workspaces w
    WHERE d.project_id = w.project_id
      AND (w.last_snapshot_id IS NULL
           OR d.deleted_at < coalesce((SELECT s.created_at FROM snapshots s
                                       WHERE s.id = w.last_snapshot_id), 'infinity'))"""
)


def collect_garbage(engine: Engine, batch: int) -> tuple[int, int]:
    """Delete up to ``batch`` unreferenced blobs, and deletions no rebuild can need; return
    (blobs, bytes) freed."""
    try:
        with engine.begin() as conn:
            sizes = [r.size for r in conn.execute(_GC_BLOBS, {"batch": batch})]
            conn.execute(_GC_DELETIONS)
    except sa.exc.IntegrityError:
        return 0, 0  # a blob was referenced as we deleted it: the next run tries again
    return len(sizes), sum(sizes)
