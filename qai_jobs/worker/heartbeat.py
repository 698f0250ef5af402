"""The heartbeat: renews a project's lease (and the running action's beat) while work goes on."""

from __future__ import annotations

import threading
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.config import Settings
from qai_jobs.db import ordering
from qai_jobs.errors import LeaseLost


class Heartbeat(threading.Thread):
    """Renews the lease and the running action's heartbeat until stopped."""

    def __init__(self, engine: Engine, lease: ordering.Lease, settings: Settings):
        super().__init__(name=f"qai-heartbeat-{lease.project_id}", daemon=True)
        self.engine = engine
        self.lease = lease
        self.settings = settings
        self.current: uuid.UUID | None = None
        self.lost = threading.Event()
        # Not `_stop`: that name is a method of Thread, used after fork.
        self._halt = threading.Event()

    def run(self) -> None:
        renewed = time.monotonic()
        while not self._halt.wait(self.settings.workspace_heartbeat_seconds):
            try:
                with self.engine.begin() as conn:
                    held = ordering.renew(
                        conn, self.lease, self.settings.lease_seconds, self.current
                    )
            except sa.exc.SQLAlchemyError:
                # Postgres may be restarting: try again next beat, but once the lease could
                # have expired, another worker may hold the project: we must stop.
                if time.monotonic() - renewed >= self.settings.lease_seconds:
                    self.lost.set()
                    return
                continue
            if not held:
                self.lost.set()
                return
            renewed = time.monotonic()

    def check(self) -> None:
        """Raise LeaseLost if the lease is (or may be) gone: nothing more may be done."""
        if self.lost.is_set():
            raise LeaseLost(f"lease {self.lease.gen} of {self.lease.project_id} was lost")

    def stop(self) -> None:
        self._halt.set()
