"""Per-project exclusion, FIFO order and fencing: the only module that knows about the lease.

* Actions enter the queue with a per-project sequence number (``enqueue``).
* A drainer takes the project's lease: ``lease_gen`` grows on every grant, ``lease_owner`` and
  ``lease_expires_at`` say who holds it until when (renewed by a heartbeat). It runs the queued
  actions in ``seq`` order; a task that finds the lease taken leaves, the holder will get to it.
* Every state write is fenced: it first updates the workspace row ``WHERE lease_gen = :mine``,
  which both proves we still hold the lease and locks the row against a takeover until commit.
* Backoff lives in Postgres (``next_attempt_at``) so a retried action keeps its place at the head.
* Fairness turns too: a drain that used its budget gives the lease back with a pending ``turn``
  (handover.py); until that turn's message takes the lease, or the mark expires, the grant is
  refused to every other message, in the statement that grants it (no round trip of its own).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from qai_jobs.db import manifest
from qai_jobs.db.params import json_param
from qai_jobs.db.workspace_state import MUTABLE
from qai_jobs.errors import LeaseLost, WorkerLost
from qai_jobs.schemas import IDEMPOTENT_KINDS

# --- the lease -------------------------------------------------------------------------------

# When an action starts and ends is recorded as the time of the statement that did it, not of
# its transaction (now()): a grant that waited for the workspace row's lock, or ran its
# statement twice (acquire), began its transaction before the previous holder's settle, even
# before the action's own enqueue, and now() would date the start before both (the bench's
# checker counted such starts as overlaps). A settle's finish and the next start share one
# statement, so they still carry the same time.
RECORDED_AT = "statement_timestamp()"


@dataclass(frozen=True)
class Lease:
    project_id: str
    gen: int
    owner: str


# One statement takes the lease, settles what an earlier holder left running and carries this
# owner's own running action over (the hot path's first round trip). The grant also returns
# the workspace row and whether its host is alive: what the drainer would otherwise read with
# two more statements (hosts.claim, WorkspaceState) right after.
# * `got`: the grant; `settled` and `own` change nothing when it fails. A pending fairness
#   turn refuses it to every message but the turn's own (``:turn``) until the mark expires; the
#   grant clears the mark (the turn's message has come, or the mark outlived its message).
# * `unhinted`: a refused attempt still clears the project's message-in-flight mark
#   (``hint_seq``, db/enqueue.py): this attempt is that message's. `got` was refused on the
#   statement's snapshot, but `unhinted` waits for the row lock and sees the latest row: if the
#   lease turned out free by then (its holder gave it back while we waited, maybe without
#   seeing an enqueue that then found the mark), ``free`` says so and acquire() tries again.
# * `settled`: actions left `running` by an earlier holder (whose lease expired: it died or lost
#   touch). Idempotent kinds go back to the queue; a command is not run twice behind the
#   user's back. (A holder that settled one while this statement waited for the row lock
#   changed its status: READ COMMITTED re-checks the row and leaves it.)
# * `own`: the same owner taking the lease again: the commit of its first grant (which started
#   the head action) succeeded but was not seen, and the grant is being retried. That action
#   is its own, not a dead holder's: it is carried over to the new generation and run.
_ACQUIRE = sa.text(
    """
    WITH got AS (
        UPDATE workspaces
        SET lease_gen = lease_gen + 1, lease_owner = :o,
            lease_expires_at = now() + make_interval(secs => :ttl),
            turn = NULL, turn_expires_at = NULL, hint_seq = NULL, hint_at = NULL
        WHERE project_id = :p
          AND (lease_owner IS NULL OR lease_expires_at < now() OR lease_owner = :o)
          AND (turn IS NULL OR turn_expires_at < now() OR turn = CAST(:turn AS text))
        RETURNING lease_gen, host_id, {WORKSPACE_COLUMNS}
    ), unhinted AS (
        UPDATE workspaces SET hint_seq = NULL, hint_at = NULL
        WHERE project_id = :p AND hint_seq IS NOT NULL AND NOT EXISTS (SELECT 1 FROM got)
        RETURNING (lease_owner IS NULL OR lease_expires_at < now() OR lease_owner = :o)
              AND (turn IS NULL OR turn_expires_at < now() OR turn = CAST(:turn AS text))
              AS free
    ), settled AS (
        UPDATE actions
        SET status = CASE WHEN kind = ANY(:idem) AND attempts < :max
                          THEN 'queued' ELSE 'failed' END,
            error = CAST(:error AS jsonb),
            finished_at = CASE WHEN kind = ANY(:idem) AND attempts < :max
                               THEN NULL ELSE {RECORDED_AT} END,
            worker = NULL, next_attempt_at = NULL, stage = NULL
        WHERE project_id = :p AND status = 'running' AND worker IS DISTINCT FROM :o
          AND EXISTS (SELECT 1 FROM got)
        RETURNING id, kind, status, attempts, messaged
    ), own AS (
        UPDATE actions SET lease_gen = (SELECT lease_gen FROM got), heartbeat_at = now()
        WHERE project_id = :p AND status = 'running' AND worker = :o
          AND EXISTS (SELECT 1 FROM got)
        RETURNING id, kind, payload, attempts, seq, messaged
    )
    SELECT got.lease_gen AS gen, got.host_id, {GOT_COLUMNS},
           coalesce((SELECT free FROM unhinted), false) AS free,
           coalesce(h.last_seen_at > now() - make_interval(secs => :dead), false) AS alive,
           coalesce(h.draining, false) AS draining,
           (SELECT json_agg(json_build_object('id', id, 'kind', kind, 'status', status,
                                              'attempts', attempts, 'messaged', messaged))
            FROM settled) AS settled,
           (SELECT json_build_object('id', id, 'kind', kind, 'payload', payload,
                                     'attempts', attempts, 'seq', seq, 'messaged', messaged)
            FROM own LIMIT 1) AS own
    FROM (SELECT 1) AS one
    LEFT JOIN got ON true
    LEFT JOIN hosts h ON h.host_id = got.host_id
    """.replace("{WORKSPACE_COLUMNS}", ", ".join(MUTABLE))
    .replace("{RECORDED_AT}", RECORDED_AT)
    .replace("{GOT_COLUMNS}", ", ".join(f"got.{c}" for c in MUTABLE))
)


@dataclass(frozen=True)
class Settled:
    id: uuid.UUID
    kind: str
    status: str
    attempts: int
    messaged: bool  # False: monitoring heard of it from a drain (see Started.messaged)


@dataclass(frozen=True)
class Acquired:
    lease: Lease
    settled: list[Settled]  # what a dead holder left running, now re-queued or failed
    readopted: Started | None  # this owner's own running action (see _ACQUIRE)
    # The workspace row as the grant left it (MUTABLE columns, host_id) and its host's
    # liveness (alive, draining): hosts.claim and WorkspaceState take it from here.
    workspace: dict[str, Any]


# What every grant binds, built once.
_IDEMPOTENT = sorted(IDEMPOTENT_KINDS)
_WORKER_LOST = json.dumps(WorkerLost().to_dict())


def acquire(
    conn: Connection,
    project_id: str,
    owner: str,
    ttl: float,
    max_attempts: int = 5,
    host_dead_seconds: float = 30.0,
    turn: str | None = None,
) -> Acquired | None:
    """Take the project's lease; None when another holder has it or the project waits for
    another message's turn (``turn``: the token of the turn this message carries)."""
    params = {
        "p": project_id,
        "o": owner,
        "turn": turn,
        "ttl": ttl,
        "idem": _IDEMPOTENT,
        "error": _WORKER_LOST,
        "max": max_attempts,
        "dead": host_dead_seconds,
    }
    row = conn.execute(_ACQUIRE, params).one()
    if row.gen is None and row.free:  # refused on a stale snapshot: see `unhinted`
        row = conn.execute(_ACQUIRE, params).one()
    if row.gen is None:
        return None
    own = row.own
    readopted = (
        Started(
            uuid.UUID(own["id"]),
            own["kind"],
            own["payload"],
            own["attempts"],
            own["seq"],
            messaged=own["messaged"],
        )
        if own
        else None
    )
    return Acquired(
        Lease(project_id, row.gen, owner),
        [
            Settled(uuid.UUID(r["id"]), r["kind"], r["status"], r["attempts"], r["messaged"])
            for r in row.settled or []
        ],
        readopted,
        {k: v for k, v in row._mapping.items() if k not in ("gen", "free", "settled", "own")},
    )


