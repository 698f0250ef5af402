"""The pipeline scenario: durable `write` actions against a plain Celery app, as a user compares.

Each side gets a worker process of the same concurrency (ours: `qai-jobs worker`; theirs: the
plain app of ``qai_jobs.bench.baseline``), one producer thread, and a timed window from the
first enqueue to the last completion. Around the saturated run the bench counts Postgres
transactions and Redis commands; a second run, paced at about half the throughput just
measured, gives enqueue->start latency without a backlog. A checker then reads every action's
timestamps from Postgres: overlapping runs within a project or out-of-order starts fail the bench.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from qai_jobs.bench import baseline, cpu
from qai_jobs.bench.counts import Counter
from qai_jobs.bench.fakestore import FakeStoreServer
from qai_jobs.bench.run import Log, Subprocess, Worker, summarize
from qai_jobs.config import Settings
from qai_jobs.db import benchcheck

TIMEOUT_S = 900.0


class BaselineWorker(Subprocess):
    """``celery -A qai_jobs.bench.baseline worker``: nothing of ours but the no-op."""

    def __init__(self, redis_url: str, concurrency: int, log_path: Path):
        self.queue = f"bench-baseline-{uuid.uuid4().hex[:8]}"
        self.dir = tempfile.mkdtemp(prefix="qai-bench-baseline-")
        env = {
            **os.environ,
            baseline.BROKER_ENV: redis_url,
            baseline.QUEUE_ENV: self.queue,
            baseline.DIR_ENV: self.dir,
        }
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "qai_jobs.bench.baseline",
                "worker",
                f"--concurrency={concurrency}",
                "--loglevel=WARNING",
                f"--hostname=bench-baseline-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        baseline.app.conf.update(broker_url=redis_url, task_default_queue=self.queue)

    def run(self, n: int, rate: float | None = None) -> dict[str, Any]:
        """Send ``n`` no-ops from one thread (at ``rate`` per second if given), wait for all."""
        before = len(baseline.read_done(self.dir))
        start = time.time()
        sends = _send_all(
            n,
            rate,
            lambda i: baseline.app.send_task(
                baseline.TASK, kwargs={"sent": time.time()}, queue=self.queue
            ),
        )
        while len(done := baseline.read_done(self.dir)) < before + n:
            if time.time() - start > TIMEOUT_S:
                raise TimeoutError("the baseline's tasks did not finish")
            time.sleep(0.01)
        mine = sorted(done, key=lambda row: row[0])[before:]
        elapsed = max(row[2] for row in mine) - start
        return {
            "tasks": n,
            "seconds": elapsed,
            "per_second": n / elapsed,
            "enqueue": summarize(sends),
            "enqueue_to_start": summarize([max(0.0, s - sent) for sent, s, _ in mine]),
        }


def _send_all(n: int, rate: float | None, send: Callable[[int], object]) -> list[float]:
    """Call ``send(i)`` for each of ``n`` from this one thread, at ``rate`` per second if
    given; returns how long each call took (the enqueue latency)."""
    sends: list[float] = []
    start = time.time()
    for i in range(n):
        if rate and (delay := start + i / rate - time.time()) > 0:
            time.sleep(delay)
        t = time.perf_counter()
        send(i)
        sends.append(time.perf_counter() - t)
    return sends


class Durable:
    """Our side: `write` actions on the fake provider through a real `qai-jobs worker`."""

    def __init__(self, client: Any, engine: sa.Engine, settings: Settings, projects: int):
        self.client = client
        self.engine = engine
        self.settings = settings
        self.projects = projects
        self.prefix = f"b{uuid.uuid4().hex[:6]}-"
        self.names = [f"{self.prefix}{i}" for i in range(projects)]
        self.sent = 0

    def run(self, n: int, rate: float | None = None, tag: str = "") -> dict[str, Any]:
        prefix = f"{self.prefix}{tag}"
        names = [f"{prefix}{i}" for i in range(self.projects)] if tag else self.names
        poller = benchcheck.DonePoller(self.settings.database_url)
        try:
            return self._run(n, rate, prefix, names, poller)
        finally:
            poller.close()

    def _run(
        self,
        n: int,
        rate: float | None,
        prefix: str,
        names: list[str],
        poller: benchcheck.DonePoller,
    ) -> dict[str, Any]:
        already = poller.done()
        start = time.time()
        sends = _send_all(
            n, rate, lambda i: self.client.write(names[i % len(names)], {"bench.txt": str(i)})
        )
        while poller.done() < already + n:
            if time.time() - start > TIMEOUT_S:
                raise TimeoutError("the durable actions did not finish")
            time.sleep(0.02)
        with self.engine.connect() as conn:
            got = benchcheck.timings(conn, prefix, start - 0.5)
        if len(got.finished) < n:  # the poller counts the whole bench database's actions
            raise RuntimeError(f"{len(got.finished)} of {n} actions finished: another run?")
        elapsed = max(got.finished) - start
        return {
            "actions": n,
            "projects": len(names),
            "failed": got.failed,
            "seconds": elapsed,
            "per_second": n / elapsed,
            "enqueue": summarize(sends),
            "enqueue_to_start": summarize([max(0.0, s - c) for c, s in got.to_start]),
            "polls": poller.polls,
        }

    def check(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            found = benchcheck.check(conn, self.prefix)
        return {
            "overlaps": found.overlaps,
            "out_of_order": found.out_of_order,
            "never_started": found.never_started,
        }


def run_pipeline(
    client: Any,
    settings: Settings,
    app: Any,
    *,
    n: int,
    projects: int,
    concurrency: int,
    logs_dir: Path,
    log: Log,
) -> dict[str, Any]:
    """One comparison at one project count: the baseline, then ours, each on its own worker."""
    # Backends report their transaction counts late unless they exit: close the producer's
    # connections (set-up, an earlier comparison), so what they did is not counted here.
    client.engine.dispose()
    counter = Counter(settings.database_url, settings.redis_url)
    report: dict[str, Any] = {"projects": projects, "actions": n}
    base = BaselineWorker(settings.redis_url, concurrency, logs_dir / "baseline-worker.log")
    try:
        base.wait_ready(baseline.app)
        base.run(min(200, n))  # warm-up
        log(f"plain Celery: {n} no-op tasks, one producer")
        before = counter.read(end=False)
        meter = cpu.CpuMeter(
            {
                "worker": lambda: cpu.tree(base.proc.pid),
                "postgres": cpu.postgres_server(settings.database_url),  # idle: a floor
                "redis": cpu.redis_server(settings.redis_url),
                "bench": lambda: [os.getpid()],
            }
        )
        meter.start()
        report["baseline"] = base.run(n)
        used = meter.stop()
        spent = counter.read(end=True).minus(before)
        report["baseline"]["per_task"] = spent.per(n)
        report["baseline"]["per_task"]["cpu_ms"] = cpu.per_action(used, n)
        rate = report["baseline"]["per_second"] / 2
        report["baseline"]["half_load"] = base.run(_paced_n(rate, n), rate)
    finally:
        base.stop()
    fake = FakeStoreServer()
    worker = Worker(
        settings, concurrency, settings.workspace_queue, logs_dir / "worker.log", fake.env()
    )
    durable = Durable(client, client.engine, settings, projects)
    try:
        worker.wait_ready(app)
        log(f"durable: warming up {min(projects, n)} project(s)")
        durable.run(min(projects, n), tag="")  # every project has its sandbox before the clock
        log(f"durable: {n} write actions over {projects} project(s), one producer")
        before, fake_before = counter.read(end=False), fake.commands()
        roles = {
            "worker": lambda: cpu.tree(worker.proc.pid),
            "postgres": cpu.postgres_server(settings.database_url),
            "redis": cpu.redis_server(settings.redis_url),
            "bench": lambda: [os.getpid()],
        }
        if fake.proc is not None:
            roles["fake_provider_redis"] = lambda: [fake.proc.pid] if fake.proc else []
        meter = cpu.CpuMeter(roles)
        meter.start()
        report["durable"] = durable.run(n)
        # Messages whose actions an earlier drain already ran are still being taken: their
        # work is these actions' cost too, so the window for the counts closes after them
        # (the throughput above is still timed to the last action's end).
        _wait_for_empty_queue(settings.redis_url, settings.workspace_queue)
        used = meter.stop()
        spent = counter.read(end=True).minus(before)
        per = spent.per(n, own_commits=report["durable"]["polls"])
        # The sandbox service's own traffic, apart (None: it shared the broker's server).
        per["fake_provider_redis"] = (fake.commands() - fake_before) / n if fake.url else None
        per["cpu_ms"] = cpu.per_action(used, n)
        report["durable"]["per_action"] = per
        rate = report["durable"]["per_second"] / 2
        log(f"durable: half load, {rate:.0f} actions/s")
        report["durable"]["half_load"] = durable.run(_paced_n(rate, n), rate)
    finally:
        worker.stop()
        fake.stop()
    report["checker"] = durable.check()
    report["ratio"] = report["durable"]["per_second"] / report["baseline"]["per_second"]
    return report


def _wait_for_empty_queue(redis_url: str, queue: str, timeout: float = TIMEOUT_S) -> None:
    """Until the broker's list for ``queue`` is empty (the worker took every message), and a
    moment more for the last ones it took to leave."""
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while r.llen(queue) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not empty {queue}")
        time.sleep(0.05)
    time.sleep(0.5)


def _paced_n(rate: float, n: int) -> int:
    """About three seconds at ``rate``, at least 30 and at most ``n``."""
    return max(1, min(n, max(30, int(rate * 3))))


def violations(report: dict[str, Any]) -> int:
    checker = report.get("checker", {})
    return int(checker.get("overlaps", 0)) + int(checker.get("out_of_order", 0))
