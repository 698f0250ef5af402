"""The local provider's orphan sweep: sandbox processes on this host that nothing owns.

Dev servers and the network helpers outlive their worker by design, so a workspace whose row
or directory went away behind our back (a test stack torn down, a database dropped, a tree
deleted by hand) leaves them running for ever: bubblewrap with the dev server inside, pasta,
dnsmasq. They are found from ``/proc`` by what names their sandbox's directory under this
installation's WORKSPACE_ROOT: bwrap's binds, nsenter's and pasta's namespace file, dnsmasq's
config file, and (without isolation) the HOME a command runs with. Never by program name
alone: other installations on the machine run the same programs for their own sandboxes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from qai_jobs.errors import QaiJobsError
from qai_jobs.providers.local.disk import SandboxDisk, orphan_images
from qai_jobs.providers.local.layout import Layout
from qai_jobs.providers.local.net import SandboxNet
from qai_jobs.providers.local.proc import start_time, stop_tree
from qai_jobs.providers.local.store import PortRegistry

log = logging.getLogger(__name__)
# Programs whose arguments name their sandbox's files (nsenter only until it execs bwrap).
_NAMED_BY_ARGS = ("bwrap", "nsenter", "pasta", "dnsmasq")


@dataclass(frozen=True)
class Stopped:
    sandbox: str
    processes: int
    why: str  # "unowned" (no workspace row holds it) or "tree gone"


def sandbox_processes(root: Path) -> dict[str, list[tuple[int, int]]]:
    """Sandbox name -> (pid, start time) of each live process of a sandbox under ``root``."""
    prefix = str(root).rstrip("/") + "/"
    found: dict[str, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        name = _named_by_args(pid, prefix) or _named_by_home(pid, prefix)
        started = start_time(pid) if name else None
        if name and started is not None and pid != os.getpid():
            found.setdefault(name, []).append((pid, started))
    return found


def _sandbox_of(text: str, prefix: str) -> str | None:
    """The first path component after ``prefix`` in ``text``, if a path goes on below it."""
    at = text.find(prefix)
    if at < 0:
        return None
    name, sep, _ = text[at + len(prefix) :].partition("/")
    return name if sep and name not in ("", ".", "..") else None


def _named_by_args(pid: int, prefix: str) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return None
    program = os.path.basename(argv[0].decode(errors="replace")) if argv else ""
    if not program.startswith(_NAMED_BY_ARGS):  # pasta runs as pasta.avx2 on x86-64
        return None
    for arg in argv[1:]:
        name = _sandbox_of(arg.decode(errors="replace"), prefix)
        if name is not None:
            return name
    return None


def _named_by_home(pid: int, prefix: str) -> str | None:
    """Without isolation a sandbox's commands run with HOME=<root>/<name>/home."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"HOME="):
            home = item[5:].decode(errors="replace")
            name = _sandbox_of(home, prefix)
            return name if name is not None and home == f"{prefix}{name}/home" else None
    return None


def sweep(
    root: Path,
    found: dict[str, list[tuple[int, int]]],
    owned: Collection[str],
    busy_projects: Collection[str],
    ports: PortRegistry,
    deployment: str,
) -> list[Stopped]:
    """Stop the processes of every sandbox in ``found`` whose tree is gone, or that is this
    ``deployment``'s and that ``owned`` (the local sandbox ids workspace rows hold) does not
    name. A sandbox of a project with work in flight is spared while its tree stands: its
    first ensure has not committed the row that will name it. Read ``owned`` after listing
    ``found``, in one snapshot with ``busy_projects``."""
    stopped: list[Stopped] = []
    for name, procs in sorted(found.items()):
        layout = Layout(root / name)
        tree_gone = not layout.tree.is_dir()
        meta = layout.read_meta()
        ours = meta.get("deployment") == deployment
        spared = not ours or name in owned or meta.get("project_id") in busy_projects
        if spared and not tree_gone:
            continue
        stop_tree(procs)
        with contextlib.suppress(QaiJobsError, OSError):
            SandboxNet(layout.base).down()  # its helpers, and the namespace they served
        if tree_gone:
            # Nothing of it is left to keep: finish the deletion, give its port back.
            ports.release(name)
            with contextlib.suppress(QaiJobsError, OSError):
                SandboxDisk.of(layout.base).remove()
            shutil.rmtree(layout.base, ignore_errors=True)
        why = "tree gone" if tree_gone else "unowned"
        log.warning("stopped %d process(es) of orphan local sandbox %s (%s)", len(procs), name, why)
        stopped.append(Stopped(name, len(procs), why))
    return stopped


def sweep_disks(root: Path, ports: PortRegistry) -> list[str]:
    """Unmount and delete the disk images no sandbox holds (disk.orphan_images): a create
    killed half-way, or a sandbox directory deleted by hand, would keep them for ever."""
    removed: list[str] = []
    for name in orphan_images(root):
        disk = SandboxDisk(root, name)
        try:
            disk.remove()
        except (QaiJobsError, OSError) as exc:
            log.warning("cannot remove the orphan disk of local sandbox %s: %s", name, exc)
            continue
        if not (disk.base / "meta.json").exists():
            shutil.rmtree(disk.base, ignore_errors=True)
            ports.release(name)
        log.warning("removed the orphan disk of local sandbox %s", name)
        removed.append(name)
    return removed
