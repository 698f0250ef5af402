"""A Redis server of its own for the fake provider's sandboxes during `qai-jobs bench`.

The fake provider stands in for a remote sandbox service (Modal, E2B), but keeps its
sandboxes, fault list and journal in Redis so every worker process sees them. On the broker's
server those commands (about eight per `write`) would be counted as the job system's own;
with ``redis-server`` on the PATH the bench gives the fake provider a throwaway server and
reports its commands apart. Without one, the fake provider stays on the broker and the
per-action Redis figure includes it (the report says which).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import redis

from qai_jobs.providers.fake.store import STORE_URL_ENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeStoreServer:
    """``redis-server`` on a free loopback port, nothing kept on disk; stopped by ``stop``."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            return
        port = _free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    return
                time.sleep(0.05)

    def env(self) -> dict[str, str]:
        """What a worker needs to keep its fake sandboxes here (nothing without a server)."""
        return {STORE_URL_ENV: self.url} if self.url else {}

    def commands(self) -> int:
        """Commands the fake provider sent so far (0 without a server of its own)."""
        if self.url is None:
            return 0
        stats = redis.Redis.from_url(self.url).info("commandstats")
        return sum(
            int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_ping")
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        self.url = None