_RENEW = sa.text(
    """
    UPDATE workspaces SET lease_expires_at = now() + make_interval(secs => :ttl)
    WHERE project_id = :p AND lease_gen = :g AND lease_owner = :o
    RETURNING event_seq
    """
)
_BEAT = sa.text("UPDATE actions SET heartbeat_at = now() WHERE id = :id AND status = 'running'")
_BEAT_STAGE = sa.text(
    "UPDATE actions SET heartbeat_at = now(), stage = CAST(:stage AS jsonb) "
    "WHERE id = :id AND status = 'running'"
)


def renew(
    conn: Connection,
    lease: Lease,
    ttl: float,
    action_id: uuid.UUID | None,
    stage: dict[str, Any] | None = None,
) -> bool:
    """Extend the lease (the heartbeat), recording the running action's beat and, when given,
    its current stage; False when the lease was lost to another holder."""
    held = conn.execute(
        _RENEW, {"p": lease.project_id, "g": lease.gen, "o": lease.owner, "ttl": ttl}
    ).first()
    if held is not None and action_id is not None:
        if stage is None:
            conn.execute(_BEAT, {"id": action_id})
        else:
            conn.execute(_BEAT_STAGE, {"id": action_id, "stage": json.dumps(stage)})
    return held is not None


def fence(conn: Connection, lease: Lease, ttl: float) -> None:
    """Prove the lease is still ours and lock the workspace row until commit; else LeaseLost."""
    if not renew(conn, lease, ttl, None):
        raise LeaseLost(f"lease {lease.gen} of project {lease.project_id} was lost")


