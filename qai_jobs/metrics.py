"""Prometheus metrics, computed from Postgres at scrape time.

Design: workers are separate processes on possibly separate hosts, so in-process counters
(or prometheus_client's multiprocess mode, which needs one shared directory on one host) would
see a fraction of the fleet. Postgres already holds every action and outbox row, so a custom
collector reads the figures when scraped: any API process serves the whole fleet's numbers and a
restart loses nothing. Counters stay monotonic across the prune sweep because what it deletes
is first added to totals carried in Redis (``carry_pruned``); they only go back to zero if Redis
itself is wiped, which Prometheus treats as an ordinary counter reset.

Scrape cost is a few grouped queries over the retained rows (retention bounds them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from qai_jobs.config import Settings
from qai_jobs.constants import METRICS_CARRIED_KEY, SWEEPS_LAST_KEY
from qai_jobs.db import stats
from qai_jobs.db.session import engine_for
from qai_jobs.notify import client as redis_client

CARRIED = METRICS_CARRIED_KEY
SWEEPS_LAST = SWEEPS_LAST_KEY


def carry_pruned(settings: Settings, actions: Sequence[Any], events: Sequence[Any]) -> None:
    """Add pruned rows (``kind, status, duration`` / ``status, attempts``) to the carried totals."""
    if not actions and not events:
        return
    incr: dict[str, float] = {}

    def add(field: str, value: float) -> None:
        incr[field] = incr.get(field, 0.0) + value

    for kind, status, duration in actions:
        add(f"actions|{kind}|{status}", 1)
        if status in ("succeeded", "failed") and duration is not None:
            index = stats.bucket_index(
                sum(1 for b in stats.DURATION_BUCKETS if b <= float(duration))
            )
            add(f"duration|{kind}|{index}", 1)
            add(f"duration_sum|{kind}", float(duration))
    for status, attempts in events:
        add("webhooks|ok" if status == "delivered" else "webhooks|dead", 1)
        add("webhooks|retried", max(0, int(attempts) - 1))
    try:
        pipe = redis_client(settings.redis_url).pipeline(transaction=True)
        for field, value in incr.items():
            pipe.hincrbyfloat(CARRIED, field, value)
        pipe.execute()
    except redis.RedisError:
        pass  # the counters dip (a reset, to Prometheus); the prune itself must go on


def _carried(settings: Settings) -> dict[str, float]:
    try:
        raw = redis_client(settings.redis_url).hgetall(CARRIED)
    except redis.RedisError:
        return {}
    return {k.decode(): float(v) for k, v in raw.items()}


def _sweeps_last(settings: Settings) -> dict[str, float]:
    try:
        raw = redis_client(settings.redis_url).hgetall(SWEEPS_LAST)
    except redis.RedisError:
        return {}
    return {k.decode(): float(v) for k, v in raw.items()}


class FleetCollector(Collector):
    """Reads the fleet's figures from Postgres (and Redis for carried totals) on each scrape."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        engine = engine_for(self.settings.database_url)
        carried = _carried(self.settings)
        summary = stats.summary(engine)
        yield from self._actions(engine, carried)
        yield from _queue(summary)
        yield from _webhooks(summary, carried)
        workspaces = GaugeMetricFamily("qai_workspaces", "Workspaces by status.", labels=["status"])
        for status, n in sorted(summary["workspaces_by_status"].items()):
            workspaces.add_metric([status], n)
        yield workspaces
        sweeps = GaugeMetricFamily(
            "qai_sweep_last_run_timestamp_seconds",
            "When each beat sweep last ran.",
            labels=["sweep"],
        )
        for name, at in sorted(_sweeps_last(self.settings).items()):
            sweeps.add_metric([name], at)
        yield sweeps

    def _actions(self, engine: Any, carried: dict[str, float]) -> Iterator[Metric]:
        outcomes = stats.action_outcomes(engine)
        for field, value in carried.items():
            part, *rest = field.split("|")
            if part == "actions" and len(rest) == 2:
                key = (rest[0], rest[1])
                outcomes[key] = outcomes.get(key, 0) + int(value)
        total = CounterMetricFamily(
            "qai_actions", "Finished actions by kind and outcome.", labels=["kind", "outcome"]
        )
        for (kind, outcome), n in sorted(outcomes.items()):
            total.add_metric([kind, outcome], n)
        yield total
        histogram = HistogramMetricFamily(
            "qai_action_duration_seconds",
            "Time from an action's start to its finish (succeeded or failed).",
            labels=["kind"],
        )
        durations = stats.duration_buckets(engine)
        kinds = set(durations) | {f.split("|")[1] for f in carried if f.startswith("duration")}
        size = len(stats.DURATION_BUCKETS) + 1
        for kind in sorted(kinds):
            counts, total_s = durations.get(kind, ([0] * size, 0.0))
            counts = [counts[i] + int(carried.get(f"duration|{kind}|{i}", 0)) for i in range(size)]
            total_s += carried.get(f"duration_sum|{kind}", 0.0)
            buckets, running = [], 0
            for bound, n in zip([*map(str, stats.DURATION_BUCKETS), "+Inf"], counts, strict=True):
                running += n
                buckets.append((bound, running))
            histogram.add_metric([kind], buckets, total_s)
        yield histogram


def _queue(summary: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "qai_queue_depth", "Actions queued and not yet started.", value=summary["queued"]
    )
    yield GaugeMetricFamily("qai_actions_running", "Actions running now.", value=summary["running"])
    yield GaugeMetricFamily(
        "qai_oldest_queued_action_age_seconds",
        "Age of the oldest queued action (0 when none is queued).",
        value=summary["oldest_queued_age_seconds"] or 0.0,
    )


def _webhooks(summary: dict[str, Any], carried: dict[str, float]) -> Iterator[Metric]:
    deliveries = CounterMetricFamily(
        "qai_webhook_deliveries",
        "Webhook delivery outcomes: ok (delivered), retried (failed attempts retried later), dead.",
        labels=["outcome"],
    )
    for outcome in ("ok", "retried", "dead"):
        n = summary["webhook_deliveries"][outcome] + int(carried.get(f"webhooks|{outcome}", 0))
        deliveries.add_metric([outcome], n)
    yield deliveries
    yield GaugeMetricFamily(
        "qai_webhooks_pending",
        "Webhook events waiting for their (next) delivery attempt.",
        value=summary["webhooks_by_status"].get("pending", 0),
    )


def render(settings: Settings) -> tuple[bytes, str]:
    """The Prometheus text exposition of the fleet's metrics: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST
