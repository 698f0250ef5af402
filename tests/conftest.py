"""Shared fixtures: a migrated database and a Redis DB per test run, real worker processes.

Nothing here skips when a service is missing: the run fails, so CI cannot pass on a machine
without Postgres or Redis.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qai_jobs.config import Settings
from tests.support import netns, services
from tests.support.procs import Proc, start_beat, start_worker


@pytest.fixture(scope="session", autouse=True)
def _release_sandbox_networks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    netns.stop_processes_under(tmp_path_factory.getbasetemp())
    netns.release_under(tmp_path_factory.getbasetemp())
    netns.release_disks_under(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def service_urls() -> Iterator[dict[str, str]]:
    services.require_services()
    database_url = services.create_database()
    redis_url, admin = services.claim_redis_db()
    try:
        yield {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    finally:
        services.release_redis_db(redis_url, admin)
        services.drop_database(database_url)


@pytest.fixture(scope="session")
def base_env(
    service_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment of every process a test starts (fast timers, fake provider)."""
    # One level down: the default snapshot directory sits beside the root, in a directory of
    # this session's own rather than pytest's base shared by every mktemp.
    root = tmp_path_factory.mktemp("workspaces") / "workspaces"
    keep = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
    }
    return {
        **keep,
        **service_urls,
        "PYTHONUNBUFFERED": "1",
        "WORKSPACE_RUNTIME": "fake",
        "WORKSPACE_ROOT": str(root),
        "WORKSPACE_HEARTBEAT_SECONDS": "0.5",
        "WORKSPACE_SWEEP_SECONDS": "1",
        "WORKSPACE_RETRY_BASE_SECONDS": "0.05",
        "WORKSPACE_RETRY_MAX_SECONDS": "0.5",
        "WORKSPACE_SECRET_KEY": "test-secret-key-not-for-production",
        "WORKSPACE_MAX_ATTEMPTS": "5",
        **port_range(),
    }


def port_range() -> dict[str, str]:
    """Host ports for local dev servers of this test process: test processes run side by side
    (pytest-xdist) on one host, and each keeps its own port registry."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker.removeprefix("gw") or 0) % 4
    # QAI_TEST_PORT_BASE keeps test runs of two checkouts on one host apart.
    low = int(os.environ.get("QAI_TEST_PORT_BASE", "41000")) + n * 250
    return {"WORKSPACE_LOCAL_PORT_MIN": str(low), "WORKSPACE_LOCAL_PORT_MAX": str(low + 249)}


@pytest.fixture(scope="session")
def settings(base_env: dict[str, str]) -> Settings:
    return settings_for(base_env)


@pytest.fixture(scope="session")
def client(settings: Settings):  # type: ignore[no-untyped-def]
    from qai_jobs.client import WorkspaceClient

    return WorkspaceClient(settings)


@pytest.fixture
def project() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def shared_worker(base_env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    """One fake-provider worker for the whole run (tests that do not kill workers)."""
    proc = start_worker(base_env, log_dir, concurrency=4, name="shared")
    yield proc
    proc.stop()


@pytest.fixture
def workers(base_env: dict[str, str], log_dir: Path) -> Iterator[Callable[..., Proc]]:
    """Start extra workers (with env overrides); all are stopped after the test."""
    started: list[Proc] = []

    def start(concurrency: int = 2, **env: str) -> Proc:
        proc = start_worker({**base_env, **env}, log_dir, concurrency=concurrency)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def beats(base_env: dict[str, str], log_dir: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(**env: str) -> Proc:
        proc = start_beat({**base_env, **env}, log_dir)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def isolated_env(
    tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[dict[str, str]]:
    """A database and Redis DB of the module's own: no other test's worker consumes its
    messages, so a test may kill workers, wipe Redis or restart connections freely."""
    with isolated(tmp_path_factory, base_env) as env:
        yield env


@contextlib.contextmanager
def isolated(
    tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[dict[str, str]]:
    """A new database and Redis DB (``isolated_env``'s), for fixtures of any scope."""
    database_url = services.create_database()
    redis_url, admin = services.claim_redis_db()
    root = tmp_path_factory.mktemp("iso-workspaces") / "workspaces"
    try:
        yield {
            **base_env,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WORKSPACE_ROOT": str(root),
        }
    finally:
        services.release_redis_db(redis_url, admin)
        services.drop_database(database_url)


def settings_for(env: dict[str, str]) -> Settings:
    from qai_jobs.config import load_settings

    fields = {
        k.lower(): v for k, v in env.items() if k.startswith(("WORKSPACE_", "DATABASE_", "REDIS_"))
    }
    return load_settings(_env_file=None, **fields)
