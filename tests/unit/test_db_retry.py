"""db_retry: a transaction that never fails is a plain call; a transient error is retried (by
tenacity's policy), any other error is not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from qai_jobs.db.session import db_retry


def test_transient_errors_are_retried_until_it_succeeds() -> None:
    calls: list[int] = []

    @db_retry
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return x * 2

    assert flaky(21) == 42
    assert calls == [21, 21, 21]
    assert flaky.__name__ == "flaky"


def test_other_errors_are_raised_at_once() -> None:
    calls: list[int] = []

    @db_retry
    def refused() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        refused()
    assert calls == [1]
