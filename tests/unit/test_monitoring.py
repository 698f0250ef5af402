"""The drain's task events: a broker that is away costs the drain nothing and holds nothing."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
from celery import Celery

from qai_jobs import monitoring
from qai_jobs.monitoring import WorkerEvents


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_events_to_a_broker_that_is_away_are_dropped_not_raised_or_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Celery(broker=f"redis://127.0.0.1:{_closed_port()}/0")
    app.conf.broker_transport_options = {"max_retries": 0}
    app.conf.broker_connection_timeout = 1
    events = WorkerEvents(app, "bench@host")
    first = uuid.uuid4()
    with caplog.at_level(logging.WARNING, logger="qai_jobs.monitoring"):
        events.started("write", "p-1", first, 1)  # must not raise
        events.finished(first, "succeeded", 0.01)
        events.started("write", "p-1", uuid.uuid4(), 1)
        events.flush()
    assert "could not send task events" in caplog.text
    # The failed dispatcher is forgotten with what it held: nothing grows while Redis is away.
    assert not [k for k in monitoring._dispatchers if k[2] == "bench@host"]
    assert events._held == []
