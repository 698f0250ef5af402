"""Periodic jobs: recovery that does not depend on the broker, and (beat) the fleet sweeps.

Redis is a fast, forgetful transport: a message may be lost (Redis wiped) or stuck unacked with
a dead worker until the visibility timeout. Recovery finds such work from Postgres and sends a
fresh "project P has work" message; duplicates are harmless because only the lease holder runs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from qai_jobs.config import Settings
from qai_jobs.constants import SWEEP_CLAIM_KEY, SWEEP_RUNS_KEY, SWEEPS_LAST_KEY
from qai_jobs.db import maintenance, recovery
from qai_jobs.db.session import engine_for
from qai_jobs.notify import client as redis_client
from qai_jobs.worker.drain import Dispatch

log = logging.getLogger("qai_jobs.sweeps")


def stale_after(settings: Settings) -> float:
    """How long a queued action may wait for its message before it is sent again."""
    return max(settings.lease_seconds, 2.0)


def ensure_bindings(settings: Settings) -> bool:
    """Re-declare our queues if Redis lost kombu's binding keys (a restart without persistence
    wipes them, and publishing then drops every message silently). True if it had to."""
    from qai_jobs.celery_app import app

    r = redis_client(settings.redis_url)
    queues = app.amqp.queues
    # kombu keeps one set per exchange, of "<routing key>\x06\x16<pattern>\x06\x16<queue>".
    missing = [
        name
        for name, q in queues.items()
        if not r.sismember(
            f"_kombu.binding.{q.exchange.name if q.exchange else ''}",
            "\x06\x16".join([q.routing_key or "", "", name]),
        )
    ]
    if not missing:
        return False
    with app.connection_for_write() as conn:
        for name in missing:
            app.amqp.queues[name](conn.default_channel).declare()
    log.warning("re-declared broker bindings for %s (Redis lost them)", ", ".join(missing))
    return True


def recover(settings: Settings, dispatch: Dispatch) -> dict[str, Any]:
    ensure_bindings(settings)
    projects = recovery.stale_projects(engine_for(settings.database_url), stale_after(settings))
    for project_id in sorted(projects):
        dispatch.kick(project_id, 0)
    if projects:
        log.info("recovery re-sent work for %d project(s)", len(projects))
    return {"kicked": len(projects)}


# One run per aligned period, on Redis's clock so processes on different hosts agree on the
# period boundaries: the first caller of period N sets the key, everyone else in N is refused.
_CLAIM_PERIOD_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = tonumber(ARGV[1])
local n = math.floor(now_ms / period)
if redis.call('SET', KEYS[1] .. ':' .. n, now_ms, 'NX', 'PX', math.max(1000, period * 2)) then
  return {n, now_ms}
end
return false
"""


def claim_period(settings: Settings, name: str, period: float) -> tuple[int, float] | None:
    """(period number, Redis time in seconds) for exactly one caller per period across all
    processes; None for everyone else, and when Redis is unreachable (skip, never double-run)."""
    try:
        r = redis_client(settings.redis_url)
        got = r.eval(_CLAIM_PERIOD_LUA, 1, SWEEP_CLAIM_KEY + name, max(1, int(period * 1000)))  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return None
    if not got:
        return None
    return int(got[0]), int(got[1]) / 1000


def once_per_period(settings: Settings, name: str, period: float) -> bool:
    """True for exactly one caller per period across all processes. The lock is left to expire
    rather than released, so a period's work is never done twice."""
    return claim_period(settings, name, period) is not None


