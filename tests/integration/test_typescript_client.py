"""The TypeScript client (clients/typescript): its OpenAPI snapshot matches the running API's,
and `npm ci && npm run build && npm test` passes against a real `qai-jobs api` and a real worker
on the local provider (bubblewrap sandboxes), so live output really streams.

`QAI_UPDATE_OPENAPI=1` rewrites the snapshot from the running API instead of comparing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.api_helpers import TOKEN, Api, api_env, start_api
from tests.integration.ops_support import isolated_env
from tests.support.procs import REPO, Proc, start_worker

PACKAGE = REPO / "clients" / "typescript"
SNAPSHOT = PACKAGE / "openapi.json"


@pytest.fixture(scope="module")
def ts_api(
    base_env: dict[str, str], log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("ts-client-workspaces")
    for env in isolated_env(base_env):
        local = {**env, "WORKSPACE_RUNTIME": "local", "WORKSPACE_ROOT": str(root)}
        worker: Proc = start_worker(local, log_dir, concurrency=2, name="ts-client")
        api = start_api(api_env(local), log_dir)
        try:
            yield api
        finally:
            api.proc.stop()
            worker.stop()


def _normal(document: object) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def test_openapi_snapshot_matches_the_running_api(ts_api: Api) -> None:
    with ts_api.http() as http:
        live = http.get("/openapi.json").json()
    if os.environ.get("QAI_UPDATE_OPENAPI") == "1":
        SNAPSHOT.write_text(_normal(live))
    assert SNAPSHOT.read_text() == _normal(live), (
        "clients/typescript/openapi.json is out of date: the client's types are generated from "
        "it. Run QAI_UPDATE_OPENAPI=1 pytest tests/integration/test_typescript_client.py, "
        "then commit it."
    )


def _npm(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm")
    assert npm, "npm (Node.js >= 20) is needed for the TypeScript client's tests"
    return subprocess.run(
        [npm, *args],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_npm_build_and_node_tests_against_a_real_api(ts_api: Api) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "QAI_API_URL": ts_api.url,
        "QAI_API_TOKEN": TOKEN,
        "npm_config_audit": "false",
        "npm_config_fund": "false",
        "npm_config_update_notifier": "false",
    }
    for step, timeout in ((("ci",), 300), (("run", "build"), 300), (("test",), 600)):
        done = _npm(*step, env=env, timeout=timeout)
        assert done.returncode == 0, (
            f"npm {' '.join(step)} failed:\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
        )
    assert "# fail 0" in done.stdout, done.stdout[-4000:]
    assert "# pass 0" not in done.stdout  # the tests ran
    # The example script a user would start from, on the built package.
    node = shutil.which("node")
    assert node
    demo = subprocess.run(
        [node, "examples/demo.mjs", "ts-demo-script"],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert [line for line in lines if line.startswith("live> ")] == [
        "live> step 1",
        "live> step 2",
        "live> step 3",
    ]
    assert "command succeeded, exit 0" in lines
    assert "read data.bin: 4 bytes (base64)" in lines
    assert "restore failed as expected: snapshot_not_found" in lines
    assert TOKEN not in ts_api.proc.log()
