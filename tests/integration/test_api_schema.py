"""Schemathesis against the live API's /openapi.json: no 5xx, and every response matches the
documented status codes, content types and schemas (bounded so it stays quick)."""
# ruff: noqa: F811 - the api fixture is imported from api_helpers
# The coverage phase is left out: with hypothesis 6.170 it crashes inside hypothesis itself.

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.api_helpers import TOKEN, Api, api  # noqa: F401

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


def _schemathesis(api: Api, tmp_path: Path, seed: int) -> subprocess.CompletedProcess[str]:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a dev dependency"
    return subprocess.run(
        [
            st, "run", f"{api.url}/openapi.json",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--include-path-regex", "^/v1/",
            "--checks", CHECKS,
            "--phases", "examples,fuzzing",
            "--max-examples", "25",
            "--seed", str(seed),
            "--request-timeout", "10",
            "--max-time", "12",
            "--workers", "2",
            "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip


def test_schemathesis_finds_no_5xx_and_no_schema_drift(api: Api, tmp_path: Path) -> None:
    done = _schemathesis(api, tmp_path, 20240601)
    if done.returncode != 0 and "Failures:" not in done.stdout:
        # No check failed: schemathesis itself hit an internal error (seen once with this
        # hypothesis). Run once more with another seed rather than report our API for it.
        done = _schemathesis(api, tmp_path, 20240602)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
