"""Preference and fallback: Modal failing transiently sends new workspaces to E2B; the breaker
opens after repeated failures and closes after its cool-down."""

from __future__ import annotations

from pathlib import Path

import modal.exception
import pytest

from qai_jobs.errors import PermanentError, TransientError
from qai_jobs.providers.base import CreateSpec, Provider
from qai_jobs.providers.breaker import CircuitBreaker, MemoryBreakerStore
from qai_jobs.providers.select import choose_provider, create_with_fallback
from tests.fakes.cloud import e2b_provider, modal_provider, settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_transient_modal_failures_fall_back_then_breaker_opens_and_closes(tmp_path: Path) -> None:
    clock = Clock()
    breaker = CircuitBreaker(MemoryBreakerStore(), threshold=2, cooldown_s=30, clock=clock)
    with (
        modal_provider(tmp_path / "m") as (modal_p, mworld),
        e2b_provider(tmp_path / "e") as (
            e2b_p,
            eworld,
        ),
    ):
        providers: dict[str, Provider] = {"modal": modal_p, "e2b": e2b_p}
        s = settings()
        spec = CreateSpec("p1", "w1", 3000)
        outage = modal.exception.ConnectionError("Could not connect to the Modal server.")
        mworld.fail("Sandbox.create", outage, times=2)

        for _ in range(2):  # two transient failures: each new workspace lands on E2B
            sb = create_with_fallback(s, spec, breaker=breaker, providers=providers.__getitem__)
            assert sb.provider == "e2b"
        assert breaker.state("modal") == "open"
        assert choose_provider(s, breaker) == "e2b"

        # While open, Modal is not even asked.
        asked = mworld.calls.count("Sandbox.create")
        sb = create_with_fallback(s, spec, breaker=breaker, providers=providers.__getitem__)
        assert sb.provider == "e2b" and mworld.calls.count("Sandbox.create") == asked

        clock.now += 31  # cool-down over: half-open, Modal gets one try, succeeds, closes
        assert breaker.state("modal") == "half-open"
        sb = create_with_fallback(s, spec, breaker=breaker, providers=providers.__getitem__)
        assert sb.provider == "modal"
        assert breaker.state("modal") == "closed"
        assert len(mworld.running()) == 1 and len(eworld.running()) == 3


def test_half_open_failure_reopens(tmp_path: Path) -> None:
    clock = Clock()
    breaker = CircuitBreaker(MemoryBreakerStore(), threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure("modal")
    assert not breaker.allows("modal")
    clock.now += 11
    assert breaker.allows("modal")
    breaker.record_failure("modal")
    assert breaker.state("modal") == "open"


def test_all_transient_raises_last_and_permanent_stops_at_once(tmp_path: Path) -> None:
    breaker = CircuitBreaker(MemoryBreakerStore(), threshold=5)
    with (
        modal_provider(tmp_path / "m") as (modal_p, mworld),
        e2b_provider(tmp_path / "e") as (
            e2b_p,
            eworld,
        ),
    ):
        import e2b

        providers = {"modal": modal_p, "e2b": e2b_p}.__getitem__
        spec = CreateSpec("p1", "w1", 3000)
        mworld.fail("Sandbox.create", modal.exception.ServiceError("unavailable"))
        eworld.fail("Sandbox.create", e2b.RateLimitException("slow down"))
        with pytest.raises(TransientError) as err:
            create_with_fallback(settings(), spec, breaker=breaker, providers=providers)
        assert err.value.code == "provider_rate_limited"  # E2B's, the last one tried

        mworld.fail("Sandbox.create", modal.exception.AuthError("Token missing"))
        with pytest.raises(PermanentError) as perm:
            create_with_fallback(settings(), spec, breaker=breaker, providers=providers)
        assert perm.value.code == "provider_auth"
        assert eworld.calls.count("Sandbox.create") == 1  # E2B not asked after a permanent error


def test_redis_breaker_is_shared(service_urls: dict[str, str], tmp_path: Path) -> None:
    """Two breakers (two worker processes) over one Redis see each other's failures."""
    from qai_jobs.providers.breaker import RedisBreakerStore

    url = service_urls["REDIS_URL"]
    name = f"modal-test-{tmp_path.name}"
    a = CircuitBreaker(RedisBreakerStore(url), threshold=2, cooldown_s=60)
    b = CircuitBreaker(RedisBreakerStore(url), threshold=2, cooldown_s=60)
    a.record_failure(name)
    b.record_failure(name)
    assert not a.allows(name) and not b.allows(name)
    b.record_success(name)
    assert a.allows(name)


def test_the_breaker_fails_open_when_its_store_cannot_be_read() -> None:
    """A Redis error inside the breaker must not fail provisioning (it was internal_error)."""
    import redis

    class Broken:
        def failures(self, provider: str) -> tuple[int, float]:
            raise redis.ConnectionError("redis is down")

        def record_failure(self, provider: str, now: float, threshold: int) -> int:
            raise redis.ConnectionError("redis is down")

        def reset(self, provider: str) -> None:
            raise redis.ConnectionError("redis is down")

    breaker = CircuitBreaker(Broken())
    assert breaker.allows("modal") and breaker.state("modal") == "closed"
    breaker.record_failure("modal")
    breaker.record_success("modal")
