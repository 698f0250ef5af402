"""The snapshots actions took, recorded with the action (a rebuild starts from the newest)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_INSERT = sa.text(
    """INSERT INTO snapshots (id, project_id, provider, kind, manifest)
    VALUES (:id, :p, :provider, :kind, CAST(:m AS jsonb))
    ON CONFLICT (id) DO NOTHING"""
)


def record(
    conn: Connection,
    project_id: str,
    provider: str,
    taken: Iterable[tuple[str, str, dict[str, str] | None]],
) -> None:
    """Record (snapshot_id, kind, manifest) rows in the caller's fenced transaction."""
    for snapshot_id, kind, manifest in taken:
        conn.execute(
            _INSERT,
            {
                "id": snapshot_id,
                "p": project_id,
                "provider": provider,
                "kind": kind,
                "m": json.dumps(manifest) if manifest is not None else None,
            },
        )
