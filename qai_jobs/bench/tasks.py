"""The bare-Celery baseline of `qai-jobs bench`: a no-op that records when it ran."""

from __future__ import annotations

import time

from qai_jobs.celery_app import app
from qai_jobs.constants import BENCH_NOOP_TASK
from qai_jobs.notify import client


@app.task(name=BENCH_NOOP_TASK)
def noop(key: str, sent: float) -> None:
    from qai_jobs.celery_app import current_settings

    client(current_settings().redis_url).rpush(key, time.time())
