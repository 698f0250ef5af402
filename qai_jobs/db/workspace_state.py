"""The in-memory mirror of one workspace row that the runner reads and changes.

The drainer loads it once per lease, the runner mutates it while executing an action, and the
fenced finishing transaction writes back exactly the columns that changed.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from qai_jobs.constants import WorkspaceStatus
from qai_jobs.providers.base import Sandbox

# Columns the runner may change (the rest belong to ordering: counters and the lease).
MUTABLE = (
    "id",
    "preview_id",
    "status",
    "provider",
    "sandbox_id",
    "sandbox",
    "preview_url",
    "port",
    "dev_command",
    "install_command",
    "install_hash",
    "env",
    "dev_process",
    "repo",
    "network",
    "last_snapshot_id",
)


@dataclass
class WorkspaceState:
    project_id: str
    id: uuid.UUID
    preview_id: str | None = None
    status: str = WorkspaceStatus.NEW
    provider: str | None = None
    sandbox_id: str | None = None
    sandbox: dict[str, Any] | None = None
    preview_url: str | None = None
    port: int | None = None
    dev_command: str | None = None
    install_command: str | None = None
    install_hash: str | None = None
    env: dict[str, Any] | None = None
    dev_process: dict[str, Any] | None = None
    repo: dict[str, Any] | None = None
    network: dict[str, Any] | None = None
    last_snapshot_id: str | None = None
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, conn: Connection, project_id: str) -> WorkspaceState:
        row = conn.execute(
            sa.text(f"SELECT {', '.join(MUTABLE)} FROM workspaces WHERE project_id = :p"),
            {"p": project_id},
        ).one()
        return cls.from_row(project_id, dict(row._mapping))

    @classmethod
    def from_row(cls, project_id: str, row: Mapping[str, Any]) -> WorkspaceState:
        """From a workspace row read by another statement (the lease grant returns it)."""
        state = cls(project_id=project_id, **{name: row[name] for name in MUTABLE})
        state.mark_clean()
        return state

    def mark_clean(self) -> None:
        self._loaded = {name: copy.deepcopy(getattr(self, name)) for name in MUTABLE}

    def revert(self, *names: str) -> None:
        """Put ``names`` back as they were loaded (an action refused before applying them)."""
        for name in names:
            setattr(self, name, copy.deepcopy(self._loaded.get(name)))

    def changes(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in MUTABLE if getattr(self, n) != self._loaded.get(n)}

    # -- convenience -------------------------------------------------------------------------
    @property
    def sb(self) -> Sandbox | None:
        return Sandbox.from_json(self.sandbox) if self.sandbox else None

    def set_sandbox(self, sb: Sandbox | None) -> None:
        if sb is None:
            self.sandbox = None
            self.sandbox_id = None
            return
        # The runner's bookkeeping rides in this dict: a new handle from the provider (wake,
        # restore, recreate) must not drop whether a dev server is wanted, nor the sleep
        # manifest that wake verifies against (same sandbox only).
        old = self.sandbox or {}
        carried = {k: old[k] for k in ("dev_server_wanted",) if k in old}
        if old.get("sandbox_id") == sb.sandbox_id:
            # and, same sandbox, that a failed rebuild left it partial (runner/rebuild.py)
            carried |= {k: old[k] for k in ("sleep_manifest", "rebuild_incomplete") if k in old}
        self.sandbox = {**sb.to_json(), **carried}
        self.sandbox_id = sb.sandbox_id
        self.provider = sb.provider


_JSON_COLUMNS = {"sandbox", "env", "dev_process", "repo", "network"}


_TOUCH = sa.text("UPDATE workspaces SET last_activity_at = now() WHERE project_id = :p")


def touch_activity(conn: Connection, project_id: str) -> None:
    """An action ran: the idle sweep counts from now."""
    conn.execute(_TOUCH, {"p": project_id})


_ACTIVITY = sa.text("SELECT last_activity_at FROM workspaces WHERE project_id = :p")


def last_activity(conn: Connection, project_id: str) -> datetime | None:
    """The workspace's last activity (actions, and preview requests through the gateway)."""
    value: datetime | None = conn.execute(_ACTIVITY, {"p": project_id}).scalar()
    return value


def write_changes(conn: Connection, state: WorkspaceState) -> bool:
    """Write what the runner changed (the caller has fenced ``conn`` on the lease, and marks
    the state clean once the transaction commits); whether there was anything to write."""
    changes = state.changes()
    if not changes:
        return False
    sets = []
    params: dict[str, Any] = {"p": state.project_id}
    for name, value in changes.items():
        if name in _JSON_COLUMNS:
            sets.append(f"{name} = CAST(:{name} AS jsonb)")
            params[name] = None if value is None else json.dumps(value)
        else:
            sets.append(f"{name} = :{name}")
            params[name] = value
    conn.execute(
        sa.text(
            f"UPDATE workspaces SET {', '.join(sets)}, updated_at = now() WHERE project_id = :p"
        ),
        params,
    )
    return True


_MARK = sa.text(
    """
    UPDATE workspaces SET status = :new, updated_at = now()
    WHERE sandbox_id = :sid
      AND (CAST(:p AS text) IS NULL OR project_id = CAST(:p AS text))
      AND status = ANY(:from_statuses)
    RETURNING project_id
    """
)


def mark_by_sandbox(
    conn: Connection,
    sandbox_id: str,
    project_id: str | None,
    new: str,
    from_statuses: tuple[str, ...],
) -> list[str]:
    """Set the status of the workspace(s) whose current sandbox is ``sandbox_id`` (and whose
    status is one of ``from_statuses``); the projects changed. An older sandbox matches none."""
    params = {"new": new, "sid": sandbox_id, "p": project_id, "from_statuses": list(from_statuses)}
    return [str(p) for p in conn.execute(_MARK, params).scalars()]
