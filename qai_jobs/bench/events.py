"""`qai-jobs bench --scenarios events`: the events stream and the TypeScript client.

A real `qai-jobs api` and worker (fake provider) run on this machine; the TypeScript client's
own benchmark (``clients/typescript/bench/overhead.mjs``, built first if needed) measures, in
one run, enqueue -> first ``progress`` event over ``GET /v1/actions/{id}/events`` and the
client's cost per call against a raw ``fetch`` of the same route (medians).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qai_jobs.bench.http import _free_port, _start_api, _stop
from qai_jobs.bench.run import Worker
from qai_jobs.config import Settings

Log = Callable[[str], None]
PACKAGE = Path(__file__).resolve().parents[1] / "clients" / "typescript"


def _npm(args: list[str], env: dict[str, str], timeout: float) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the events scenario needs Node.js >= 20 and npm")
    done = subprocess.run(
        [npm, *args],
        check=False,
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"npm {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done.stdout


def run_events_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    from qai_jobs.celery_app import app

    if not (PACKAGE / "package.json").is_file():
        raise RuntimeError(f"no TypeScript client at {PACKAGE} (a source checkout is needed)")
    env = {**os.environ, "npm_config_audit": "false", "npm_config_fund": "false"}
    if not (PACKAGE / "dist" / "index.js").is_file():
        log("building clients/typescript (npm ci && npm run build)")
        _npm(["ci"], env, 600)
        _npm(["run", "build"], env, 600)
    logs = Path(tempfile.mkdtemp(prefix="qai-bench-events-"))
    token = secrets.token_urlsafe(24)
    port = _free_port()
    worker = Worker(settings, 2, settings.workspace_queue, logs / "worker.log")
    samples = max(20, min(n, 400))  # per path; the events part takes half as many
    try:
        worker.wait_ready(app)
        api = _start_api(settings, token, port, logs / "api.log")
        try:
            out = _npm(
                ["run", "--silent", "bench"],
                {
                    **env,
                    "QAI_API_URL": f"http://127.0.0.1:{port}",
                    "QAI_API_TOKEN": token,
                    "QAI_BENCH_SAMPLES": str(samples),
                },
                900,
            )
        finally:
            _stop(api)
    finally:
        worker.stop()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    get, post, events = result["get_action"], result["enqueue"], result["events"]
    first = events["enqueue_to_first_progress_p50_ms"]
    log(
        f"events: enqueue -> first progress event p50 {first:.2f} ms "
        f"(enqueue -> 202 p50 {events['enqueue_to_202_p50_ms']:.2f} ms, "
        f"{events['samples']} actions); TS client vs raw fetch, p50: GET action "
        f"{get['client_p50_ms']:.2f} vs {get['raw_fetch_p50_ms']:.2f} ms "
        f"({get['overhead_p50_ms']:+.2f} ms), enqueue {post['client_p50_ms']:.2f} vs "
        f"{post['raw_fetch_p50_ms']:.2f} ms ({post['overhead_p50_ms']:+.2f} ms)"
    )
    return result
