"""The SQL of `qai-jobs bench`: transaction counters, completion and the correctness checker.

The checker reads the actions' own timestamps: within a project, in sequence order, an action
that started before the previous one finished is an overlap (exclusion broken), and one that
started before the previous one started is an out-of-order start. A settle's statement finishes
an action and starts the next at one time (``ordering.RECORDED_AT``), so equal timestamps are
neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

_XACTS = "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s"


def _libpq(database_url: str, database: str | None = None) -> tuple[str, str]:
    url = make_url(database_url)
    name = url.database or ""
    url = url.set(drivername="postgresql", database=database or name)
    return url.render_as_string(hide_password=False), name


def xact_counts(database_url: str) -> tuple[int, int]:
    """(commits, rollbacks) of the URL's database, read from the ``postgres`` database so the
    reading itself is not counted."""
    dsn, name = _libpq(database_url, "postgres")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_XACTS, (name,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def wal_syncs(database_url: str) -> int:
    """How many times the server has synced its WAL to disk (``pg_stat_wal``, the whole
    server's: on a quiet server, what the bench's synchronous commits cost)."""
    dsn, _ = _libpq(database_url, "postgres")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
    return int(row[0]) if row else 0


class DonePoller:
    """Counts finished actions in the bench database, one autocommit statement (one commit)
    per poll. It reads the counters the triggers keep (``fleet_counts``, a few rows), not the
    actions: a count over the actions table scans every run's rows so far, and polled every
    few milliseconds that scan took CPU from the workers it was timing."""

    _SQL = (
        "SELECT coalesce(sum(n), 0) FROM fleet_counts "
        "WHERE metric = 'action' AND label IN ('succeeded', 'failed', 'cancelled')"
    )

    def __init__(self, database_url: str):
        self._conn = psycopg.connect(_libpq(database_url)[0], autocommit=True)
        self.polls = 0

    def done(self) -> int:
        """Actions finished so far, every project's: the bench database holds only the
        bench's, and a run waits for its own count on top of what was there before it."""
        self.polls += 1
        row = self._conn.execute(self._SQL).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class Timings:
    to_start: list[tuple[float, float]]  # (created, started), epoch seconds
    finished: list[float]
    failed: int


_TIMINGS = sa.text(
    """
    SELECT extract(epoch FROM created_at) AS created, extract(epoch FROM started_at) AS started,
           extract(epoch FROM finished_at) AS finished, status
    FROM actions WHERE project_id LIKE :p AND created_at >= to_timestamp(:since)
    """
)


def timings(conn: Connection, prefix: str, since: float) -> Timings:
    """The run's actions: those of the projects under ``prefix`` enqueued from ``since``."""
    rows = conn.execute(_TIMINGS, {"p": prefix + "%", "since": since}).all()
    return Timings(
        [(float(r.created), float(r.started)) for r in rows if r.started is not None],
        [float(r.finished) for r in rows if r.finished is not None],
        sum(1 for r in rows if r.status != "succeeded"),
    )


_CHECK = sa.text(
    """
    WITH ordered AS (
        SELECT started_at, finished_at,
               lag(started_at) OVER w AS prev_started, lag(finished_at) OVER w AS prev_finished
        FROM actions WHERE project_id LIKE :p
        WINDOW w AS (PARTITION BY project_id ORDER BY seq)
    )
    SELECT count(*) FILTER (WHERE started_at < prev_finished) AS overlaps,
           count(*) FILTER (WHERE started_at < prev_started) AS out_of_order,
           count(*) FILTER (WHERE started_at IS NULL) AS never_started
    FROM ordered
    """
)


@dataclass(frozen=True)
class Violations:
    overlaps: int
    out_of_order: int
    never_started: int


def check(conn: Connection, prefix: str) -> Violations:
    row = conn.execute(_CHECK, {"p": prefix + "%"}).one()
    return Violations(int(row.overlaps), int(row.out_of_order), int(row.never_started))
