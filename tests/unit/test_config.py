"""A bad setting stops start-up with one line naming the variable, never echoing the value."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qai_jobs.config import load_settings
from qai_jobs.errors import ConfigurationError


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKSPACE_MAX_ATTEMPTS", "many"),
        ("WORKSPACE_MAX_ATTEMPTS", "0"),
        ("WORKSPACE_RUNTIME", "docker"),
        ("WORKSPACE_INACTIVITY_MINUTES", "-1"),
        ("WORKSPACE_PREVIEW_PORT", "99999"),
        ("WORKSPACE_WEBHOOK_SECRET", "not-a-whsec-secret-value"),
        ("WORKSPACE_WEBHOOK_SECRET", "whsec_not base64!"),  # would fail every delivery
        ("WORKSPACE_CALLBACK_URL", "ftp://example.invalid/hook"),
        ("DATABASE_URL", "mysql://root@localhost/x"),
        ("WORKSPACE_LOCAL_ISOLATION", "docker"),
        ("WORKSPACE_HOST_ID", "no spaces/or slashes"),
        ("WORKSPACE_HOST_DEAD_SECONDS", "0"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(_env_file=None)
    assert info.value.message.startswith(f"{name}:")
    if "SECRET" in name:
        assert value not in info.value.message


def test_decimal_durations_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKSPACE_INACTIVITY_MINUTES", "0.05")
    monkeypatch.setenv("WORKSPACE_RUNTIME", "modal, e2b")
    monkeypatch.setenv("WORKSPACE_WEBHOOK_RETRY_SCHEDULE", "0.5,1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    s = load_settings(_env_file=None)
    assert s.inactivity_seconds == pytest.approx(3.0)
    assert s.workspace_runtime == ["modal", "e2b"]
    assert s.workspace_webhook_retry_schedule == [0.5, 1.0]
    assert s.database_url == "postgresql+psycopg://u@h/db"


def test_cli_reports_bad_config_in_one_line_with_exit_2() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "WORKSPACE_MAX_ATTEMPTS": "lots",
        "WORKSPACE_TOKEN": "tok-secret-123",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "qai_jobs", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "WORKSPACE_MAX_ATTEMPTS" in lines[0]
    assert "Traceback" not in proc.stderr
    assert "tok-secret-123" not in proc.stderr + proc.stdout


def test_fleet_defaults_make_paths_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKSPACE_ROOT", raising=False)
    monkeypatch.delenv("WORKSPACE_HOST_ID", raising=False)
    monkeypatch.delenv("WORKSPACE_SNAPSHOT_STORE", raising=False)
    settings = load_settings(_env_file=None)
    # A worker started in another directory finds the same root, not a new one beside it.
    assert settings.workspace_root == Path(os.getcwd(), ".qai", "workspaces")
    assert settings.snapshot_dir == Path(os.getcwd(), ".qai", "snapshots")  # beside the root
    assert settings.workspace_host_id == socket.gethostname()
    assert settings.workspace_host_dead_seconds == 60
    # A root that has the directory earlier versions kept inside it goes on using it.
    (settings.workspace_root / "snapshots").mkdir(parents=True)
    assert load_settings(_env_file=None).snapshot_dir == settings.workspace_root / "snapshots"
    monkeypatch.setenv("WORKSPACE_SNAPSHOT_STORE", "shared/snaps")
    assert load_settings(_env_file=None).snapshot_dir == Path(os.getcwd(), "shared", "snaps")


@pytest.mark.parametrize(
    "secret",
    ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"],
)
def test_a_webhook_secret_the_library_reads_is_accepted(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    """A newline from a mounted file, or no padding: the Standard Webhooks library reads both."""
    monkeypatch.setenv("WORKSPACE_WEBHOOK_SECRET", secret)
    assert load_settings(_env_file=None).workspace_webhook_secret is not None
