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


_OWNER = sa.text("SELECT project_id FROM snapshots WHERE id = :id")


def owner(conn: Connection, snapshot_id: str) -> str | None:
    """The project that took ``snapshot_id``; None when no action of ours recorded it."""
    found = conn.execute(_OWNER, {"id": snapshot_id}).scalar_one_or_none()
    return str(found) if found is not None else None


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
