"""Real Postgres and Redis for the test run: a fresh database and a Redis DB of its own.

CI must fail, not skip, when a service is missing: these helpers raise.
"""

from __future__ import annotations

import os
import time
import uuid

import redis
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "QAI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("QAI_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def require_services() -> None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        raise RuntimeError(
            f"Postgres is required for the tests and does not answer: {exc}"
        ) from exc
    try:
        redis.Redis.from_url(REDIS_BASE + "/0").ping()
    except Exception as exc:
        raise RuntimeError(f"Redis is required for the tests and does not answer: {exc}") from exc


def create_database() -> str:
    """A new, migrated database for this test run; returns its URL."""
    from qai_jobs.db.migrate import migrate

    name = f"qai_test_{uuid.uuid4().hex[:10]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    migrate(url)
    return url


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    engine = sa.create_engine(
        PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def claim_redis_db(wait_s: float = 120.0) -> tuple[str, redis.Redis]:
    """Claim a Redis database number no other concurrent test run uses; when all 15 are
    taken, wait for one: the processes of a module that just ended let go a moment later."""
    deadline = time.monotonic() + wait_s
    while True:
        claimed = _try_claim()
        if claimed is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if claimed is None:
        raise RuntimeError("no free Redis database for this test run (15 in use)")
    return claimed


def _try_claim() -> tuple[str, redis.Redis] | None:
    admin = redis.Redis.from_url(REDIS_BASE + "/0")
    for n in range(1, 16):
        key = f"qai-test-claim:{n}"
        holder = admin.get(key)
        if holder is not None and not os.path.exists(f"/proc/{int(holder)}"):
            admin.delete(key)  # left by a run that was killed before it could release it
        if _in_use(admin, n):
            continue  # a process another run left behind still talks to it: it would steal
        if admin.set(key, os.getpid(), nx=True, ex=3600):
            url = f"{REDIS_BASE}/{n}"
            r = redis.Redis.from_url(url)
            r.flushdb()
            return url, admin
    return None


# A client of a leftover worker polls (BRPOP, heartbeats) every second or so; a connection
# idle longer is one an ended module's objects left in a pool of this very run (the notify
# client's, a producer's broker pool), and must not keep the database from being claimed:
# enough such leftovers late in a run took all 15.
ACTIVE_WITHIN_S = 30


def _in_use(admin: redis.Redis, n: int) -> bool:
    """Whether a live client uses Redis DB ``n`` (a leftover worker, say)."""
    return any(
        int(c.get("db", -1)) == n and int(c.get("idle", 0)) < ACTIVE_WITHIN_S
        for c in admin.client_list()
    )


def release_redis_db(url: str, admin: redis.Redis) -> None:
    n = url.rsplit("/", 1)[1]
    redis.Redis.from_url(url).flushdb()
    admin.delete(f"qai-test-claim:{n}")
