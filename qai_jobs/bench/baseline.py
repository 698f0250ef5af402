"""The plain Celery app `qai-jobs bench` compares against: what a user would write instead.

Nothing of ours: a Celery app of its own with only late acks, task events on (so Flower would
see every task, as it sees every action), results ignored and the default prefetch. It runs in
a worker process of its own (``celery -A qai_jobs.bench.baseline worker``) configured by the
environment variables below, and each task appends when it was sent and when it started to a
file in ``QAI_BENCH_BASELINE_DIR``: the bench learns of completions without adding broker or
database traffic to what it counts.
"""

from __future__ import annotations

import os
import time

from celery import Celery

BROKER_ENV = "QAI_BENCH_BASELINE_BROKER"
QUEUE_ENV = "QAI_BENCH_BASELINE_QUEUE"
DIR_ENV = "QAI_BENCH_BASELINE_DIR"
TASK = "bench_baseline.noop"

app = Celery("bench_baseline", broker=os.environ.get(BROKER_ENV, "redis://localhost:6379/0"))
app.conf.update(
    task_acks_late=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_ignore_result=True,
    task_default_queue=os.environ.get(QUEUE_ENV, "celery"),
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK)
def noop(sent: float) -> None:
    started = time.time()
    # One short line per task in O_APPEND mode: concurrent pool processes do not interleave.
    path = os.path.join(os.environ[DIR_ENV], f"done-{os.getpid()}.txt")
    with open(path, "a") as out:
        out.write(f"{sent} {started} {time.time()}\n")


def read_done(directory: str) -> list[tuple[float, float, float]]:
    """(sent, started, finished) of every task the baseline worker ran so far."""
    rows: list[tuple[float, float, float]] = []
    for name in os.listdir(directory):
        if not name.startswith("done-"):
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    rows.append((float(parts[0]), float(parts[1]), float(parts[2])))
    return rows
