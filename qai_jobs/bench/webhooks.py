"""`qai-jobs bench --scenarios webhooks`: how soon a webhook arrives after its action finished.

A real worker (fake provider) delivers signed `workspace.ready` events to a receiver in this
process on 127.0.0.1. Latency = receiver's arrival time minus the action's ``finished_at``
(the time of the Postgres statement that settled it, ``ordering.RECORDED_AT``, a little before
its commit, so the figure errs on the slow side). Every body is verified as a receiver would.
"""

from __future__ import annotations

import base64
import json
import secrets
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from standardwebhooks import Webhook

from qai_jobs.bench.run import Log, Worker, summarize
from qai_jobs.celery_app import app
from qai_jobs.client.direct import WorkspaceClient
from qai_jobs.config import Settings

# The loaded round: this many producers at once on the same worker (concurrency 4).
LOADED_THREADS = 4


class _Receiver:
    def __init__(self, secret: str):
        self.arrivals: dict[str, float] = {}  # action id -> first arrival (epoch seconds)
        self.invalid = 0
        self.lock = threading.Lock()
        verifier = Webhook(secret)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would

            def do_POST(self) -> None:
                now = time.time()
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    event = verifier.verify(body, dict(self.headers.items()))
                except Exception:  # any failure to verify counts as invalid
                    with outer.lock:
                        outer.invalid += 1
                    event = None
                if event is not None:
                    with outer.lock:
                        outer.arrivals.setdefault(str(event["data"]["action_id"]), now)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _latencies(client: WorkspaceClient, receiver: _Receiver, ids: list[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(i in receiver.arrivals for i in ids):
        time.sleep(0.05)
    with client.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, extract(epoch FROM finished_at) AS f FROM actions WHERE id = ANY(:ids)"
            ),
            {"ids": [uuid.UUID(i) for i in ids]},
        ).all()
    arrivals = receiver.arrivals
    latencies = [arrivals[str(r.id)] - float(r.f) for r in rows if str(r.id) in arrivals]
    return {"delivered": len(latencies), **summarize(latencies)}


def run_webhook_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    """Run ``min(n, 300)`` ensures over as many projects and time their `workspace.ready`."""
    samples = max(20, min(n, 300))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = _Receiver(secret)
    log_path = Path(tempfile.mkdtemp(prefix="qai-bench-hooks-")) / "worker.log"
    hooks = {"WORKSPACE_CALLBACK_URL": receiver.url, "WORKSPACE_WEBHOOK_SECRET": secret}
    worker = Worker(settings, 4, settings.workspace_queue, log_path, hooks)
    client = WorkspaceClient(settings.model_copy(update={"workspace_callback_url": [receiver.url]}))
    try:
        worker.wait_ready(app)
        run = uuid.uuid4().hex[:6]

        def one(i: int) -> str:
            handle = client.ensure(f"bench-hook-{run}-{i}", start_dev_server=False)
            handle.wait(timeout=60)
            return handle.id

        with ThreadPoolExecutor(LOADED_THREADS) as pool:
            list(pool.map(one, range(10)))  # warm-up: connections, imports
        # One action at a time: the delivery path itself. Then four producers at once: the
        # deliveries queue behind drains on the same workers.
        idle = [one(i) for i in range(10, 10 + samples)]
        with ThreadPoolExecutor(LOADED_THREADS) as pool:
            loaded = list(pool.map(one, range(10 + samples, 10 + 2 * samples)))
        result = {
            "events": 2 * samples,
            "invalid_signatures": receiver.invalid,
            "after_finish": _latencies(client, receiver, idle),
            f"after_finish_{LOADED_THREADS}_producers": _latencies(client, receiver, loaded),
        }
        log(f"webhooks: {json.dumps(result)}")
        return result
    finally:
        worker.stop()
        receiver.close()
