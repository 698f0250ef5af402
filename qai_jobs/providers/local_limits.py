"""Per-sandbox resource limits for the local provider.

Processes and memory are capped with a cgroup per workspace (v1 ``pids`` + ``memory``
hierarchies, or v2 where the controllers can be delegated), created under the worker's own
cgroup so a container's or systemd unit's accounting still covers the sandboxes. RLIMIT_NPROC is
not an option here: the kernel exempts root, and for other users it counts every process of the
uid, not of one sandbox. Open files and core dumps are capped with rlimits, which do hold for
root. The cgroup also gives a complete list of a workspace's processes, so ``sleep`` and
``destroy`` can stop everything, including processes that left their session.

Without a writable cgroup the limits degrade to rlimits (plus RLIMIT_NPROC for a non-root
worker, shared by all its sandboxes) and a warning is logged once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from .local_proc import start_time

log = logging.getLogger(__name__)
_warned: set[str] = set()  # warn once per process
GROUP = "qai-jobs"


@functools.cache
def _cgroup_bases() -> tuple[tuple[str, Path], ...]:
    """(kind, parent dir for our cgroups) for each usable controller: pids and memory."""
    mounts: dict[str, Path] = {}
    v2: Path | None = None
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                _, point, fstype, opts, *_ = line.split()
                if fstype == "cgroup":
                    for ctl in ("pids", "memory"):
                        if ctl in opts.split(","):
                            mounts[ctl] = Path(point)
                elif fstype == "cgroup2" and v2 is None:
                    v2 = Path(point)
        with open("/proc/self/cgroup") as fh:
            own = dict(_own_cgroup(line) for line in fh)
    except OSError:
        return ()
    bases: list[tuple[str, Path]] = []
    for ctl, mount in mounts.items():
        base = mount / own.get(ctl, "").lstrip("/") / GROUP
        if _writable_parent(base):
            bases.append((ctl, base))
    if not bases and v2 is not None:
        base = v2 / own.get("", "").lstrip("/") / GROUP
        if _writable_parent(base) and _delegate_v2(base):
            bases.append(("v2", base))
    return tuple(bases)


def _own_cgroup(line: str) -> tuple[str, str]:
    _, controllers, path = line.rstrip("\n").split(":", 2)
    for ctl in controllers.split(","):
        if ctl in ("pids", "memory"):
            return ctl, path
    return controllers, path


def _writable_parent(base: Path) -> bool:
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(base, os.W_OK)


def _delegate_v2(base: Path) -> bool:
    """Enable pids+memory for our children; fails (EBUSY) when the parent holds processes."""
    try:
        (base / "cgroup.subtree_control").write_text("+pids +memory")
    except OSError:
        return False
    return True


class Limits:
    """The limits of one workspace, named by its sandbox id."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name

    @property
    def cgroups(self) -> list[tuple[str, Path]]:
        return [(kind, base / self.name) for kind, base in _cgroup_bases()]

    def prepare(self) -> list[Path]:
        """Create the workspace's cgroups and write their limits; [] when none is usable."""
        made: list[Path] = []
        memory = self.settings.workspace_local_max_memory_mb * 1024 * 1024
        procs = self.settings.workspace_local_max_processes
        for kind, path in self.cgroups:
            try:
                path.mkdir(exist_ok=True)
                if kind in ("pids", "v2"):
                    (path / "pids.max").write_text(str(procs))
                if kind == "memory":
                    (path / "memory.limit_in_bytes").write_text(str(memory))
                if kind == "v2":
                    (path / "memory.max").write_text(str(memory))
                    with contextlib.suppress(OSError):
                        (path / "memory.swap.max").write_text("0")
            except OSError as exc:
                log.warning("cannot set up cgroup %s: %s", path, exc.strerror)
                continue
            made.append(path)
        if not made and "cgroup" not in _warned:
            _warned.add("cgroup")
            log.warning("no writable cgroup: local sandboxes run without process and memory limits")
        return made

    def preexec(self, cgroups: list[Path]) -> Callable[[], None]:
        """What the child runs between fork and exec: join the cgroups, lower the rlimits.

        Only raw os calls here: the parent may have threads, so nothing that takes a lock.
        """
        files = self._rlimit(self.settings.workspace_local_max_open_files, resource.RLIMIT_NOFILE)
        nproc = None
        if not cgroups and os.geteuid() != 0:
            nproc = self.settings.workspace_local_max_processes
        targets = [str(p / "cgroup.procs") for p in cgroups]

        def run() -> None:
            for target in targets:
                fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, files)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if nproc is not None:
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

        return run

    @staticmethod
    def _rlimit(wanted: int, which: int) -> tuple[int, int]:
        _, hard = resource.getrlimit(which)
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        return value, value

    def pids(self) -> set[int]:
        """Live processes of the workspace (a zombie stays listed until its parent reaps it)."""
        found: set[int] = set()
        for _, path in self.cgroups:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return {pid for pid in found if start_time(pid) is not None}

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process of the workspace, until none is left (a fork loop races us)."""
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self) -> None:
        self.kill_all()
        for _, path in self.cgroups:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # exiting processes still counted for a moment
