"""Which per-sandbox limits this host enforces, and the refusal when some cannot be.

A worker that would run sandboxes without a disk quota, a CPU, memory or process cap or a
sized /tmp does not start the local provider unless the operator said so
(``WORKSPACE_LOCAL_UNLIMITED=true``): one workspace could otherwise fill the disk every other
workspace, the snapshots and maybe Postgres live on, or starve the host. ``doctor`` prints the
same findings.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass

from qai_jobs.config import Settings
from qai_jobs.providers.local import disk, limits
from qai_jobs.providers.local.jail import SAFE_PATH

_NO_CGROUP = "no writable cgroup with this controller"


@dataclass(frozen=True)
class InForce:
    enforced: dict[str, str]  # limit -> its value, as configured
    missing: dict[str, str]  # limit -> why it is not enforced

    def line(self) -> str:
        shown = [f"{name} {value}" for name, value in self.enforced.items()]
        shown += [f"{name} NOT enforced ({why})" for name, why in self.missing.items()]
        return "; ".join(shown)


@functools.cache
def bwrap_sizes_tmpfs() -> bool:
    """bubblewrap 0.6 and later size a tmpfs (``--size``); older ones make it half the RAM."""
    try:
        out = subprocess.run(
            ["bwrap", "--help"],
            capture_output=True,
            text=True,
            env={"PATH": SAFE_PATH},
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in out.stdout + out.stderr


def in_force(settings: Settings) -> InForce:
    enforced: dict[str, str] = {}
    missing: dict[str, str] = {}
    why_disk = disk.unsupported()
    if why_disk is None:
        enforced["disk"] = f"{settings.workspace_local_max_disk_mb} MiB"
    else:
        missing["disk"] = why_disk
    cgroups = limits.enforced()
    values = {
        "cpu": f"{settings.workspace_local_max_cpus:g} CPUs",
        "memory": f"{settings.workspace_local_max_memory_mb} MiB",
        "processes": str(settings.workspace_local_max_processes),
    }
    for name, value in values.items():
        if name in cgroups:
            enforced[name] = value
        else:
            missing[name] = _NO_CGROUP
    if settings.isolation != "bwrap":
        missing["tmp"] = "no isolation: /tmp is the host's"
    elif bwrap_sizes_tmpfs():
        enforced["tmp"] = f"{settings.workspace_local_tmp_mb} MiB"
    else:
        missing["tmp"] = "bubblewrap older than 0.6 cannot size a tmpfs"
    enforced["open files"] = str(settings.workspace_local_max_open_files)
    return InForce(enforced, missing)


def refusal(settings: Settings) -> str | None:
    """The one line with which the local provider refuses to start, or None."""
    if settings.isolation != "bwrap" or settings.workspace_local_unlimited:
        return None
    found = in_force(settings)
    if not found.missing:
        return None
    why = "; ".join(f"{name}: {reason}" for name, reason in found.missing.items())
    return (
        f"local sandboxes cannot be limited here ({why}); fix that, or set "
        "WORKSPACE_LOCAL_UNLIMITED=true to run them without those limits"
    )