_RELEASE = sa.text(
    """
    UPDATE workspaces SET lease_owner = NULL, lease_expires_at = NULL
    WHERE project_id = :p AND lease_gen = :g AND lease_owner = :o
    """
)


def release(conn: Connection, lease: Lease) -> None:
    conn.execute(_RELEASE, {"p": lease.project_id, "g": lease.gen, "o": lease.owner})


# --- running actions -------------------------------------------------------------------------

# The project's head action, and starting it if it is due (and ``:start``): one text for
# start_next and for the drain's start-or-release statement (handover.py), which embeds it.
HEAD_CTE = """head AS (
        SELECT id FROM actions
        WHERE project_id = :p AND status = 'queued'
        ORDER BY seq LIMIT 1
    )"""
START_HEAD = f"""UPDATE actions a
        SET status = 'running', started_at = coalesce(a.started_at, {RECORDED_AT}),
            attempts = a.attempts + 1, worker = :o, lease_gen = :g, heartbeat_at = now(),
            next_attempt_at = NULL, stage = CAST(:stage AS jsonb)
        FROM head
        WHERE :start AND a.id = head.id AND a.status = 'queued'
          AND (a.next_attempt_at IS NULL OR a.next_attempt_at <= now())
        RETURNING a.id, a.kind, a.payload, a.attempts, a.seq, a.messaged"""
_START_NEXT = sa.text(f"WITH {HEAD_CTE} {START_HEAD}")


@dataclass(frozen=True)
class Started:
    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempts: int
    seq: int
    # The synced-files manifest, read in the transaction that started a sync (see
    # qai_jobs.db.handover): the runner then needs no read-only transaction of its own for it.
    manifest: manifest.Manifest | None = None
    # False: it had no Celery message of its own (db/enqueue.py); the drain tells monitoring.
    messaged: bool = True


# The stage an action starts in: the runner reports the same one before running a command, and
# that report then needs no write of its own.
START_STAGE: dict[str, Any] = {"stage": "running", "done": None, "total": None}
START_STAGE_JSON = json.dumps(START_STAGE)  # as every start binds it (built once)


def start_next(conn: Connection, lease: Lease) -> Started | None:
    """Mark the project's head action running if it is due; the caller has fenced ``conn``
    (or took the lease in it)."""
    params = {"p": lease.project_id, "g": lease.gen, "o": lease.owner}
    params |= {"stage": START_STAGE_JSON, "start": True}
    row = conn.execute(_START_NEXT, params).first()
    if row is None:
        return None
    return Started(row.id, row.kind, row.payload, row.attempts, row.seq, messaged=row.messaged)


_FINISH = sa.text(
    f"""
    UPDATE actions
    SET status = :status, result = CAST(:result AS jsonb), error = CAST(:error AS jsonb),
        finished_at = {RECORDED_AT}, stage = NULL, worker = NULL
    WHERE id = :id AND status = 'running' AND lease_gen = :g
    RETURNING kind, attempts
    """
)
_RETRY = sa.text(
    """
    UPDATE actions
    SET status = 'queued', error = CAST(:error AS jsonb), worker = NULL, stage = NULL,
        next_attempt_at = now() + make_interval(secs => :delay)
    WHERE id = :id AND status = 'running' AND lease_gen = :g
    """
)


def finish(
    conn: Connection,
    lease: Lease,
    action_id: uuid.UUID,
    *,
    status: str,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    row = conn.execute(
        _FINISH,
        {
            "id": action_id,
            "g": lease.gen,
            "status": status,
            "result": json_param(result),
            "error": json_param(error),
        },
    ).first()
    if row is None:
        raise LeaseLost(f"action {action_id} is no longer ours to finish")


def retry_later(
    conn: Connection, lease: Lease, action_id: uuid.UUID, *, error: dict[str, Any], delay: float
) -> None:
    res = conn.execute(
        _RETRY, {"id": action_id, "g": lease.gen, "error": json.dumps(error), "delay": delay}
    )
    if res.rowcount == 0:
        raise LeaseLost(f"action {action_id} is no longer ours to retry")
