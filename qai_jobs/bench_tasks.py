"""The bare-Celery baseline of `qai-jobs bench`: a no-op that records when it ran."""

from __future__ import annotations

import time

from .celery_app import app
from .notify import client


@app.task(name="qai_jobs.bench.noop")
def noop(key: str, sent: float) -> None:
    from .celery_app import current_settings

    client(current_settings().redis_url).rpush(key, time.time())
