"""The fleet in Postgres: each host's heartbeat row, placement, and who may run a workspace.

A host is alive while its workers report within WORKSPACE_HOST_DEAD_SECONDS. A local
workspace is placed on the least loaded live host and stays there; a host that takes the lease
of a workspace held by another live host hands it on, and one held by a dead host is moved to
the taker (the lease grant in the same transaction is the fencing event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_REPORT = sa.text(
    """
    INSERT INTO hosts (host_id, address, capacity, started_at, last_seen_at)
    VALUES (:h, :a, :c, now(), now())
    ON CONFLICT (host_id) DO UPDATE
    SET address = excluded.address, capacity = greatest(excluded.capacity, 1),
        last_seen_at = now(),
        -- a worker (re)starting after maintenance takes workspaces again
        draining = CASE WHEN :fresh THEN false ELSE hosts.draining END,
        started_at = CASE WHEN :fresh THEN now() ELSE hosts.started_at END
    """
)


def report(
    conn: Connection, host_id: str, address: str, capacity: int, *, fresh: bool = False
) -> None:
    """A worker of ``host_id`` is alive (its heartbeat); ``fresh``: it has just started."""
    conn.execute(_REPORT, {"h": host_id, "a": address, "c": max(1, capacity), "fresh": fresh})


_LIST = sa.text(
    """
    SELECT h.host_id, h.address, h.capacity, h.draining, h.started_at, h.last_seen_at,
           h.last_seen_at > now() - make_interval(secs => :dead) AS alive,
           (SELECT count(*) FROM workspaces w
            WHERE w.host_id = h.host_id AND w.status <> 'destroyed') AS workspaces
    FROM hosts h ORDER BY h.host_id
    """
)


def list_hosts(conn: Connection, dead_seconds: float) -> list[dict[str, Any]]:
    rows = conn.execute(_LIST, {"dead": dead_seconds}).all()
    return [
        {
            "host_id": r.host_id,
            "address": r.address,
            "alive": bool(r.alive),
            "draining": bool(r.draining),
            "capacity": r.capacity,
            "last_seen_at": r.last_seen_at.isoformat(),
            "started_at": r.started_at.isoformat(),
            "workspaces": int(r.workspaces),
        }
        for r in rows
    ]


_LEAST_LOADED = sa.text(
    """
    SELECT h.host_id FROM hosts h
    WHERE h.last_seen_at > now() - make_interval(secs => :dead) AND NOT h.draining
      AND h.host_id <> :exclude
    ORDER BY (SELECT count(*) FROM workspaces w
              WHERE w.host_id = h.host_id AND w.status <> 'destroyed')::float
             / greatest(h.capacity, 1), h.host_id
    LIMIT 1
    """
)


def least_loaded(conn: Connection, dead_seconds: float, exclude: str = "") -> str | None:
    found = conn.execute(_LEAST_LOADED, {"dead": dead_seconds, "exclude": exclude}).scalar()
    return str(found) if found is not None else None


_PLACE = sa.text("UPDATE workspaces SET host_id = :h WHERE project_id = :p")


@dataclass(frozen=True)
class Holder:
    """Where a workspace's actions must run: here (``forward`` None) or on ``forward``."""

    forward: str | None = None
    moved_from: str | None = None  # taken over from this dead (or drained) host


def claim(
    conn: Connection,
    project_id: str,
    me: str,
    dead_seconds: float,
    local_first: bool,
    seen: Mapping[str, Any],
) -> Holder:
    """Decide, under the workspace row lock the lease grant holds, whether host ``me`` may run
    the project's actions; place a new local workspace and take over a dead host's on the way.
    ``seen``: the row (host_id, provider, status, and the host's alive, draining) as the grant's
    own statement read it under that lock (``ordering.acquire``)."""
    row = SimpleNamespace(**seen)
    local = row.provider == "local" or (row.provider is None and local_first)
    if not local:
        if row.host_id is not None:  # it went to a cloud provider: no host holds it
            conn.execute(_PLACE, {"p": project_id, "h": None})
        return Holder()
    asleep_on_drained = bool(row.draining) and row.status == "sleeping"
    if row.host_id is None or (row.host_id == me and asleep_on_drained):
        exclude = me if row.host_id == me else ""
        chosen = least_loaded(conn, dead_seconds, exclude) or me
        conn.execute(_PLACE, {"p": project_id, "h": chosen})
        return Holder(forward=None if chosen == me else chosen)
    if row.host_id == me:
        return Holder()
    if row.alive and not asleep_on_drained:
        return Holder(forward=str(row.host_id))
    # Its host is dead (or drained and the workspace's sleep snapshot is complete): it is ours
    # from this lease generation on; the runner rebuilds it here from its last snapshot.
    conn.execute(_PLACE, {"p": project_id, "h": me})
    return Holder(moved_from=str(row.host_id))


