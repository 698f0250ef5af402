"""Helpers for the operations tests: an isolated queue and database, and a webhook receiver.

Webhook and sweep tests need workers configured with a callback URL and a secret. The session's
``shared_worker`` (started by other tests) listens on the default queue without them and would
happily take our delivery and sweep messages; and our sweeps must not touch other tests'
workspaces. So these modules run on a Celery queue (``WORKSPACE_QUEUE``) and a Postgres database of
their own (``isolated_env``), on the session's Redis, and start their workers with ``workers``.
The Celery app of this test process is global, so its default queue is switched for the
module and switched back afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from tests.support import services

SECRET = "whsec_" + base64.b64encode(b"qai-jobs-test-secret-0123456789ab").decode()


def isolated_env(base: dict[str, str]) -> Iterator[dict[str, str]]:
    """``base`` with a fresh migrated database and a queue of this module's own."""
    from qai_jobs.celery_app import app, configure

    configure(settings_for(base))  # in case nothing configured the app yet: the session's Redis
    database_url = services.create_database()
    queue = f"qai-ops-{uuid.uuid4().hex[:8]}"
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    try:
        yield {**base, "DATABASE_URL": database_url, "WORKSPACE_QUEUE": queue}
    finally:
        app.conf.task_default_queue = previous
        services.drop_database(database_url)


class Receiver:
    """A real HTTP receiver on 127.0.0.1. ``/flaky`` answers 500 to the first ``fail_first``
    attempts of each webhook-id, then 204; ``/down`` answers 500 until ``down_ok`` is set."""

    def __init__(self, fail_first: int = 2):
        self.fail_first = fail_first
        self.down_ok = False
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    tries = sum(
                        1
                        for r in receiver.requests
                        if r["headers"].get("webhook-id") == headers.get("webhook-id")
                    )
                    ok = tries >= receiver.fail_first if self.path == "/flaky" else receiver.down_ok
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": headers,
                            "body": body,
                            "status": 204 if ok else 500,
                            "at": time.time(),
                        }
                    )
                self.send_response(204 if ok else 500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self, secret: str = SECRET) -> dict[str, dict[str, Any]]:
        """Accepted deliveries after dedupe by webhook-id, each verified as a receiver would."""
        out: dict[str, dict[str, Any]] = {}
        with self.lock:
            rows = [r for r in self.requests if r["status"] == 204]
        for r in rows:
            payload = Webhook(secret).verify(r["body"], r["headers"])
            out.setdefault(r["headers"]["webhook-id"], payload)
        return out

    def attempts(self, webhook_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["headers"].get("webhook-id") == webhook_id]


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        time.sleep(0.05)


def events_of(receiver: Receiver, project_id: str) -> list[dict[str, Any]]:
    """The project's accepted events, ordered by sequence."""
    events = [e for e in receiver.accepted().values() if e["data"]["project_id"] == project_id]
    return sorted(events, key=lambda e: e["data"]["sequence"])


def env_for(receiver_url: str, **extra: str) -> dict[str, str]:
    return {
        "WORKSPACE_CALLBACK_URL": receiver_url,
        "WORKSPACE_WEBHOOK_SECRET": SECRET,
        "WORKSPACE_WEBHOOK_RETRY_SCHEDULE": "0.1,0.1",
        **extra,
    }


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def cli_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PATH": os.environ.get("PATH", "")}


def settings_for(env: dict[str, str]) -> Any:
    from qai_jobs.config import load_settings

    prefixes = ("WORKSPACE_", "DATABASE_", "REDIS_")
    fields = {k.lower(): v for k, v in env.items() if k.startswith(prefixes)}
    return load_settings(_env_file=None, **fields)