def start_watchdog(settings: Settings, dispatch: Callable[[], Dispatch]) -> threading.Thread:
    """In every worker: run recovery every heartbeat, so a lost worker's projects move on
    within a few heartbeats even when no beat process runs; and, once per sweep period on each
    host, the local provider's orphan sweep."""
    from qai_jobs.worker import fleet

    period = settings.workspace_heartbeat_seconds

    def loop() -> None:
        stop = threading.Event()
        fleet.report(settings, fresh=True)
        if "local" in settings.workspace_runtime:
            try:
                # First of all: a host coming back stops what it still runs of workspaces
                # that moved away while it was gone.
                local_orphans(settings)
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                log.warning("local orphan sweep at start: %s", type(exc).__name__)
        while not stop.wait(period):
            fleet.report(settings)
            try:
                if once_per_period(settings, "recover-watchdog", period):
                    recover(settings, dispatch())
            except (sa.exc.SQLAlchemyError, redis.RedisError, OSError) as exc:
                log.warning("recovery watchdog: %s", type(exc).__name__)
            try:
                if "local" in settings.workspace_runtime:
                    # Each host's own processes: no other host's worker can see them.
                    name = local_sweep_name(settings)
                    run_sweep(settings, name, lambda: local_orphans(settings))
            except (sa.exc.SQLAlchemyError, redis.RedisError, OSError) as exc:
                log.warning("local orphan sweep: %s", type(exc).__name__)

    thread = threading.Thread(target=loop, name="qai-watchdog", daemon=True)
    thread.start()
    return thread


# --- the beat sweeps -------------------------------------------------------------------------


RUN_LOG_LENGTH = 1000


