"""Engines and transactions, with retries for a database that restarts under us.

One engine per URL and process: Celery's prefork pool forks children after the parent may have
opened connections, and a connection must never be shared across a fork.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

P = ParamSpec("P")
T = TypeVar("T")

_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = sa.create_engine(
                url,
                pool_size=5,
                max_overflow=10,
                pool_recycle=1800,
                # A restarted server invalidates the pool on the first error; callers retry.
                pool_pre_ping=False,
                connect_args={"connect_timeout": 5, "application_name": "qai-jobs"},
            )
            _engines[key] = engine
        return engine


def dispose_all() -> None:
    """Forget this process's engines without closing the parent's sockets (after fork)."""
    with _lock:
        for (pid, _), engine in list(_engines.items()):
            if pid != os.getpid():
                engine.dispose(close=False)
        _engines.clear()


def _is_transient_db_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


_retrying = retry(
    retry=retry_if_exception(_is_transient_db_error),
    wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
    stop=stop_after_delay(90),
    reraise=True,
)


def db_retry(fn: Callable[P, T]) -> Callable[P, T]:
    """Retry a whole transaction while Postgres restarts or drops connections.

    The first attempt is a plain call: tenacity's per-call set-up (a copy of the policy, its
    statistics) cost about 0.15 ms, a fifth of an enqueue, on every transaction that never
    fails. After a transient error the retries are tenacity's, from an immediate second
    attempt (on a fresh connection: the failed one was invalidated) to its backoff."""
    retried = _retrying(fn)

    @functools.wraps(fn)
    def first_then_retried(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _is_transient_db_error(exc):
                raise
        return retried(*args, **kwargs)

    return first_then_retried


def ping(engine: Engine) -> None:
    """One round trip: raises SQLAlchemyError when Postgres is unreachable."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def server_and_schema(engine: Engine) -> tuple[str, str | None]:
    """(server version, migration head); ProgrammingError when the schema was never migrated."""
    with engine.connect() as conn:
        version = conn.execute(sa.text("SHOW server_version")).scalar()
        head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return str(version), head
