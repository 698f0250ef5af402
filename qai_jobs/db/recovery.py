"""Recovery's query, independent of the broker: the projects whose work nobody is doing.

A message can be lost (a wiped broker, a producer killed before sending, a worker that died
holding it) and a holder can die; both leave Postgres saying so: a due queued head with no
recent kick and a free lease, or a running action under an expired lease. The recovery sweep
and every worker's watchdog kick those projects (``qai_jobs.worker.sweeps``); the lease itself
is ``ordering``'s.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

_STALE = sa.text(
    """
    WITH stale AS (
        SELECT DISTINCT a.project_id FROM actions a JOIN workspaces w USING (project_id)
        WHERE (w.lease_owner IS NULL OR w.lease_expires_at < now())
          -- a pending turn's own message is on its way: a kick now would only be refused
          -- (and hold the next kick back); once the mark expires, the message is lost
          AND (w.turn IS NULL OR w.turn_expires_at < now())
          AND (
            (a.status = 'queued' AND coalesce(a.next_attempt_at, a.created_at) <= now()
             AND (a.kicked_at IS NULL OR a.kicked_at < now() - make_interval(secs => :stale))
             -- only the head counts: the actions behind a retrying head wait for it
             AND a.seq = (SELECT min(q.seq) FROM actions q
                          WHERE q.project_id = a.project_id AND q.status = 'queued'))
            OR a.status = 'running'
          )
        LIMIT :limit
    )
    UPDATE actions SET kicked_at = now()
    WHERE status = 'queued' AND project_id IN (SELECT project_id FROM stale)
    RETURNING project_id
    """
)
_STALE_RUNNING_ONLY = sa.text(
    """
    SELECT DISTINCT a.project_id FROM actions a JOIN workspaces w USING (project_id)
    WHERE a.status = 'running' AND (w.lease_owner IS NULL OR w.lease_expires_at < now())
    LIMIT :limit
    """
)


def stale_projects(engine: Engine, stale_after: float, limit: int = 1000) -> set[str]:
    """Projects whose work nobody is doing: due queued actions whose message may be lost
    (a project waiting for its fairness turn counts once the turn expired), or running actions
    whose holder's lease expired. Marks the queued ones as kicked."""
    with engine.begin() as conn:
        projects = {
            r.project_id for r in conn.execute(_STALE, {"stale": stale_after, "limit": limit})
        }
        projects |= {r.project_id for r in conn.execute(_STALE_RUNNING_ONLY, {"limit": limit})}
    return projects
