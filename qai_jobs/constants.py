"""The vocabulary every layer shares: statuses, task and sweep names, Redis key prefixes.

Spelt once here so that a status, a task name or a key cannot drift between the producer, the
worker and the operator tools. Statuses are ``StrEnum`` members: they compare equal to, and
serialise as, the plain strings stored in Postgres and sent on the wire.
"""

from __future__ import annotations

import enum


class ActionStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[str] = frozenset(
    {ActionStatus.SUCCEEDED, ActionStatus.FAILED, ActionStatus.CANCELLED}
)


class WorkspaceStatus(enum.StrEnum):
    NEW = "new"  # the row exists (an action was enqueued), no sandbox yet
    PROVISIONING = "provisioning"
    READY = "ready"
    SLEEPING = "sleeping"
    ERROR = "error"
    DESTROYED = "destroyed"


# Celery task names: the public action tasks are ``qai_jobs.<kind>`` (see schemas.KINDS).
TASK_PREFIX = "qai_jobs."
DRAIN_TASK = "qai_jobs.drain"
DELIVER_TASK = "qai_jobs.webhooks.deliver"
SWEEP_TASK_PREFIX = "qai_jobs.beat."
BENCH_NOOP_TASK = "qai_jobs.bench.noop"
# Set on the messages of producers that record the action before sending it (ours).
RECORDED_HEADER = "qai_recorded"

# The beat sweeps, in the order beat schedules them.
SWEEPS: tuple[str, ...] = ("idle", "recover", "webhooks", "prune", "orphans")


def action_task_name(kind: str) -> str:
    return f"{TASK_PREFIX}{kind}"


def sweep_task_name(name: str) -> str:
    return f"{SWEEP_TASK_PREFIX}{name}"


def sweep_queue(queue: str) -> str:
    """The queue beat's sweeps travel on, beside the actions' ``queue``."""
    return f"{queue}.sweeps"


# Redis keys. Redis is a fast, forgetful transport: nothing under these keys is the truth.
ACTION_CHANNEL = "qai:action:"  # + action id: pub/sub of progress, output and done
BREAKER_KEY = "qai:breaker:"  # + provider: shared circuit breaker state
FAKE_KEY = "qai:fake:"  # the fake provider's sandboxes, faults and journal
METRICS_CARRIED_KEY = "qai:metrics:carried"  # counters carried over pruned rows
SWEEP_CLAIM_KEY = "qai:sweep:"  # + sweep name: one run per period
SWEEPS_LAST_KEY = "qai:sweeps:last"  # hash: sweep name -> last run (epoch seconds)
SWEEP_RUNS_KEY = "qai:sweeps:runs:"  # + sweep name: recent runs, newest first
BENCH_KEY = "qai:bench:"

# How long an inbound provider hook's event id is remembered (deduplication); an E2B event
# older than that, whose signature has no time in it, is a replay and is ignored.
PROVIDER_EVENTS_KEPT_SECONDS = 7 * 86400


def host_queue(queue: str, host_id: str) -> str:
    """The queue only ``host_id``'s workers consume: the drains of the local workspaces it holds."""
    return f"{queue}.host.{host_id}"
