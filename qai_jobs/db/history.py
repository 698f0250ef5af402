"""The file changes a rebuilt sandbox replays: what earlier ensure/write actions synced."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.schemas import FileEntry

FileChanges = tuple[list[tuple[str, bytes]], list[str]]  # (files written, paths deleted)

_HISTORY = sa.text(
    """
    SELECT payload FROM actions
    WHERE project_id = :p AND kind IN ('ensure', 'write') AND status = 'succeeded'
      AND seq < :seq
      -- a destroyed workspace's files do not come back in the one that replaced it
      AND seq > coalesce((SELECT max(seq) FROM actions WHERE project_id = :p AND seq < :seq
                          AND kind = 'destroy' AND status = 'succeeded'), 0)
      AND (CAST(:snap AS text) IS NULL
           OR finished_at > (SELECT created_at FROM snapshots WHERE id = CAST(:snap AS text)))
    ORDER BY seq
    """
)


def file_changes(
    engine: Engine, project_id: str, before_seq: int, since_snapshot: str | None
) -> list[FileChanges]:
    """The changes of the project's successful ensure/write actions before ``before_seq`` (and
    after ``since_snapshot`` was taken, when given), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(_HISTORY, {"p": project_id, "seq": before_seq, "snap": since_snapshot})
        payloads = [r.payload for r in rows]
    changes: list[FileChanges] = []
    for payload in payloads:
        files = [FileEntry.model_validate(f) for f in payload.get("files") or []]
        changes.append(([(f.path, f.data()) for f in files], list(payload.get("delete") or [])))
    return changes


_LOST = sa.text(
    """
    SELECT id, seq, kind, status FROM actions
    WHERE project_id = :p AND kind = 'command' AND status IN ('succeeded', 'failed')
      AND started_at IS NOT NULL AND seq < :seq
      AND (CAST(:snap AS text) IS NULL
           OR finished_at > (SELECT created_at FROM snapshots WHERE id = CAST(:snap AS text)))
    ORDER BY seq
    """
)


def lost_since(
    engine: Engine, project_id: str, before_seq: int, since_snapshot: str | None
) -> list[dict[str, object]]:
    """The commands that ran after ``since_snapshot`` (all of them without one): what they
    changed in the files is in no snapshot and no replay, so a rebuild loses it."""
    with engine.connect() as conn:
        rows = conn.execute(_LOST, {"p": project_id, "seq": before_seq, "snap": since_snapshot})
        return [
            {"action_id": str(r.id), "seq": r.seq, "kind": r.kind, "status": r.status} for r in rows
        ]
