"""Stopping an action's work at once, from another thread (its lease is lost, or its deadline).

The worker's watchdog fires the action's :class:`Cancel`; whatever runs in the sandbox on the
action's behalf registers how to stop it (kill its process tree, kill the exec in the cloud
sandbox), and the call that was waiting for it raises the reason instead of returning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from qai_jobs.errors import QaiJobsError

log = logging.getLogger(__name__)


class Cancel:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._stops: list[Callable[[], object]] = []
        self.reason: QaiJobsError | None = None

    @property
    def fired(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early (True) when fired."""
        return self._event.wait(timeout)

    def fire(self, reason: QaiJobsError) -> None:
        """Stop everything registered, once; later registrations are stopped at once."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            stops, self._stops = self._stops, []
        for stop in stops:
            _quietly(stop)

    def on_fire(self, stop: Callable[[], object]) -> Callable[[], None]:
        """Call ``stop`` when fired (now, if already); returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._stops.append(stop)

                def unregister() -> None:
                    with self._lock:
                        if stop in self._stops:
                            self._stops.remove(stop)

                return unregister
        _quietly(stop)
        return lambda: None

    def check(self) -> None:
        """Raise the reason if fired."""
        if self.reason is not None:
            raise self.reason


def _quietly(stop: Callable[[], object]) -> None:
    try:
        stop()
    except Exception:  # a stop that fails must not keep the others from running
        log.exception("stopping an action's work failed")
