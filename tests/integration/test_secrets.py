"""Secrets end to end on the local provider: one sealing key for processes in different working
directories, env values never on any process's command line, ownership on adopt and restore.

api, worker and beat run in three different working directories without WORKSPACE_SECRET_KEY:
they must all use the key `migrate` put in Postgres (a key file per directory would leave the
worker unable to open what the api sealed).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.api_helpers import TOKEN, api_env, free_port
from tests.integration.ops_support import isolated_env
from tests.support.procs import QAI, Proc


@pytest.fixture(scope="module")
def keyless_env(
    base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("secrets-workspaces")
    for env in isolated_env(base_env):
        keyless = {**env, "WORKSPACE_RUNTIME": "local", "WORKSPACE_ROOT": str(root)}
        keyless.pop("WORKSPACE_SECRET_KEY")
        yield keyless


def _cmdlines() -> Iterator[bytes]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    yield fh.read()
            except OSError:
                continue  # exited meanwhile


def _act(http: httpx.Client, project: str, body: dict[str, Any], wait: float = 120) -> Any:
    done = http.post(
        f"/v1/projects/{project}/actions", params={"wait": wait}, json=body, timeout=wait + 30
    )
    assert done.status_code == 200, done.text
    return done.json()


def test_env_is_sealed_under_one_key_and_never_on_a_command_line(
    keyless_env: dict[str, str], tmp_path: Path, log_dir: Path
) -> None:
    dirs = {name: tmp_path / name for name in ("api", "worker", "beat")}
    for d in dirs.values():
        d.mkdir()
    port = free_port()
    env = api_env(keyless_env)
    procs = [
        Proc(
            [*QAI, "worker", "--concurrency=1", "--hostname=secrets@%h", "--loglevel=INFO"],
            env,
            log_dir / f"secrets-worker-{port}.log",
            cwd=dirs["worker"],
        ),
        Proc([*QAI, "beat"], env, log_dir / f"secrets-beat-{port}.log", cwd=dirs["beat"]),
        Proc(
            [*QAI, "api", "--port", str(port)],
            env,
            log_dir / f"secrets-api-{port}.log",
            cwd=dirs["api"],
        ),
    ]
    worker, beat, api = procs
    secret = "sx-" + secrets.token_hex(16)
    owner, intruder = f"sec-{secrets.token_hex(4)}", f"int-{secrets.token_hex(4)}"
    try:
        worker.wait_for_log(" ready.", timeout=60)
        beat.wait_for_log("beat: Starting", timeout=60)
        api.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            ensured = _act(
                http,
                owner,
                {
                    "kind": "ensure",
                    "files": {"a.txt": "a"},
                    "env": {"SECRET_X": secret},
                    "start_dev_server": False,
                },
            )
            assert ensured["status"] == "succeeded", ensured
            sandbox_id = ensured["result"]["sandbox_id"]
            cmd = "sleep 3; printenv SECRET_X"
            queued = http.post(
                f"/v1/projects/{owner}/actions", json={"kind": "command", "cmd": cmd}
            )
            assert queued.status_code == 202, queued.text
            action_id = queued.json()["action_id"]
            # Every command line on the host while the command runs: the sandbox's shell is
            # seen (so the scan ran while it did), the value never.
            seen_running = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                lines = list(_cmdlines())
                assert not [line for line in lines if secret.encode() in line]
                seen_running = seen_running or any(cmd.encode() in line for line in lines)
                state = http.get(f"/v1/actions/{action_id}").json()
                if state["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.05)
            assert seen_running, "the command never showed up in the process table"
            # ...and the command saw it, sealed by the api and opened by the worker.
            assert state["status"] == "succeeded", state
            assert state["result"]["stdout"].strip() == secret

            # Ownership: another project can neither adopt this tree nor restore its files.
            snap = _act(http, owner, {"kind": "snapshot"})["result"]["snapshot_id"]
            adopted = _act(
                http,
                intruder,
                {"kind": "ensure", "sandbox_id": sandbox_id, "start_dev_server": False},
            )
            assert adopted["status"] == "failed"
            assert adopted["error"]["code"] == "sandbox_not_found", adopted
            restored = _act(http, intruder, {"kind": "restore", "snapshot_id": snap})
            assert restored["status"] == "failed"
            assert restored["error"]["code"] == "snapshot_not_found", restored
            read = _act(http, owner, {"kind": "read", "paths": ["a.txt"]})
            assert read["result"]["files"][0]["content"] == "a"  # the owner's tree untouched
            for project in (owner, intruder):
                _act(http, project, {"kind": "destroy"})
    finally:
        for proc in procs:
            proc.stop()
    for proc in procs:
        assert secret not in proc.log()
    # One key, in the database; no key file in any working directory.
    assert not [p for d in dirs.values() for p in d.rglob("*") if p.name == "secret.key"]
    engine = sa.create_engine(keyless_env["DATABASE_URL"], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            keys = conn.execute(sa.text("SELECT value FROM deployment_secrets")).scalars().all()
            stored = conn.execute(
                sa.text("SELECT count(*) FROM actions WHERE payload::text LIKE :s"),
                {"s": f"%{secret}%"},
            ).scalar_one()
    finally:
        engine.dispose()
    assert len(keys) == 1 and len(keys[0]) >= 32
    assert stored == 0  # sealed at rest


def test_migrate_imports_an_existing_key_file_so_old_sealed_env_still_opens(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    import subprocess

    from cryptography.fernet import Fernet

    from qai_jobs.sealing import seal_env, unseal_env
    from tests.conftest import settings_for
    from tests.support import services

    legacy = Fernet.generate_key().decode()
    (tmp_path / ".qai").mkdir()
    (tmp_path / ".qai" / "secret.key").write_text(legacy)
    url = services.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/qai_key_{secrets.token_hex(5)}"
    env = {k: v for k, v in base_env.items() if k != "WORKSPACE_SECRET_KEY"}
    try:
        for _ in range(2):  # a second migrate keeps the key it found
            done = subprocess.run(
                [*QAI, "migrate"],
                env={**env, "DATABASE_URL": url},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
        # Sealed before the upgrade, with the key file; opened after it, with the database's.
        old = seal_env(settings_for({**env, "WORKSPACE_SECRET_KEY": legacy}), {"K": "v"})
        assert unseal_env(settings_for({**env, "DATABASE_URL": url}), old) == {"K": "v"}
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            keys = conn.execute(sa.text("SELECT value FROM deployment_secrets")).scalars().all()
        engine.dispose()
        assert keys == [legacy]
    finally:
        services.drop_database(url)
