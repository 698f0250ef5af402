"""The original /api/workspaces route end to end on the local provider: examples/hello goes in,
a preview URL that answers HTTP comes out.

Runs on a database and queue of its own (``ops_support.isolated_env``) so the session's fake
worker cannot take the project's messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.api_helpers import TOKEN, api_env, start_api
from tests.integration.ops_support import isolated_env
from tests.support.procs import REPO, Proc

HELLO = REPO / "examples" / "hello"


@pytest.fixture(scope="module")
def local_env(
    base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("local-api-workspaces")
    for env in isolated_env(base_env):
        yield {**env, "WORKSPACE_RUNTIME": "local", "WORKSPACE_ROOT": str(root)}


def test_original_route_on_the_local_provider_serves_a_live_preview(
    local_env: dict[str, str], workers: Callable[..., Proc], log_dir: Path
) -> None:
    if not HELLO.is_dir():
        pytest.skip("examples/hello is not in this tree")
    workers(concurrency=1, **local_env)
    api = start_api(api_env(local_env), log_dir)
    project = "api-local-hello"
    try:
        with api.http() as http:
            files = {p.name: p.read_text() for p in HELLO.iterdir() if p.is_file()}
            done = http.post(
                "/api/workspaces",
                params={"wait": 120},
                json={"action": "ensure", "projectId": project, "files": files},
                timeout=150,
            )
            assert done.status_code == 200, done.text
            body = done.json()
            assert body["previewUrl"].startswith("http://127.0.0.1:")
            page = httpx.get(body["previewUrl"], timeout=10)
            assert page.status_code == 200 and "Hello from qai-jobs" in page.text
            gone = http.post(
                f"/v1/projects/{project}/actions", params={"wait": 60}, json={"kind": "destroy"}
            )
            assert gone.status_code == 200 and gone.json()["status"] == "succeeded"
    finally:
        api.proc.stop()
    assert TOKEN not in api.proc.log()
