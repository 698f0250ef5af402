"""Which provider to use: by name, imported lazily so an SDK is only loaded where it is used."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable

from qai_jobs.config import Settings
from qai_jobs.errors import ConfigurationError, TransientError
from qai_jobs.providers.base import CreateSpec, Provider, Sandbox
from qai_jobs.providers.breaker import CircuitBreaker, RedisBreakerStore

logger = logging.getLogger(__name__)

_MODULES = {
    "local": ("qai_jobs.providers.local", "LocalProvider"),
    "fake": ("qai_jobs.providers.fake", "FakeProvider"),
    "modal": ("qai_jobs.providers.modal", "ModalProvider"),
    "e2b": ("qai_jobs.providers.e2b", "E2BProvider"),
}
_cache: dict[tuple[int, str], Provider] = {}
_lock = threading.Lock()


def get_provider(name: str, settings: Settings) -> Provider:
    """The provider called ``name``, one instance per settings object and process."""
    key = (id(settings), name)
    with _lock:
        if key not in _cache:
            try:
                module_name, class_name = _MODULES[name]
            except KeyError:
                raise ConfigurationError(f"unknown provider {name!r}") from None
            cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
            _cache[key] = cls(settings)
        return _cache[key]


# -- preference and fallback for NEW workspaces ---------------------------------------------
# An existing workspace stays where it is (the runner calls get_provider(sb.provider)); only a
# new one is placed by preference, skipping providers whose create keeps failing transiently.
_breakers: dict[str, CircuitBreaker] = {}


def default_breaker(settings: Settings) -> CircuitBreaker:
    """The process's breaker, its state in Redis so every worker sees the same failures."""
    with _lock:
        if settings.redis_url not in _breakers:
            _breakers[settings.redis_url] = CircuitBreaker(RedisBreakerStore(settings.redis_url))
        return _breakers[settings.redis_url]


def choose_provider(settings: Settings, breaker: CircuitBreaker | None = None) -> str:
    """The first provider in WORKSPACE_RUNTIME whose breaker lets it be tried (else the first)."""
    breaker = breaker or default_breaker(settings)
    for name in settings.workspace_runtime:
        if breaker.allows(name):
            return name
    return settings.workspace_runtime[0]


def create_with_fallback(
    settings: Settings,
    spec: CreateSpec,
    *,
    breaker: CircuitBreaker | None = None,
    providers: Callable[[str], Provider] | None = None,
) -> Sandbox:
    """Create a new sandbox on the first healthy provider, falling back on transient errors.

    A PermanentError (bad credentials, unknown template) is raised at once: another provider
    would hide a configuration mistake. When every provider failed transiently (or all are
    skipped by their breakers) the last TransientError is raised, so the action is retried.
    """
    breaker = breaker or default_breaker(settings)
    get = providers or (lambda name: get_provider(name, settings))
    names = list(settings.workspace_runtime)
    allowed = [n for n in names if breaker.allows(n)]
    # All open: try them anyway rather than fail without asking anyone.
    last: TransientError | None = None
    for name in allowed or names:
        try:
            sandbox = get(name).create(spec)
        except TransientError as exc:
            breaker.record_failure(name)
            logger.warning("create on %s failed transiently (%s); trying the next", name, exc.code)
            last = exc
            continue
        breaker.record_success(name)
        return sandbox
    assert last is not None
    raise last
