"""Celery settings for qai-jobs (loaded lazily by ``qai_jobs.celery_app``).

Status lives in Postgres, so there is no result backend. Every countdown we use stays far below
Redis's visibility timeout, beyond which Redis would re-deliver a message still running.
"""

from kombu import Queue

from qai_jobs.celery_app import current_settings
from qai_jobs.constants import SWEEP_TASK_PREFIX, SWEEPS, sweep_queue, sweep_task_name

_settings = current_settings()

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
# Timeouts on every broker socket: a Redis that hangs must fail a call, not block it for ever.
broker_transport_options = {
    "visibility_timeout": 3600,
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    "health_check_interval": 30,
}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
# "celery" unless WORKSPACE_QUEUE says otherwise (`qai-jobs bench` runs on a queue of its own).
task_default_queue = _settings.workspace_queue
# Beat's sweeps travel on a queue of their own, so a backlog of actions cannot hold them back
# until they expire; every worker consumes both (a plain `celery worker` too).
task_queues = (
    Queue(_settings.workspace_queue, routing_key=_settings.workspace_queue),
    Queue(
        sweep_queue(_settings.workspace_queue), routing_key=sweep_queue(_settings.workspace_queue)
    ),
)
task_routes = {f"{SWEEP_TASK_PREFIX}*": {"queue": sweep_queue(_settings.workspace_queue)}}
task_ignore_result = True
result_backend = None

# At-least-once delivery; the drain makes duplicates harmless.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Not True: with acks late that SIGTERMs every running action on a Redis blip; the drain
# messages are only hints and Postgres holds the truth, so a running action just goes on.
worker_cancel_long_running_tasks_on_connection_loss = False
# A stopping worker finishes or hands back its messages instead of leaving them unacked.
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True

# Flower and `celery events` see every task.
task_track_started = True
worker_send_task_events = True
task_send_sent_event = True

worker_hijack_root_logger = True
worker_redirect_stdouts = False
timezone = "UTC"
enable_utc = True

# Beat sends one message per sweep and period; the sweep itself makes sure only one of them
# runs per period (qai_jobs.worker.sweeps.run_sweep), however many beat processes are up.
# Messages expire after a period so a backlog (workers down) does not replay old sweeps.

beat_schedule = {
    f"sweep-{name}": {
        "task": sweep_task_name(name),
        "schedule": _settings.workspace_sweep_seconds,
        "options": {"expires": max(1.0, _settings.workspace_sweep_seconds)},
    }
    for name in SWEEPS
}
# Beat wakes at least this often, so a short test period is honoured.
beat_max_loop_interval = min(300.0, _settings.workspace_sweep_seconds)
