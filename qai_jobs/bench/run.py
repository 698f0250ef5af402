"""`qai-jobs bench`: durable action throughput and latency beside bare Celery, in one run.

Both runs use the same broker, the same Celery settings (acks late, task events on) and a
worker of the same concurrency, so the ratio says what durability, ordering and Postgres cost.
The bench works in a database of its own (``<database>_bench``) and a queue of its own, so it
never touches real workspaces or competes with running workers.
"""

from __future__ import annotations

import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from qai_jobs.config import Settings
from qai_jobs.constants import BENCH_KEY, BENCH_NOOP_TASK, ActionStatus

Log = Callable[[str], None]

# Scenarios other modules contribute: name -> "module:function(settings, n, log) -> dict".
EXTRA_SCENARIOS = {
    "http": "qai_jobs.bench.http:run_http_scenario",
    "webhooks": "qai_jobs.bench.webhooks:run_webhook_scenario",
    "local": "qai_jobs.bench.local:run_local_scenario",
    "events": "qai_jobs.bench.events:run_events_scenario",
    "gateway": "qai_jobs.bench.gateway:run_gateway_scenario",
    "netns": "qai_jobs.bench.netns:run_netns_scenario",
    "ui": "qai_jobs.bench.ui:run_ui_scenario",
    "aio": "qai_jobs.bench.aio:run_aio_scenario",
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def bench_settings(settings: Settings) -> Settings:
    url = make_url(settings.database_url)
    bench_db = f"{url.database}_bench"
    return settings.model_copy(
        update={
            "database_url": url.set(database=bench_db).render_as_string(hide_password=False),
            "workspace_runtime": ["fake"],
            "workspace_callback_url": [],
        }
    )


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a bench subprocess: the bench's database and broker, fake provider."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "WORKSPACE_RUNTIME": "fake",
        "WORKSPACE_CALLBACK_URL": "",
        "WORKSPACE_QUEUE": settings.workspace_queue,
        "PYTHONUNBUFFERED": "1",
    }
    if settings.workspace_secret_key is not None:
        env["WORKSPACE_SECRET_KEY"] = settings.workspace_secret_key.get_secret_value()
    env.update(extra)
    return env


class Worker:
    """A real `qai-jobs worker` subprocess on the bench's own queue."""

    def __init__(
        self,
        settings: Settings,
        concurrency: int,
        queue: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ):
        # extra_env: e.g. the local scenario's runtime and workspace root
        env = process_env(settings, WORKSPACE_QUEUE=queue, **(extra_env or {}))
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qai_jobs",
                "worker",
                f"--concurrency={concurrency}",
                "--loglevel=WARNING",
                f"--hostname=bench-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, app: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench worker exited: {self.log_path.read_text()[-2000:]}")
            replies = app.control.ping(timeout=0.5)
            if replies:
                return
        raise TimeoutError("bench worker did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def _bare_celery(app: Any, redis_url: str, n: int, threads: int, log: Log) -> dict[str, Any]:
    import redis

    r = redis.Redis.from_url(redis_url)
    key = f"{BENCH_KEY}noop:{uuid.uuid4().hex}"
    log(f"bare Celery: {n} no-op tasks")
    sent: list[float] = []
    start = time.time()

    def send(i: int) -> None:
        t = time.time()
        app.send_task(BENCH_NOOP_TASK, kwargs={"key": key, "sent": t})
        sent.append(t)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, range(n)))
    while int(r.llen(key)) < n:
        time.sleep(0.005)
        if time.time() - start > 600:
            raise TimeoutError("bare Celery tasks did not finish")
    done = [float(x) for x in r.lrange(key, 0, -1)]
    r.delete(key)
    elapsed = max(done) - start
    return {"tasks": n, "seconds": elapsed, "per_second": n / elapsed}


def _durable(
    client: Any, engine: sa.Engine, n: int, projects: int, threads: int, log: Log
) -> dict[str, Any]:
    log(f"durable actions: {n} commands over {projects} projects")
    run_id = uuid.uuid4().hex[:6]
    names = [f"bench-{run_id}-{i}" for i in range(projects)]
    enqueue_times: list[float] = []
    start = time.time()

    def enqueue(i: int) -> None:
        t = time.perf_counter()
        client.command(names[i % projects], "true")
        enqueue_times.append(time.perf_counter() - t)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(enqueue, range(n)))
    query = sa.text(
        "SELECT count(*) FILTER (WHERE status IN ('succeeded','failed','cancelled')) AS done "
        "FROM actions WHERE project_id LIKE :p"
    )
    while True:
        with engine.connect() as conn:
            row = conn.execute(query, {"p": f"bench-{run_id}-%"}).one()
        if row.done >= n:
            break
        if time.time() - start > 900:
            raise TimeoutError(f"only {row.done}/{n} actions finished")
        time.sleep(0.01)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT extract(epoch FROM started_at - created_at) AS to_start, "
                "extract(epoch FROM finished_at - created_at) AS to_done, "
                "extract(epoch FROM finished_at) AS finished, status "
                "FROM actions WHERE project_id LIKE :p"
            ),
            {"p": f"bench-{run_id}-%"},
        ).all()
    failed = sum(1 for r in rows if r.status != ActionStatus.SUCCEEDED)
    elapsed = max(float(r.finished) for r in rows) - start
    return {
        "actions": n,
        "projects": projects,
        "failed": failed,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "enqueue": summarize(enqueue_times),
        "enqueue_to_start": summarize([float(r.to_start) for r in rows if r.to_start is not None]),
        "enqueue_to_done": summarize([float(r.to_done) for r in rows if r.to_done is not None]),
    }


def _wait_latency(client: Any, engine: sa.Engine, samples: int, log: Log) -> dict[str, Any]:
    """How long after an action finishes (its commit) does wait() return? One at a time."""
    log(f"wait() latency: {samples} sequential actions")
    project = f"bench-wait-{uuid.uuid4().hex[:6]}"
    gaps: list[float] = []
    enqueues: list[float] = []
    for _ in range(samples):
        t = time.perf_counter()
        handle = client.command(project, "true")
        enqueues.append(time.perf_counter() - t)
        handle.wait(60)
        returned = time.time()
        with engine.connect() as conn:
            finished = conn.execute(
                sa.text("SELECT extract(epoch FROM finished_at) FROM actions WHERE id = :id"),
                {"id": handle.id},
            ).scalar_one()
        gaps.append(max(0.0, returned - float(finished)))
    return {
        "samples": samples,
        "after_finish": summarize(gaps),
        "enqueue_alone": summarize(enqueues),
    }


def run_bench(
    settings: Settings,
    *,
    n_actions: int,
    projects: int,
    concurrency: int,
    scenarios: list[str],
    log: Log,
) -> dict[str, Any]:
    from qai_jobs.client.direct import WorkspaceClient
    from qai_jobs.db.migrate import migrate

    queue = f"qai-bench-{uuid.uuid4().hex[:8]}"
    bsettings = bench_settings(settings).model_copy(update={"workspace_queue": queue})
    from qai_jobs.celery_app import app, configure

    configure(bsettings)
    app.conf.task_default_queue = queue
    log(f"bench database {make_url(bsettings.database_url).database}, queue {queue}")
    migrate(bsettings.database_url)
    client = WorkspaceClient(bsettings)
    engine = client.engine
    with engine.begin() as conn:
        conn.execute(
            sa.text("TRUNCATE actions, snapshots, webhook_events, workspace_files, workspaces")
        )
    report: dict[str, Any] = {"concurrency": concurrency, "cpus": os.cpu_count()}
    logs_dir = Path(tempfile.mkdtemp(prefix="qai-bench-"))
    if "pipeline" in scenarios:
        worker = Worker(bsettings, concurrency, queue, logs_dir / "worker.log")
        try:
            worker.wait_ready(app)
            _bare_celery(
                app, bsettings.redis_url, min(200, n_actions), 4, lambda m: None
            )  # warm-up
            _durable(client, engine, min(200, n_actions), projects, 4, lambda m: None)
            report["bare_celery"] = _bare_celery(app, bsettings.redis_url, n_actions, 4, log)
            report["durable"] = _durable(client, engine, n_actions, projects, 4, log)
            report["wait"] = _wait_latency(client, engine, 200, log)
        finally:
            worker.stop()
        report["ratio"] = report["durable"]["per_second"] / report["bare_celery"]["per_second"]
    for name in scenarios:
        if name in EXTRA_SCENARIOS:
            module_name, func = EXTRA_SCENARIOS[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                log(f"scenario {name}: not available in this build")
                continue
            report[name] = getattr(module, func)(bsettings, n_actions, log)
        elif name != "pipeline":
            log(f"unknown scenario {name!r}; known: pipeline, {', '.join(EXTRA_SCENARIOS)}")
    return report


def _lat(label: str, stats: dict[str, float], note: str = "") -> str:
    return f"  {label:22} p50 {stats['p50_ms']:7.2f} ms   p99 {stats['p99_ms']:7.2f} ms{note}"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"qai-jobs bench  (worker concurrency {report['concurrency']}, {report['cpus']} CPUs)"]
    if "bare_celery" in report:
        bare, dur, wait = report["bare_celery"], report["durable"], report["wait"]
        lines += [
            f"  bare Celery no-op      {bare['per_second']:8.0f} tasks/s   "
            f"({bare['tasks']} in {bare['seconds']:.2f}s)",
            f"  durable actions        {dur['per_second']:8.0f} actions/s "
            f"({dur['actions']} over {dur['projects']} projects in {dur['seconds']:.2f}s, "
            f"{dur['failed']} failed)",
            f"  ratio durable/bare     {report['ratio']:8.2f}",
            _lat("enqueue, one producer", wait["enqueue_alone"]),
            _lat("enqueue, 4 producers", dur["enqueue"], "   (beside the busy worker)"),
            _lat("enqueue -> start", dur["enqueue_to_start"]),
            _lat("enqueue -> done", dur["enqueue_to_done"]),
            _lat("wait() after finish", wait["after_finish"]),
        ]
    for key, value in report.items():
        if key in ("concurrency", "cpus", "bare_celery", "durable", "wait", "ratio"):
            continue
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)
