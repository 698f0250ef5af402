"""The lease's keeper while a project's actions run: renew it, and stop work that must stop.

Two threads per held lease. The *renewer* extends the lease (and the running action's beat)
every heartbeat. The *watchdog* never touches the database: it only looks at the clock, so a
renewal that hangs (a Postgres cut off without a reset) cannot keep it from acting:

* Lost lease. Once no renewal has succeeded for a lease's lifetime minus one heartbeat, or a
  renewal found the lease gone, another worker may soon take the project: the running action's
  work is stopped at once (its Cancel fires with LeaseLost), a heartbeat before anyone else can
  hold the lease, so two actions of one project never run at the same time.
* Deadline. An action still running at its deadline (a command: its timeout plus a margin) is
  cancelled with DeadlineExceeded. If the call does not come back within a grace period (a hung
  SDK call), it is abandoned: the watchdog settles the action itself, fenced by the lease, gives
  the lease back and hands the project to another drain, so the project moves on.
* Held stages. A young action's stage notices wait to go out with its done (progress.py); once
  it is no longer young the watchdog has them sent, so a watcher sees the stage of an action
  that sits in one long provider call. It wakes sooner while a stage waits for that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from qai_jobs.cancel import Cancel
from qai_jobs.config import Settings
from qai_jobs.db import ordering
from qai_jobs.errors import DeadlineExceeded, LeaseLost
from qai_jobs.logs import for_action
from qai_jobs.worker.progress import Notices

# How long a cancelled call gets to come back before the watchdog settles the action itself,
# in heartbeats (and at least a second).
ABANDON_AFTER_BEATS = 2


@dataclass
class Watched:
    """The action being run, as the watchdog sees it."""

    action: ordering.Started
    cancel: Cancel
    deadline: float  # time.monotonic() value
    notices: Notices  # what its watchers are told (progress.py)
    abandon_at: float | None = None


class Heartbeat:
    """Keeps ``lease`` while ``start()``-ed; ``watch()`` each action, ``stop()`` at the end."""

    def __init__(
        self,
        engine: Engine,
        lease: ordering.Lease,
        settings: Settings,
        abandon: Callable[[Watched], None] | None = None,
    ):
        self.engine = engine
        self.lease = lease
        self.settings = settings
        self.abandon = abandon
        self.lost = threading.Event()
        self.abandoned = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._watched: Watched | None = None
        self._renewed = time.monotonic()
        # The running action's latest stage, recorded by the next renewal (no transaction of
        # its own), and what was recorded last.
        self._stage: dict[str, Any] | None = None
        self._stage_written: dict[str, Any] | None = ordering.START_STAGE
        name = f"qai-heartbeat-{lease.project_id}"
        self._renewer = threading.Thread(target=self._renew_loop, name=name, daemon=True)
        self._watchdog = threading.Thread(target=self._watch_loop, name=name + "-dog", daemon=True)

    # -- the drain's side ---------------------------------------------------------------------
    def start(self) -> None:
        self._renewer.start()
        self._watchdog.start()

    def stop(self) -> None:
        self._halt.set()
        with self._lock:
            watched = self._watched
        if watched is not None:
            # Still watched: the action did not settle here (lease lost, abandoned, the drain
            # failed), so no done follows its held stages (Notices.drop says why).
            watched.notices.drop()

    def watch(
        self, action: ordering.Started, cancel: Cancel, deadline_s: float, notices: Notices
    ) -> None:
        with self._lock:
            self._watched = Watched(action, cancel, time.monotonic() + deadline_s, notices)
        if self.lost.is_set():
            cancel.fire(self._lost_error())

    def done(self) -> None:
        with self._lock:
            self._watched = None
            self._stage = None
            self._stage_written = ordering.START_STAGE  # what starting an action writes

    def note_stage(self, stage: dict[str, Any]) -> None:
        """The running action reached ``stage``: recorded with the next heartbeat."""
        with self._lock:
            self._stage = stage

    def check(self) -> None:
        """Raise LeaseLost if the lease is (or may be) gone: nothing more may be done."""
        if self.lost.is_set():
            raise self._lost_error()

    # -- threads ------------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        while not self._halt.wait(self.settings.workspace_heartbeat_seconds):
            with self._lock:
                current = self._watched.action.id if self._watched else None
                stage = self._stage if self._stage != self._stage_written else None
            ttl = self.settings.lease_seconds
            try:
                with self.engine.begin() as conn:
                    held = ordering.renew(conn, self.lease, ttl, current, stage)
            except sa.exc.SQLAlchemyError:
                continue  # Postgres may be restarting: the watchdog decides when it is too long
            if not held:
                self._lose()
                return
            self._renewed = time.monotonic()
            if stage is not None:
                with self._lock:
                    self._stage_written = stage

    def _watch_loop(self) -> None:
        beat = self.settings.workspace_heartbeat_seconds
        # Declared lost a heartbeat before the lease expires, so the work is stopped before
        # anyone else can hold the lease.
        trust = self.settings.lease_seconds - beat
        tick = min(beat / 4, 0.5)
        nap = tick
        while not self._halt.wait(nap):
            now = time.monotonic()
            if now - self._renewed >= trust:
                self._lose()
                return
            with self._lock:
                watched = self._watched
            nap = tick
            if watched is None:
                continue
            watched.notices.poke(now)  # never waits for Redis
            due = watched.notices.due_in(now)
            if due is not None:  # a held stage: wake when it is to be sent, not a tick later
                nap = min(tick, max(due, 0.01))
            if watched.abandon_at is None and now >= watched.deadline:
                action = watched.action
                for_action(self.lease.project_id, action.id).warning(
                    "%s passed its deadline: stopping it", action.kind
                )
                watched.cancel.fire(DeadlineExceeded(f"the {action.kind} passed its deadline"))
                watched.abandon_at = now + max(1.0, ABANDON_AFTER_BEATS * beat)
            elif watched.abandon_at is not None and now >= watched.abandon_at:
                if self.abandon is not None:
                    self.abandon(watched)
                self.abandoned.set()
                self.lost.set()  # whatever the stuck call does later, it records nothing
                return

    def _lose(self) -> None:
        self.lost.set()
        with self._lock:
            watched = self._watched
        if watched is not None:
            watched.cancel.fire(self._lost_error())

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(f"lease {self.lease.gen} of {self.lease.project_id} was lost")
