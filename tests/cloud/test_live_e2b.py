"""Live E2B test: create, run, preview, sleep, wake, destroy through the adapter.

Needs E2B_API_KEY (and costs a few cents); skipped without them.
Run: ``pytest -m cloud tests/cloud/test_live_e2b.py``.
"""

from __future__ import annotations

import os
import uuid

import pytest

from qai_jobs.config import Settings
from qai_jobs.providers.base import CreateSpec, SandboxStatus

pytestmark = [
    pytest.mark.cloud,
    pytest.mark.skipif(
        not os.environ.get("E2B_API_KEY"),
        reason="E2B_API_KEY not set",
    ),
]


def test_e2b_round_trip() -> None:
    from qai_jobs.providers.e2b import E2BProvider

    provider = E2BProvider(Settings(workspace_runtime=["e2b"]))
    sb = provider.create(CreateSpec(f"live-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, 3000))
    try:
        provider.write_files(sb, [("index.html", b"<h1>hi</h1>")])
        result = provider.run(sb, ["bash", "-lc", "cat index.html"], timeout_s=60)
        assert result.exit_code == 0 and "hi" in result.stdout
        proc = provider.start_process(sb, "python3 -m http.server 3000 || npx -y serve -l 3000")
        assert provider.process_alive(sb, proc)
        assert provider.preview_url(sb, 3000).startswith("https://")
        slept = provider.sleep(sb)
        assert provider.status(slept.sandbox) is SandboxStatus.SLEEPING
        sb = provider.wake(slept.sandbox)
        assert provider.read_files(sb, ["index.html"]) == {"index.html": b"<h1>hi</h1>"}
    finally:
        provider.destroy(sb)
    assert provider.status(sb) is SandboxStatus.GONE
