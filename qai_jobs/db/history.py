"""What a rebuild reports as lost: the commands that ran after the snapshot it starts from."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

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
