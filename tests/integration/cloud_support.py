"""A real worker whose ``modal`` and ``e2b`` providers run over the SDK fakes, per provider.

The ``cloud`` fixture (module-scoped, once per provider) starts
``tests.support.fake_cloud_worker`` on a database and queue of the module's own and hands
back a client and the fakes' journal of SDK calls.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.client import WorkspaceClient
from tests.conftest import settings_for
from tests.fakes.surface import read_journal
from tests.integration.ops_support import isolated_env
from tests.support.fake_cloud_worker import JOURNAL
from tests.support.procs import Proc


@dataclass
class Cloud:
    provider: str
    client: WorkspaceClient
    journal: Path
    fake_dir: Path  # the fake sandboxes' directories
    worker: Proc
    env: dict[str, str]

    def calls(self, since: int = 0, op: str | None = None) -> list[dict[str, Any]]:
        entries = read_journal(self.journal)[since:]
        return [e for e in entries if op is None or e["op"] == op]

    def mark(self) -> int:
        return len(read_journal(self.journal))


@pytest.fixture(scope="module", params=["modal", "e2b"])
def cloud(
    request: pytest.FixtureRequest,
    base_env: dict[str, str],
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cloud]:
    provider = str(request.param)
    fake_dir = tmp_path_factory.mktemp(f"fake-{provider}")
    for isolated in isolated_env(base_env):
        # The default policy is `none` here, so an ensure naming no policy shows where
        # WORKSPACE_EGRESS goes (and `internet` must be asked for).
        env = {
            **isolated,
            "WORKSPACE_RUNTIME": provider,
            "WORKSPACE_EGRESS": "none",
            "QAI_FAKE_CLOUD_DIR": str(fake_dir),
        }
        proc = Proc(
            [
                sys.executable,
                "-m",
                "tests.support.fake_cloud_worker",
                "worker",
                "--concurrency=1",
                f"--hostname={fake_dir.name}@%h",
                "--loglevel=INFO",
            ],
            env,
            log_dir / f"cloud-{fake_dir.name}.log",
        )
        try:
            proc.wait_for_log(" ready.", timeout=60)
            client = WorkspaceClient(settings_for(env))
            yield Cloud(provider, client, fake_dir / JOURNAL, fake_dir, proc, env)
        finally:
            proc.stop()