_ROUTE = sa.text(
    """
    SELECT w.host_id FROM workspaces w JOIN hosts h ON h.host_id = w.host_id
    WHERE w.project_id = :p AND h.last_seen_at > now() - make_interval(secs => :dead)
    """
)


def route(conn: Connection, project_id: str, dead_seconds: float) -> str | None:
    """The live host whose queue the project's work goes to; None: the shared queue."""
    found = conn.execute(_ROUTE, {"p": project_id, "dead": dead_seconds}).scalar()
    return str(found) if found is not None else None


_ELSEWHERE = sa.text(
    """
    SELECT project_id, sandbox_id FROM workspaces
    WHERE host_id IS NOT NULL AND host_id <> :me
    """
)


def elsewhere(conn: Connection, me: str) -> tuple[set[str], set[str]]:
    """(projects, local sandbox ids) that workspace rows place on other hosts: a copy under
    this host's root of one of them is a moved workspace's leftover, no longer ours."""
    rows = conn.execute(_ELSEWHERE, {"me": me}).all()
    return {str(r.project_id) for r in rows}, {str(r.sandbox_id) for r in rows if r.sandbox_id}


_DRAINING = sa.text("UPDATE hosts SET draining = :d WHERE host_id = :h RETURNING host_id")
_ON_HOST = sa.text(
    """
    SELECT project_id, status FROM workspaces
    WHERE host_id = :h AND status NOT IN ('destroyed', 'new') ORDER BY project_id
    """
)
# A sleeping workspace whose lease is free is complete in its sleep snapshot: it changes host
# with a new lease generation, so a late holder on the old host is fenced out.
_HAND_OVER = sa.text(
    """
    UPDATE workspaces SET host_id = :to, lease_gen = lease_gen + 1
    WHERE project_id = :p AND host_id = :h AND status = 'sleeping'
      AND (lease_owner IS NULL OR lease_expires_at < now())
    RETURNING project_id
    """
)


def set_draining(conn: Connection, host_id: str, draining: bool) -> bool:
    return conn.execute(_DRAINING, {"h": host_id, "d": draining}).first() is not None


def on_host(conn: Connection, host_id: str) -> list[tuple[str, str]]:
    return [(str(r.project_id), str(r.status)) for r in conn.execute(_ON_HOST, {"h": host_id})]


_HOLDER = sa.text("SELECT host_id FROM workspaces WHERE project_id = :p")


def hand_over(conn: Connection, project_id: str, from_host: str, dead_seconds: float) -> str | None:
    """Give a sleeping workspace of ``from_host`` to the least loaded other live host; the host
    it is on now, if a lease grant took it off ``from_host`` first; None: it stays.

    Any drain attempt between the drain's sleep and this hand-over takes it first: asleep on a
    draining host, ``claim`` places it on the taker or the least loaded other host, under a
    new lease generation. Such attempts are ordinary (a message a host found in its queue when
    it came back, a recovery kick), and the workspace has left ``from_host`` all the same."""
    target = least_loaded(conn, dead_seconds, exclude=from_host)
    if target is not None:
        moved = conn.execute(_HAND_OVER, {"p": project_id, "h": from_host, "to": target}).first()
        if moved:
            return target
    holder = conn.execute(_HOLDER, {"p": project_id}).scalar()
    return str(holder) if holder is not None and holder != from_host else None
