"""Sandbox networks and disks a test run leaves behind: tests that end with a workspace still
awake (on purpose or by failing) would leave its namespace and its disk mounted and its pasta
and dnsmasq running after the run's temporary directories are gone."""

from __future__ import annotations

import contextlib
from pathlib import Path

from qai_jobs.providers.local.net import SandboxNet


def release_under(root: Path) -> int:
    """Take down every sandbox network mounted below ``root``; how many there were."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = 0
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh if " - nsfs " in line]
    for point in points:
        path = Path(point.replace("\\040", " "))
        if str(path).startswith(prefix) and path.name == "ns" and path.parent.name == "net":
            found += 1
            with contextlib.suppress(Exception):
                SandboxNet(path.parent.parent).down()
    return found


def stop_processes_under(root: Path) -> int:
    """Stop every sandbox process (bwrap and what runs in it, pasta, dnsmasq) whose arguments
    name a path below ``root``: dev servers outlive workers by design, and a test that ends
    with a workspace awake would leave them running after the run; how many there were."""
    from qai_jobs.providers.local.orphans import sandbox_processes
    from qai_jobs.providers.local.proc import stop_tree

    found = [proc for procs in sandbox_processes(root.resolve()).values() for proc in procs]
    stop_tree(found, grace=1.0)
    return len(found)


def release_disks_under(root: Path) -> int:
    """Unmount and delete every sandbox disk (disk.py) mounted below ``root``; how many."""
    from qai_jobs.providers.local.disk import SandboxDisk

    prefix = str(root.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh if " - ext4 /dev/loop" in line]
    found = 0
    for point in points:
        path = Path(point.replace("\\040", " "))
        if str(path).startswith(prefix):
            found += 1
            with contextlib.suppress(Exception):
                SandboxDisk.of(path.parent).remove()  # the mount point is <sandbox>/disk
    return found


def lose_sandbox(base: Path) -> None:
    """A sandbox directory lost behind the provider's back (a host's disk replaced): its disk
    image goes with it, as the directory cannot be deleted while that is mounted."""
    import shutil

    from qai_jobs.providers.local.disk import SandboxDisk

    SandboxDisk.of(base).remove()
    shutil.rmtree(base)