def run_sweep(settings: Settings, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` if this is the first call of the period for ``name``, and record the run
    (period number and time, in Redis) so operators and tests can count runs per period."""
    claimed = claim_period(settings, name, settings.workspace_sweep_seconds)
    if claimed is None:
        return {"sweep": name, "skipped": "already ran this period"}
    period, at = claimed
    try:
        r = redis_client(settings.redis_url)
        pipe = r.pipeline(transaction=False)
        pipe.hset(SWEEPS_LAST_KEY, name, f"{at:.3f}")
        pipe.lpush(SWEEP_RUNS_KEY + name, f"{period}:{at:.3f}")
        pipe.ltrim(SWEEP_RUNS_KEY + name, 0, RUN_LOG_LENGTH - 1)
        pipe.execute()
    except redis.RedisError:
        pass  # the record is for observation only
    result = work()
    done = ("slept", "kicked", "sent", "actions", "events", "terminated", "stopped")
    if any(result.get(k) for k in done):
        log.info("sweep %s: %s", name, result)
    return {"sweep": name, **result}


def idle(settings: Settings, limit: int = 500) -> dict[str, Any]:
    """Sleep workspaces idle for WORKSPACE_INACTIVITY_MINUTES, as ordinary `sleep` actions
    (so they queue behind anything enqueued meanwhile, like every other action)."""
    from qai_jobs.client.direct import WorkspaceClient

    engine = engine_for(settings.database_url)
    rows = maintenance.idle_workspaces(engine, settings.inactivity_seconds, limit)
    client = WorkspaceClient(settings)
    for project_id, last_activity_at in rows:
        idle_sleep(client, project_id, last_activity_at)
    # Sent before the task returns: a pool child may be recycled without an interpreter exit.
    client.flush(10)
    return {"slept": len(rows)}


def idle_sleep(client: Any, project_id: str, idle_since: datetime) -> Any:
    """The idle sweep's sleep of one workspace found idle since ``idle_since``.

    The idempotency key names the idle spell, so sweeps that overlap, or a sweep that repeats
    before the sleep ran, enqueue one sleep per spell. The sleep carries the spell too, and does
    nothing if the workspace saw activity after it: an action may run between the sweep's
    read and the sleep (starting a dev server the sleep would stop), a preview request may
    arrive through the gateway."""
    return client.sleep(
        project_id,
        idempotency_key=f"idle-sleep:{idle_since.isoformat()}",
        idle_since=idle_since,
    )


def webhooks(settings: Settings, send: Callable[[list[str]], None]) -> dict[str, Any]:
    """Send delivery tasks for due pending webhook rows (lost messages, long retry delays)."""
    from qai_jobs.db.outbox import due_events

    due = due_events(engine_for(settings.database_url))
    if due:
        send(due)
    return {"sent": len(due)}


def prune(settings: Settings, batch: int = 5000, max_batches: int = 20) -> dict[str, Any]:
    """Delete finished actions and settled webhook rows older than the retention period, and
    file blobs no workspace's record references.

    What is deleted is folded into the metrics' carried totals first, so counters served from
    Postgres never go backwards because history was pruned.
    """
    from qai_jobs.metrics import carry_pruned

    keep = settings.workspace_action_retention_days * 86400
    engine = engine_for(settings.database_url)
    actions = events = 0
    for _ in range(max_batches):
        gone_actions, gone_events = maintenance.prune_batch(engine, keep, batch)
        carry_pruned(settings, gone_actions, gone_events)
        actions += len(gone_actions)
        events += len(gone_events)
        if len(gone_actions) < batch and len(gone_events) < batch:
            break
    from qai_jobs.constants import PROVIDER_EVENTS_KEPT_SECONDS
    from qai_jobs.db import file_record, inbound

    seen = inbound.prune(engine, PROVIDER_EVENTS_KEPT_SECONDS)
    # File content no workspace's record references any more (overwritten, deleted, destroyed).
    blobs = freed = 0
    for _ in range(max_batches):
        n, size = file_record.collect_garbage(engine, batch)
        blobs, freed = blobs + n, freed + size
        if n < batch:
            break
    return {
        "actions": actions,
        "events": events,
        "provider_events": seen,
        "blobs": blobs,
        "blob_bytes": freed,
    }


def orphans(settings: Settings) -> dict[str, Any]:
    """Terminate this deployment's cloud sandboxes that no workspace owns (they keep billing).

    Owned ids are read after listing, in one snapshot with the projects that have work in
    flight, which own every sandbox tagged with them: an ensure creates its sandbox before the
    row that names it commits (read apart, an ensure committing in between would be in neither).
    """
    if not any(name in ("modal", "e2b") for name in settings.workspace_runtime):
        return {"skipped": "no cloud provider configured"}
    from qai_jobs.providers import orphans as cloud
    from qai_jobs.providers.select import get_provider

    listed, failed = cloud.list_tagged(settings)
    engine = engine_for(settings.database_url)
    owned, busy = maintenance.owned_sandboxes(engine, [sb.sandbox_id for sb in listed])
    owned |= {(sb.provider, sb.sandbox_id) for sb in listed if sb.project_id in busy}
    orphans = cloud.find_orphans(listed, owned, settings.deployment_id)
    report = cloud.SweepReport(orphans, failed_providers=failed)
    cloud.terminate(report, lambda name: get_provider(name, settings))
    return {
        "terminated": len(report.terminated),
        "failed_providers": failed,
        "errors": len(report.errors),
    }


def local_sweep_name(settings: Settings) -> str:
    """One local orphan sweep per period for each host and installation (WORKSPACE_ROOT)."""
    root = str(Path(settings.workspace_root).expanduser().resolve())
    digest = hashlib.sha256(root.encode()).hexdigest()[:12]
    return f"local-orphans:{settings.workspace_host_id}:{digest}"


def local_orphans(settings: Settings) -> dict[str, Any]:
    """Stop local sandbox processes that no workspace row owns, or whose tree is gone."""
    from qai_jobs.providers.local import orphans as local
    from qai_jobs.providers.local.store import PortRegistry

    root = Path(settings.workspace_root).expanduser().resolve()
    if not root.is_dir():
        return {"stopped": 0}
    ports = PortRegistry(root, settings.workspace_local_port_min, settings.workspace_local_port_max)
    disks = local.sweep_disks(root, ports)
    found = local.sandbox_processes(root)  # first: a sandbox made after this is not in it
    if not found:
        return {"stopped": 0, "disks": len(disks)}
    from qai_jobs.db import hosts

    engine = engine_for(settings.database_url)
    owned, busy = maintenance.owned_sandboxes(engine, list(found))
    with engine.connect() as conn:
        moved, elsewhere = hosts.elsewhere(conn, settings.workspace_host_id)
    names = {sandbox_id for provider, sandbox_id in owned if provider == "local"} - elsewhere
    busy = set(busy) - moved
    stopped = local.sweep(root, found, names, busy, ports, settings.deployment_id)
    return {"stopped": len(stopped), "sandboxes": [s.sandbox for s in stopped], "disks": len(disks)}
