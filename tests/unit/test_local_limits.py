"""Per-sandbox limits of the local provider: a runaway workspace cannot take the host down.

Process and memory limits need a writable cgroup (here: the worker's own cgroup v1/v2 subtree);
where none exists the tests say so in the skip reason. The fork bomb only runs after a bounded
fork loop has proven the process cap, so a broken limit fails a test instead of the machine.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qai_jobs.providers.base import CreateSpec, Sandbox
from qai_jobs.providers.local import LocalProvider
from qai_jobs.providers.local.limits import SandboxLimits, _cgroup_bases
from tests.conformance.conftest import make_settings

MAX_PROCS = 32

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing"),
    pytest.mark.skipif(not _cgroup_bases(), reason="no writable cgroup for pids/memory limits"),
]

BOUNDED_FORKS = """
import os, time
n = 0
while n < 300:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
print(n, flush=True)
"""


@pytest.fixture(params=["bwrap", "none"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> LocalProvider:
    return LocalProvider(
        make_settings(
            tmp_path,
            workspace_local_isolation=request.param,
            workspace_local_max_processes=MAX_PROCS,
            workspace_local_max_memory_mb=64,
            workspace_local_max_open_files=256,
        )
    )


@pytest.fixture
def pair(provider: LocalProvider) -> Iterator[tuple[Sandbox, Sandbox]]:
    made = [provider.create(CreateSpec(f"p{i}", uuid.uuid4().hex, 3000)) for i in range(2)]
    try:
        yield made[0], made[1]
    finally:
        for sb in made:
            with contextlib.suppress(Exception):
                provider.destroy(sb)


def test_process_cap_contains_a_fork_bomb(
    provider: LocalProvider, pair: tuple[Sandbox, Sandbox]
) -> None:
    sb, neighbour = pair
    bounded = provider.run(sb, ["python3", "-c", BOUNDED_FORKS], timeout_s=20)
    assert bounded.exit_code == 0, bounded.stderr
    assert 0 < int(bounded.stdout) < MAX_PROCS
    assert provider.run(sb, ["true"]).exit_code == 0  # cap released once the run ended

    answers: list[float] = []

    def neighbour_and_host() -> None:
        time.sleep(0.5)  # let the bomb saturate its cap first
        started = time.monotonic()
        assert provider.run(neighbour, ["bash", "-lc", "echo alive"]).stdout == "alive\n"
        subprocess.run(["true"], check=True, timeout=10)
        answers.append(time.monotonic() - started)

    other = threading.Thread(target=neighbour_and_host)
    other.start()
    bomb = provider.run(sb, ["bash", "-c", ":(){ :|:& };:; sleep 10"], timeout_s=2.5)
    other.join(timeout=20)
    assert bomb.timed_out and bomb.exit_code == 124
    assert answers and answers[0] < 5, "the neighbour and the host must keep answering"
    limits = SandboxLimits(provider.settings, sb.sandbox_id)
    limits.kill_all()
    assert not limits.pids()
    assert provider.run(sb, ["true"]).exit_code == 0


def test_memory_cap_kills_a_runaway_allocation(
    provider: LocalProvider, pair: tuple[Sandbox, Sandbox]
) -> None:
    sb, neighbour = pair
    hog = "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('survived')"
    result = provider.run(sb, ["python3", "-c", hog], timeout_s=20)
    assert result.exit_code != 0 and "survived" not in result.stdout
    assert (
        provider.run(neighbour, ["python3", "-c", "print(len(bytearray(8 << 20)))"]).exit_code == 0
    )


def test_open_files_cap(provider: LocalProvider, pair: tuple[Sandbox, Sandbox]) -> None:
    sb, _ = pair
    assert provider.run(sb, ["bash", "-c", "ulimit -n"]).stdout.strip() == "256"
