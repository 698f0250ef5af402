"""What a new user touches first: the compose file, the console script's help, .ci/run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONTRACT_COMMANDS = [
    "migrate",
    "worker",
    "beat",
    "api",
    "flower",
    "gateway",
    "up",
    "ensure",
    "run",
    "read",
    "write",
    "preview",
    "logs",
    "sleep",
    "wake",
    "snapshot",
    "destroy",
    "restore",
    "status",
    "actions",
    "action",
    "cancel",
    "webhooks",
    "doctor",
    "bench",
]


def qai(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qai_jobs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_help_lists_every_command() -> None:
    out = qai("--help")
    assert out.returncode == 0
    for name in CONTRACT_COMMANDS:
        assert f"  {name} " in out.stdout, name


@pytest.mark.parametrize("name", CONTRACT_COMMANDS)
def test_every_command_takes_help(name: str) -> None:
    from click.testing import CliRunner

    from qai_jobs.cli import main

    out = CliRunner().invoke(main, [name, "--help"])
    assert out.exit_code == 0, out.output
    assert "Usage:" in out.output


def test_usage_error_exits_2_without_traceback() -> None:
    out = qai("restore", "only-one-argument")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_compose_services_run_real_commands() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "worker", "beat", "flower", "api", "gateway"} <= set(
        services
    )
    for name in ("migrate", "worker", "beat", "flower", "api", "gateway"):
        command = services[name]["command"]
        assert command[0] in CONTRACT_COMMANDS, name
        from click.testing import CliRunner

        from qai_jobs.cli import main

        args = [*command, "--help"] if name != "flower" else [command[0], "--help"]
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, (name, out.output)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["qai-jobs"]' in dockerfile


def test_ci_runs_make_test() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("install:", "up:", "test:", "bench:", "lint:"):
        assert f"\n{target}" in makefile, target


def test_a_producer_process_loads_no_worker_code() -> None:
    """Importing celeryconfig, the package and its clients pulls in neither the worker, the
    runner, the providers nor the API's web stack: a producer stays light."""
    probe = (
        "import sys, celeryconfig, qai_jobs, qai_jobs.client\n"
        "heavy = ('qai_jobs.worker', 'qai_jobs.runner', 'qai_jobs.providers', 'qai_jobs.api',"
        " 'fastapi', 'aiohttp', 'modal', 'e2b')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]", out.stdout
