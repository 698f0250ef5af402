"""The gateway's Prometheus metrics (its own registry: they describe this process's traffic)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_WAKE_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "qai_gateway_requests",
            "Requests the gateway answered, by kind (http, websocket) and status code.",
            ["kind", "status"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "qai_gateway_upstream_errors",
            "Failures reaching or reading a dev server, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.wakes = Counter(
            "qai_gateway_wakes",
            "Actions the gateway waited for to bring a preview back (wake, or preview to "
            "restart a dead dev server), by outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.wake_seconds = Histogram(
            "qai_gateway_wake_seconds",
            "From enqueueing a wake (or restart) to its action finishing.",
            ["kind"],
            buckets=_WAKE_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "qai_gateway_request_seconds",
            "Time to the response's headers (or the WebSocket's opening).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.activity_writes = Counter(
            "qai_gateway_activity_writes",
            "UPDATEs of last_activity_at (each covers every workspace active since the last).",
            registry=self.registry,
        )
        self._by_status: dict[tuple[str, int], Counter] = {}
        self.fast = _FastPathCollector()
        self.registry.register(self.fast)

    def request(self, kind: str, status: int, seconds: float) -> None:
        counter = self._by_status.get((kind, status))
        if counter is None:
            counter = self.requests.labels(kind, str(status))
            self._by_status[(kind, status)] = counter
        counter.inc()
        self.latency.observe(seconds)

    def upstream_error(self, reason: str) -> None:
        self.upstream_errors.labels(reason).inc()

    def wake(self, kind: str, outcome: str, seconds: float) -> None:
        self.wakes.labels(kind, outcome).inc()
        if outcome != "timeout":
            self.wake_seconds.labels(kind).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _FastPathCollector(Collector):
    """What HAProxy served on its own (running previews), read from its counters: those
    requests never reach the Python side's counters above."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, float]] = dict

    def collect(self) -> Iterator[Metric]:
        totals = self.source()
        requests = CounterMetricFamily(
            "qai_gateway_fast_requests",
            "Requests HAProxy answered straight from a running dev server, by status class.",
            labels=["code"],
        )
        for code in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
            requests.add_metric([code], totals.get(code, 0.0))
        yield requests
        errors = CounterMetricFamily(
            "qai_gateway_fast_upstream_errors",
            "Fast-path failures reaching or reading a dev server, by reason (such a request "
            "is retried on the Python side when it is safe to).",
            labels=["reason"],
        )
        errors.add_metric(["connect"], totals.get("connect_errors", 0.0))
        errors.add_metric(["response"], totals.get("response_errors", 0.0))
        errors.add_metric(["redispatched"], totals.get("redispatched", 0.0))
        yield errors
