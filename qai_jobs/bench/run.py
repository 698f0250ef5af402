"""`qai-jobs bench`: durable action throughput and latency beside bare Celery, in one run.

The pipeline scenario (``qai_jobs.bench.pipeline``) compares durable actions with the plain
Celery app a user would write instead (``qai_jobs.bench.baseline``), on the same broker and
with workers of the same concurrency, so the ratio says what durability, ordering and Postgres
cost; other scenarios are contributed by their own modules.
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
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from qai_jobs.config import Settings
from qai_jobs.db.synthetic import clear

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


class Subprocess:
    """A worker subprocess of the bench: ready once it answers a ping, stopped with SIGTERM."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: Any

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


class Worker(Subprocess):
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


def run_bench(
    settings: Settings,
    *,
    n_actions: int,
    projects: list[int],
    concurrency: int,
    scenarios: list[str],
    log: Log,
    runs: int = 1,
    docs: Path | None = None,
) -> dict[str, Any]:
    """Run the scenarios; the pipeline once per project count and run (medians reported).
    ``docs``: where to write the curve (``benchmarks.md`` and its plot)."""
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
    with client.engine.begin() as conn:
        clear(conn)
    report: dict[str, Any] = {"concurrency": concurrency, "cpus": os.cpu_count(), "runs": runs}
    logs_dir = Path(tempfile.mkdtemp(prefix="qai-bench-"))
    if "pipeline" in scenarios:
        from qai_jobs.bench.curve import median_point, write_docs
        from qai_jobs.bench.pipeline import run_pipeline

        curve = []
        for count in projects:
            done = [
                run_pipeline(
                    client,
                    bsettings,
                    app,
                    n=n_actions,
                    projects=count,
                    concurrency=concurrency,
                    logs_dir=logs_dir,
                    log=log,
                )
                for _ in range(runs)
            ]
            curve.append(median_point(done))
        report["curve"] = curve
        report.update({k: curve[0][k] for k in ("baseline", "durable", "ratio", "checker")})
        if docs is not None and len(curve) > 1:
            report["docs"] = [str(p) for p in write_docs(report, docs)]
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
    return f"  {label:30} p50 {stats['p50_ms']:7.2f} ms   p99 {stats['p99_ms']:7.2f} ms{note}"


def _counts(label: str, per: dict[str, Any]) -> str:
    return (
        f"  {label:30} {per['pg_commits']:5.2f} commits  {per['pg_rollbacks']:5.2f} rollbacks  "
        f"{per['redis_commands']:6.2f} Redis commands  {per.get('wal_syncs', 0):5.2f} WAL syncs"
    )


def _cpu(label: str, per: dict[str, Any]) -> str:
    used = per.get("cpu_ms")
    if not used:
        return f"  {label:30} (not measured: no /proc)"
    parts = ", ".join(f"{role} {ms:.2f}" for role, ms in used.items() if role != "total")
    return f"  {label:30} {used['total']:5.2f} ms ({parts})"


def _fake_line(per: dict[str, Any]) -> str:
    fake = per.get("fake_provider_redis")
    if fake is None:
        return "  fake provider's Redis commands: on the broker's server, included above"
    return f"  fake provider (own Redis server, not counted above) {fake:6.2f} Redis commands"


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"qai-jobs bench  (worker concurrency {report['concurrency']}, {report['cpus']} CPUs, "
        f"medians of {report['runs']} run(s))"
    ]
    if "curve" in report:
        base, dur = report["baseline"], report["durable"]
        lines += [
            f"  plain Celery no-op             {base['per_second']:8.0f} tasks/s   "
            f"({base['tasks']} in {base['seconds']:.2f}s, one producer)",
            f"  durable write actions          {dur['per_second']:8.0f} actions/s "
            f"({dur['actions']} over {dur['projects']} projects in {dur['seconds']:.2f}s, "
            f"{dur['failed']} failed)",
            f"  ratio durable/plain Celery     {report['ratio']:8.2f}",
            _lat("enqueue (saturated run)", dur["enqueue"]),
            _lat("enqueue (half load)", dur["half_load"]["enqueue"]),
            _lat("enqueue -> start, half load", dur["half_load"]["enqueue_to_start"]),
            _lat("plain Celery, same", base["half_load"]["enqueue_to_start"]),
            _lat("plain Celery enqueue", base["enqueue"]),
            _counts("per action", dur["per_action"]),
            _counts("per plain Celery task", base["per_task"]),
            _fake_line(dur["per_action"]),
            _cpu("CPU per action", dur["per_action"]),
            _cpu("CPU per plain Celery task", base["per_task"]),
            "  checker: {overlaps} overlapping runs, {out_of_order} out-of-order starts, "
            "{never_started} never started".format(**report["checker"]),
        ]
        if len(report["curve"]) > 1:
            lines.append("  projects   durable/s   plain/s   ratio   commits  rollbacks  Redis")
            for point in report["curve"]:
                per = point["durable"]["per_action"]
                lines.append(
                    f"  {point['projects']:8}   {point['durable']['per_second']:9.0f}   "
                    f"{point['baseline']['per_second']:7.0f}   {point['ratio']:5.2f}   "
                    f"{per['pg_commits']:7.2f}  {per['pg_rollbacks']:9.2f}  "
                    f"{per['redis_commands']:5.1f}"
                )
    skip = ("concurrency", "cpus", "runs", "curve", "baseline", "durable", "ratio", "checker")
    for key, value in report.items():
        if key not in skip:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)
