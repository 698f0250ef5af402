"""`qai-jobs flower` is a real Flower 2 with our app: it sees our tasks, their state and runtime."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from celery import Celery

from tests.support.procs import QAI, Proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_flower_shows_our_tasks_with_state_and_runtime(
    shared_worker: Any, client: Any, base_env: dict[str, str], log_dir: Any, project: str
) -> None:
    port = free_port()
    env = {**base_env, "FLOWER_BASIC_AUTH": "ops:s3cret-pass"}
    flower = Proc([*QAI, "flower", f"--port={port}"], env, log_dir / f"flower-{port}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        flower.wait_for_http(f"{base}/healthcheck", timeout=60)
        assert httpx.get(f"{base}/healthcheck").text == "OK"
        # The API needs the basic auth that came from the environment.
        assert httpx.get(f"{base}/api/tasks").status_code == 401
        auth = ("ops", "s3cret-pass")
        # Flower learns of tasks from live events: wait until it sees the worker.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if httpx.get(f"{base}/api/workers", auth=auth, params={"refresh": "1"}).json():
                break
            time.sleep(0.2)
        # Another language's producer puts the whole payload, env included, in the kwargs.
        foreign = Celery(broker=base_env["REDIS_URL"])
        foreign.conf.task_serializer = "json"
        foreign_id = str(uuid.uuid4())
        foreign.send_task(
            "qai_jobs.command",
            kwargs={"project_id": project, "cmd": "true", "env": {"API_KEY": "sk-live-4242"}},
            task_id=foreign_id,
        )
        assert client.wait_for(foreign_id, timeout=30)["status"] == "succeeded"
        # `celery inspect active` asks workers for the raw kwargs of what they run right now.
        running_id = str(uuid.uuid4())
        foreign.send_task(
            "qai_jobs.command",
            kwargs={"project_id": project, "cmd": "sleep 2", "env": {"API_KEY": "sk-live-4242"}},
            task_id=running_id,
        )
        active: Any = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            active = foreign.control.inspect(timeout=1).active() or {}
            if running_id in json.dumps(active):
                break
        assert running_id in json.dumps(active) and "sk-live-4242" not in json.dumps(active)
        assert client.wait_for(running_id, timeout=30)["status"] == "succeeded"
        handles = [
            client.ensure(project, files={"a.txt": "x"}, start_dev_server=False),
            client.command(project, "echo hi"),
            client.read(project, paths=["a.txt"]),
        ]
        for handle in handles:
            handle.wait(timeout=30)
        wanted = {h.id: f"qai_jobs.{h.kind}" for h in handles}
        tasks: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tasks = httpx.get(f"{base}/api/tasks", auth=auth, params={"limit": 1000}).json()
            if all(tasks.get(i, {}).get("state") == "SUCCESS" for i in [*wanted, foreign_id]):
                break
            time.sleep(0.2)
        for task_id, name in wanted.items():
            task = tasks.get(task_id)
            assert task is not None, f"Flower did not see {name} {task_id}"
            assert task["name"] == name and task["state"] == "SUCCESS"
            assert isinstance(task["runtime"], float) and task["runtime"] >= 0
            assert task["worker"]
        seen = tasks[foreign_id]
        assert seen["name"] == "qai_jobs.command" and "cmd" in seen["kwargs"]
        assert "API_KEY" in seen["kwargs"] and "<redacted>" in seen["kwargs"]
        assert "sk-live-4242" not in json.dumps(tasks)
        assert "sk-live-4242" not in shared_worker.log()
        assert "s3cret-pass" not in flower.log()
        # The password reaches Flower through its environment, not argv (which `ps` shows).
        assert b"s3cret-pass" not in Path(f"/proc/{flower.pid}/cmdline").read_bytes()
    finally:
        flower.stop()
