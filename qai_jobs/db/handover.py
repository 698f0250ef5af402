"""The drain's hot path in few round trips: settle an action and hand the lease on.

An action's settling transaction is fenced on the lease (``ordering``); these statements fold
what used to be several into one each, because every statement is a round trip paid per action:

* :func:`fence_for_settle`: prove the lease, lock the workspace row, record the activity and
  learn whether this very transaction already committed once (a retry) — one ``UPDATE``.
* :func:`start_or_release`: record the settled action's outcome, start the project's head
  action if it is due, reading the synced files' manifest for a sync in the same statement;
  with none started, give the lease back and say when the next queued action is due — one
  statement either way, where it was four. A drain that used its budget records its fairness
  turn in that same release (see ``Turn``).

The release stays in the transaction that found nothing to start: an action enqueued meanwhile
waits on the workspace row this transaction locked (its ``next_seq`` bump), so it commits after
the release, and the message that drains it (its own, or the project's message in flight that
it rode on: db/enqueue.py) finds the lease free.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from qai_jobs.db import manifest
from qai_jobs.db.ordering import (
    HEAD_CTE,
    RECORDED_AT,
    START_HEAD,
    START_STAGE_JSON,
    Lease,
    Started,
)
from qai_jobs.db.params import json_param
from qai_jobs.errors import LeaseLost

# Kinds whose runner diffs against the recorded manifest.
SYNC_KINDS = ("ensure", "write")
_SYNC = list(SYNC_KINDS)

# Asynchronous commit (the WAL flush not waited for: about a third of a millisecond a commit on
# this machine's disk, by pgbench) for a settle whose loss in a Postgres crash only makes work
# run again with the same effect. Postgres keeps the durable state a prefix of the commit
# order (every synchronous commit flushes all WAL before it), so a crash loses at most the
# drain's latest settles: the earliest of their actions is running again under the lease as
# its grant left it (the grant, every heartbeat and every enqueue commit synchronously; a
# holder that cannot renew stops before the lease expires, heartbeat.py), the ones they
# started are queued again, and a later grant runs them again in order (ordering._ACQUIRE
# re-queues idempotent kinds). That is harmless only for these kinds, and only when:
# * the settle changed nothing else (a sandbox made or dropped, a snapshot or a webhook event
#   commits synchronously);
# * it starts nothing, or only an action that changes no files (READ_ONLY_KINDS): a settle
#   that starts a write or any other kind commits synchronously, so a lost suffix holds at
#   most one action that changed the sandbox, its first, whose replay finds the sandbox as it
#   left it (a later write replayed under an earlier read would break order);
# * the action had attempts left: replayed, one on its last attempt fails worker_lost.
# A grant never commits asynchronously: lost, it would leave the lease free while its holder
# runs the action.
RELAXED_KINDS = ("write", "read", "logs")
READ_ONLY_KINDS = ("read", "logs")
_READ_ONLY = list(READ_ONLY_KINDS)

_FENCE_FOR_SETTLE = sa.text(
    """
    UPDATE workspaces
    SET lease_expires_at = now() + make_interval(secs => :ttl),
        last_activity_at = CASE WHEN :touch THEN now() ELSE last_activity_at END
    WHERE project_id = :p AND lease_gen = :g AND lease_owner = :o
    RETURNING (SELECT a.status <> 'running' AND a.lease_gen = :g
               FROM actions a WHERE a.id = :id) AS settled
    """
)


def fence_for_settle(
    conn: Connection, lease: Lease, ttl: float, action_id: uuid.UUID, *, touch: bool
) -> bool:
    """Fence ``conn`` on the lease (LeaseLost if it is gone), count the action as activity when
    ``touch``, and say whether this lease already moved the action on from running: a retried
    transaction whose first commit succeeded unseen."""
    params = {
        "p": lease.project_id,
        "g": lease.gen,
        "o": lease.owner,
        "ttl": ttl,
        "id": action_id,
        "touch": touch,
    }
    row = conn.execute(_FENCE_FOR_SETTLE, params).first()
    if row is None:
        raise LeaseLost(f"lease {lease.gen} of project {lease.project_id} was lost")
    return bool(row.settled)


@dataclass(frozen=True)
class Turn:
    """A fairness turn to record with the release: ``token`` is what the turn's own message
    carries (the only one the lease is granted to meanwhile, ordering._ACQUIRE); the mark lapses
    after ``seconds``, so a lost message cannot hold the project back for long."""

    token: str
    seconds: float


@dataclass(frozen=True)
class Handover:
    started: Started | None
    # With none started: seconds until the next queued action is due (0: now; None: none).
    due_in: float | None = None
    # The turn the release recorded (its token): only an offered one, with the head due now.
    turn: str | None = None


# ``finished``: the settled action's terminal status, in the same statement (no row when :fid
# is null). The head is read in the statement's snapshot, where the finished action is still
# running, so it is never the head; a retried one is re-queued by a statement before this one,
# so that it keeps its place at the head. ``turn_due``: the budget's cut records its turn
# only when the head is due now (one not due yet is the backoff's kick; with nothing queued,
# no message would come to clear it).
_START_OR_RELEASE = sa.text(
    f"""
    WITH finished AS (
        UPDATE actions
        SET status = :fstatus, result = CAST(:fresult AS jsonb),
            error = CAST(:ferror AS jsonb), finished_at = {RECORDED_AT}, stage = NULL,
            worker = NULL
        WHERE id = CAST(:fid AS uuid) AND status = 'running' AND lease_gen = :g
        RETURNING 1
    ), {HEAD_CTE}, started AS (
        {START_HEAD}
    ), turn_due AS (
        SELECT 1 FROM head JOIN actions q ON q.id = head.id
        WHERE CAST(:turn AS text) IS NOT NULL
          AND coalesce(q.next_attempt_at, q.created_at) <= now()
    ), released AS (
        UPDATE workspaces SET lease_owner = NULL, lease_expires_at = NULL,
            turn = CASE WHEN EXISTS (SELECT 1 FROM turn_due) THEN CAST(:turn AS text) END,
            turn_expires_at = CASE WHEN EXISTS (SELECT 1 FROM turn_due)
                                   THEN now() + make_interval(secs => :turn_s) END
        WHERE project_id = :p AND lease_gen = :g AND lease_owner = :o
          AND NOT EXISTS (SELECT 1 FROM started)
        RETURNING turn
    )
    SELECT s.id, s.kind, s.payload, s.attempts, s.seq, s.messaged,
           (SELECT turn FROM released) AS turn,
           CASE WHEN s.kind = ANY(:sync) THEN w.manifest_seq END AS manifest_seq,
           CASE WHEN s.kind = ANY(:sync) AND w.manifest_seq IS NOT NULL THEN
               (SELECT json_object_agg(f.path, f.sha256) FROM workspace_files f
                WHERE f.project_id = :p) END AS manifest_files,
           (SELECT extract(epoch FROM coalesce(q.next_attempt_at, q.created_at) - now())
            FROM actions q WHERE q.project_id = :p AND q.status = 'queued'
            ORDER BY q.seq LIMIT 1) AS due_in,
           (SELECT count(*) FROM finished) AS finished,
           CASE WHEN :relaxed AND (s.kind IS NULL OR s.kind = ANY(:read_only))
                THEN set_config('synchronous_commit', 'off', true) END AS relaxed
    FROM (SELECT 1) AS one
    LEFT JOIN started s ON true
    LEFT JOIN workspaces w ON w.project_id = :p
    """
)


@dataclass(frozen=True)
class Finish:
    """The running action's terminal outcome, recorded by :func:`start_or_release`."""

    action_id: uuid.UUID
    status: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def start_or_release(
    conn: Connection,
    lease: Lease,
    *,
    start: bool = True,
    finish: Finish | None = None,
    turn: Turn | None = None,
    relaxed: bool = False,
) -> Handover:
    """Record ``finish`` (LeaseLost when the action is no longer this lease's to finish), then
    start the head action if ``start`` and it is due (the caller has fenced ``conn`` or took
    the lease in it); else give the lease back, recording ``turn`` if the head is due now.
    ``relaxed``: a settle that needs no durable commit (see RELAXED_KINDS): it then commits
    asynchronously, unless this statement starts an action of another kind."""
    params = {
        "p": lease.project_id,
        "g": lease.gen,
        "o": lease.owner,
        "start": start,
        "stage": START_STAGE_JSON,
        "sync": _SYNC,
        "fid": finish.action_id if finish else None,
        "fstatus": finish.status if finish else None,
        "fresult": json_param(finish.result) if finish else None,
        "ferror": json_param(finish.error) if finish else None,
        "turn": None if turn is None else turn.token,
        "turn_s": 0.0 if turn is None else turn.seconds,
        "relaxed": relaxed,
        "read_only": _READ_ONLY,
    }
    row = conn.execute(_START_OR_RELEASE, params).one()
    if finish is not None and not row.finished:
        raise LeaseLost(f"action {finish.action_id} is no longer ours to finish")
    if row.id is None:
        due_in = None if row.due_in is None else max(0.0, float(row.due_in))
        return Handover(None, due_in, row.turn)
    recorded = None
    if row.kind in SYNC_KINDS:
        recorded = (
            manifest.Manifest(row.manifest_seq, dict(row.manifest_files or {}))
            if row.manifest_seq is not None
            else manifest.Manifest(None, {})
        )
    started = Started(
        row.id, row.kind, row.payload, row.attempts, row.seq, recorded, messaged=row.messaged
    )
    return Handover(started)


def with_manifest(conn: Connection, lease: Lease, started: Started | None) -> Started | None:
    """``started`` (started by another statement of ``conn``'s transaction) with the project's
    manifest when its kind syncs files, read in that transaction: what the action would read."""
    if started is None or started.kind not in SYNC_KINDS:
        return started
    return dataclasses.replace(started, manifest=manifest.read(conn, lease.project_id))


_OWN_RUNNING = sa.text(
    """
    SELECT id, kind, payload, attempts, seq, messaged FROM actions
    WHERE project_id = :p AND status = 'running' AND lease_gen = :g AND worker = :o
    """
)


def own_running(conn: Connection, lease: Lease) -> Started | None:
    """The action this lease has running (started by a commit that succeeded unseen)."""
    params = {"p": lease.project_id, "g": lease.gen, "o": lease.owner}
    row = conn.execute(_OWN_RUNNING, params).first()
    if row is None:
        return None
    return Started(row.id, row.kind, row.payload, row.attempts, row.seq, messaged=row.messaged)
