"""The provider conformance suite: one set of behaviour tests that every provider must pass.

Providers are listed in ``FACTORIES``. To add one (a Modal or E2B adapter over a fake SDK,
say), call ``register(ProviderFactory(...))`` here or from a conftest that imports this module,
declaring what the provider can really do in ``Capabilities``. A test that needs a capability
calls ``h.require("real_shell")``: providers without it are reported as skipped with the
reason, never silently passed.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.config import Settings
from qai_jobs.providers.base import CreateSpec, Provider, Sandbox
from tests.conftest import port_range


@dataclass(frozen=True)
class Capabilities:
    real_shell: bool = False  # run() executes bash: cwd, env, stderr, scripts, truncation
    real_processes: bool = False  # start_process runs a real process writing a real log
    real_http: bool = False  # a server started with start_process answers on preview_url
    real_git: bool = False  # git_sync fetches real commits from a local repository


@dataclass(frozen=True)
class ProviderFactory:
    name: str
    make: Callable[[Settings], Provider]
    caps: Capabilities
    settings: dict[str, Any] | None = None  # extra Settings fields
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here, if so


FACTORIES: dict[str, ProviderFactory] = {}


def register(factory: ProviderFactory) -> ProviderFactory:
    FACTORIES[factory.name] = factory
    return factory


def _fake(settings: Settings) -> Provider:
    from qai_jobs.testing import FakeProvider, MemoryStore

    return FakeProvider(settings, store=MemoryStore())


def _local(settings: Settings) -> Provider:
    from qai_jobs.providers.local import LocalProvider

    return LocalProvider(settings)


def _no_bwrap() -> str | None:
    return None if shutil.which("bwrap") else "bubblewrap is not installed"


REAL = Capabilities(real_shell=True, real_processes=True, real_http=True, real_git=True)
register(ProviderFactory("fake", _fake, Capabilities()))
register(
    ProviderFactory(
        "local", _local, REAL, {"workspace_local_isolation": "bwrap"}, unavailable=_no_bwrap
    )
)
register(ProviderFactory("local-none", _local, REAL, {"workspace_local_isolation": "none"}))


# -- cloud adapters (modal, e2b) over their SDK fakes ------------------------------------------
# The cloud providers, over their SDK fakes. The fakes run real subprocesses in a temp dir, so
# shell, processes and git are real; the preview URL is a provider host that does not resolve.
def _modal_fake(settings: Settings) -> Provider:
    from tests.fakes.cloud import modal_over_fake

    return modal_over_fake(settings)


def _e2b_fake(settings: Settings) -> Provider:
    from tests.fakes.cloud import e2b_over_fake

    return e2b_over_fake(settings)


CLOUD_FAKE = Capabilities(real_shell=True, real_processes=True, real_http=False, real_git=True)
register(ProviderFactory("modal", _modal_fake, CLOUD_FAKE))
register(ProviderFactory("e2b", _e2b_fake, CLOUD_FAKE))


def make_settings(tmp: Path, **extra: Any) -> Settings:
    """Settings for a test: no .env, a private workspace root, small output cap."""
    fields: dict[str, Any] = {
        "workspace_root": tmp / "workspaces",
        # This test process's own dev-server ports (tests/conftest.py). The default range is
        # another checkout's on this host (QAI_TEST_PORT_BASE) and overlaps this run's other
        # processes' ranges, while a registry under ``tmp`` sees none of their allocations:
        # two sandboxes could get one port before either's pasta binds it, the later failing.
        **{key.lower(): int(value) for key, value in port_range().items()},
        "workspace_max_output_bytes": 64 * 1024,
        # Sealing without Postgres (where the deployment's key lives otherwise).
        "workspace_secret_key": "conformance-sealing-key",
        # The git tests fetch from repositories in the test's tmp dir.
        "workspace_repo_schemes": "https,file",
        **extra,
    }
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


class Harness:
    """One provider under test plus the sandboxes a test created (destroyed afterwards)."""

    def __init__(self, factory: ProviderFactory, provider: Provider, tmp: Path) -> None:
        self.name = factory.name
        self.caps = factory.caps
        self.provider = provider
        self.tmp = tmp
        self.sandboxes: list[Sandbox] = []

    def spec(self, project: str = "proj", snapshot_id: str | None = None) -> CreateSpec:
        return CreateSpec(project, uuid.uuid4().hex, 3000, snapshot_id=snapshot_id)

    def create(self, project: str = "proj", snapshot_id: str | None = None) -> Sandbox:
        sb = self.provider.create(self.spec(project, snapshot_id))
        self.sandboxes.append(sb)
        return sb

    def require(self, capability: str) -> None:
        if not getattr(self.caps, capability):
            pytest.skip(f"{self.name} does not model {capability}")

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def cleanup(self) -> None:
        for sb in self.sandboxes:
            with contextlib.suppress(Exception):
                self.provider.destroy(sb)


@pytest.fixture(params=sorted(FACTORIES))
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    factory = FACTORIES[request.param]
    reason = factory.unavailable()
    if reason:
        pytest.skip(f"{factory.name}: {reason}")
    provider = factory.make(make_settings(tmp_path, **(factory.settings or {})))
    harness = Harness(factory, provider, tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()
