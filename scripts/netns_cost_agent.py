"""One side of scripts/netns_cost.py: a real worker of the checkout this runs from.

Started with that checkout's own interpreter; reads requests on stdin ("command N",
"cold N", "dev N", "quit") and answers each with one JSON line of end-to-end seconds
(client enqueue -> wait returns; for "dev", until the preview answers 200). Needs
DATABASE_URL, REDIS_URL and WORKSPACE_ROOT in the environment; only qai-jobs' public client
is used, so the same file drives a checkout from before the network namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from qai_jobs.client import WorkspaceClient
from qai_jobs.config import load_settings

HERE = Path.cwd()
SERVER_JS = (HERE / "examples" / "hello" / "server.js").read_text()
WAIT = 120.0


def main() -> None:
    subprocess.run([sys.executable, "-m", "qai_jobs", "migrate"], check=True, capture_output=True)
    log = open(os.environ["WORKSPACE_ROOT"] + ".worker.log", "ab")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "qai_jobs", "worker", "--concurrency=1", "--loglevel=WARNING"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = WorkspaceClient(load_settings())
    warm = f"bench-{uuid.uuid4().hex[:8]}"
    client.ensure(warm, start_dev_server=False).wait(WAIT)  # also waits for the worker
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            verb, _, count = line.strip().partition(" ")
            if verb == "quit":
                break
            times = [one(client, verb, warm) for _ in range(int(count or 1))]
            print(json.dumps({verb: times}), flush=True)
    finally:
        worker.terminate()
        worker.wait(30)


def one(client: WorkspaceClient, verb: str, warm: str) -> float:
    started = time.perf_counter()
    if verb == "command":
        result = client.command(warm, cmd="true").wait(WAIT)
        assert result["exit_code"] == 0, result
        return time.perf_counter() - started
    project = f"cold-{uuid.uuid4().hex[:8]}"
    if verb == "cold":
        client.ensure(project, start_dev_server=False).wait(WAIT)
    else:
        result = client.ensure(
            project, files={"server.js": SERVER_JS}, dev_command="node server.js"
        ).wait(WAIT)
        page = httpx.get(result["preview_url"], timeout=10)
        assert page.status_code == 200, page.status_code
    elapsed = time.perf_counter() - started
    client.destroy(project).wait(WAIT)  # not timed: keeps ports and disks from piling up
    return elapsed


if __name__ == "__main__":
    main()
