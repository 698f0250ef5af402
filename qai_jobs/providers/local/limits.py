"""Per-sandbox resource limits for the local provider.

Processes, memory and CPU time are capped with a cgroup per workspace (v1 ``pids``,
``memory`` and ``cpu`` hierarchies, or v2 where the controllers can be delegated), created
under the worker's own cgroup so a container's or systemd unit's accounting still covers the
sandboxes. RLIMIT_NPROC is
not an option here: the kernel exempts root, and for other users it counts every process of the
uid, not of one sandbox. Open files and core dumps are capped with rlimits, which do hold for
root. The cgroup also gives a complete list of a workspace's processes, so ``sleep`` and
``destroy`` can stop everything, including processes that left their session.

Without a writable cgroup the limits degrade to rlimits (plus RLIMIT_NPROC for a non-root
worker, shared by all its sandboxes) and a warning is logged once; the worker only runs so when
the operator allowed it (``WORKSPACE_LOCAL_UNLIMITED``, see ``enforced``).

A process is confined by a small /bin/sh prefix (``SandboxLimits.confine``) that joins the
cgroups and lowers the rlimits of its own pid, then execs the command; see its docstring for why
not a ``preexec_fn``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import shlex
import signal
import subprocess
import time
from pathlib import Path

from qai_jobs.config import Settings
from qai_jobs.providers.local.proc import start_time

log = logging.getLogger(__name__)
_warned: set[str] = set()  # warn once per process
GROUP = "qai-jobs"
CONTROLLERS = ("pids", "memory", "cpu")
CPU_PERIOD_US = 100_000
# The limit each controller enforces, as `doctor` and the refusal name them.
LIMIT_OF = {"pids": "processes", "memory": "memory", "cpu": "cpu"}
_v2_enabled: dict[Path, frozenset[str]] = {}


@functools.cache
def _cgroup_bases() -> tuple[tuple[str, Path], ...]:
    """(kind, parent dir for our cgroups) for each usable controller: pids, memory, cpu."""
    mounts: dict[str, Path] = {}
    v2: Path | None = None
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                _, point, fstype, opts, *_ = line.split()
                if fstype == "cgroup":
                    for ctl in CONTROLLERS:
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
        if ctl in CONTROLLERS:
            return ctl, path
    return controllers, path


def _writable_parent(base: Path) -> bool:
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(base, os.W_OK)


def _delegate_v2(base: Path) -> bool:
    """Enable pids, memory and cpu for our children, each on its own (one the parent does not
    delegate must not cost the others); fails (EBUSY) when the parent holds processes."""
    enabled = set()
    for ctl in CONTROLLERS:
        try:
            (base / "cgroup.subtree_control").write_text(f"+{ctl}")
        except OSError:
            continue
        enabled.add(ctl)
    _v2_enabled[base] = frozenset(enabled)
    return bool(enabled)


def enforced() -> set[str]:
    """The limits a cgroup enforces on this host: of "processes", "memory", "cpu"."""
    found: set[str] = set()
    for kind, base in _cgroup_bases():
        ctls = _v2_enabled.get(base, frozenset()) if kind == "v2" else {kind}
        found.update(LIMIT_OF[ctl] for ctl in ctls)
    return found


@functools.cache
def _nproc_flag() -> str:
    """/bin/sh's ulimit flag for RLIMIT_NPROC: -u in bash (where -p is the pipe size), -p in
    dash and ash, which have no -u. Only needed without cgroups, so probed on first use."""
    probe = subprocess.run(
        ["/bin/sh", "-c", "ulimit -u"], check=False, capture_output=True, env={"PATH": "/bin"}
    )
    return "-u" if probe.returncode == 0 else "-p"


class SandboxLimits:
    """The limits of one workspace, named by its sandbox id."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name

    @property
    def cgroups(self) -> list[tuple[str, Path]]:
        return [(kind, base / self.name) for kind, base in _cgroup_bases()]

    def prepare(self) -> list[tuple[str, Path]]:
        """Create the workspace's cgroups and write their limits; [] when none is usable."""
        made: list[tuple[str, Path]] = []
        memory = self.settings.workspace_local_max_memory_mb * 1024 * 1024
        procs = self.settings.workspace_local_max_processes
        quota = max(1000, int(self.settings.workspace_local_max_cpus * CPU_PERIOD_US))
        for kind, path in self.cgroups:
            ctls = _v2_enabled.get(path.parent, frozenset()) if kind == "v2" else {kind}
            try:
                path.mkdir(exist_ok=True)
                if kind == "pids":
                    (path / "pids.max").write_text(str(procs))
                if kind == "memory":
                    (path / "memory.limit_in_bytes").write_text(str(memory))
                if kind == "cpu":
                    (path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                    (path / "cpu.cfs_quota_us").write_text(str(quota))
                if "pids" in ctls and kind == "v2":
                    (path / "pids.max").write_text(str(procs))
                if "memory" in ctls and kind == "v2":
                    (path / "memory.max").write_text(str(memory))
                    with contextlib.suppress(OSError):
                        (path / "memory.swap.max").write_text("0")
                if "cpu" in ctls and kind == "v2":
                    (path / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            except OSError as exc:
                log.warning("cannot set up cgroup %s: %s", path, exc.strerror)
                continue
            made.append((kind, path))
        if not made and "cgroup" not in _warned:
            _warned.add("cgroup")
            log.warning("no writable cgroup: local sandboxes run without process and memory limits")
        return made

    def confine(self, cgroups: list[tuple[str, Path]]) -> list[str]:
        """An argv prefix that joins the cgroups, lowers the rlimits, then execs the command.

        A shell does this rather than a ``preexec_fn``: with a preexec_fn CPython has to fork()
        the whole worker (page tables of a 100 MB heap, and at-fork hooks: milliseconds), while
        without one it vfork()s. The limits still hold from the command's first instruction, so
        nothing can fork its way out before the cgroup is joined.

        Protocol with ``proc._popen``: the shell's stdin is a pipe to the spawner. Any
        failure is reported on it before the shell exits; on success the command is exec'd with
        stdin from /dev/null, which closes the pipe without a word.
        """
        # Moving a process (cgroup.procs) write-locks a global percpu rwsem: an RCU grace period,
        # 10 ms and more once migrations are a few ms apart, as commands of a project are. The
        # kernel (5.19+) skips that lock when a thread moves itself ("0" into v1's per-thread
        # `tasks`), and the shell is single-threaded: the same move, without the wait. v2 has
        # no such file for a domain cgroup, so it pays the lock.
        steps = [
            f"echo 0 >{shlex.quote(str(path / ('cgroup.procs' if kind == 'v2' else 'tasks')))}"
            for kind, path in cgroups
        ]
        files, _ = self._rlimit(
            self.settings.workspace_local_max_open_files, resource.RLIMIT_NOFILE
        )
        # Without a flag ulimit sets the soft and the hard limit (dash, bash, ash alike), so the
        # sandbox cannot raise them again.
        steps += [f"ulimit -n {files}", "ulimit -c 0"]
        if not cgroups and os.geteuid() != 0:
            nproc = self.settings.workspace_local_max_processes
            steps.append(f"ulimit {_nproc_flag()} {nproc}")
        # A brace group runs in the shell itself (a subshell's limits would be lost); its error
        # messages (a failed redirection names the file and errno) go to the spawner.
        script = (
            "{ " + " && ".join(steps) + "; } 2>&0 || { echo 'cannot set limits' >&0; exit 1; }\n"
            'exec "$@" </dev/null'
        )
        return ["/bin/sh", "-c", script, "sh"]

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
