"""The disk quota of one local sandbox: what it can write is a filesystem of its own.

Everything a sandbox's code can make grow (the tree, HOME with the npm cache, the dev server's
logs, the git metadata of its checkout) lives on an ext4 filesystem in a sparse image file
under ``<WORKSPACE_ROOT>/.disks/``, loop-mounted on ``<sandbox>/disk``. A workspace that fills
it gets ENOSPC inside that filesystem only: the host's disk, the snapshots, Postgres and the
other workspaces keep their space. The worker's own small files (metadata, process records,
the network helpers' files) stay beside it, so a full workspace can still be used to free
space, be put to sleep and be destroyed. Chosen over project quotas, which need a filesystem
made and mounted for them (``prjquota``) that most hosts do not have; a loop image needs only
root, ``/dev/loop-control`` and e2fsprogs, which every Debian has.

The image is sparse and deleted blocks are given back (``discard`` punches holes in it), so a
workspace costs the host what it holds, not its quota; ext4's own metadata takes a few percent
of the quota (more, relatively, on small ones).

A mount does not survive a host reboot while the image does: ``mount`` brings it back before
the directory is used.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from qai_jobs.errors import TransientError
from qai_jobs.providers.local.jail import SAFE_PATH

DISKS = ".disks"
MOUNT = "disk"
_TOOL_ENV = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
_MNT_DETACH = 2


class SandboxDisk:
    """The image of one sandbox ``root/name``, and its mount point in that directory."""

    def __init__(self, root: Path, name: str) -> None:
        self.base = root / name
        self.point = self.base / MOUNT
        self.image = root / DISKS / f"{name}.img"

    @classmethod
    def of(cls, base: Path) -> SandboxDisk:
        return cls(base.parent, base.name)

    def mounted(self) -> bool:
        return os.path.ismount(self.point)

    def create(self, size_mb: int) -> None:
        """A fresh filesystem of ``size_mb`` MiB, mounted at ``point``."""
        self.image.parent.mkdir(mode=0o700, exist_ok=True)
        with open(self.image, "xb") as fh:
            fh.truncate(size_mb * 1024 * 1024)
        try:
            _tool(
                [
                    "mkfs.ext4", "-q", "-F", "-T", "default", "-m", "0",
                    # Inode tables and the journal are left as the sparse file's zeros rather
                    # than written out (with noinit_itable below, never in the background).
                    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                    str(self.image),
                ],
                "make the workspace's filesystem",
            )  # fmt: skip
            self.mount()
        except BaseException:
            self.image.unlink(missing_ok=True)
            raise
        self.point.chmod(0o700)
        (self.point / "lost+found").rmdir()  # nothing but fsck writes there

    def mount(self) -> None:
        """Mount the image at ``point``, if it is not already."""
        if self.mounted():
            return
        self.point.mkdir(mode=0o700, parents=True, exist_ok=True)
        _tool(
            [
                "mount", "-t", "ext4", "-o", "loop,noinit_itable,discard,nodev,nosuid",
                str(self.image), str(self.point),
            ],
            "mount the workspace's filesystem",
        )  # fmt: skip

    def remove(self) -> None:
        """Unmount (lazily: a process still holding a file keeps only its own view) and delete
        the image; the loop device goes with the last reference (``mount -o loop`` autoclear)."""
        if self.mounted():
            libc_umount(self.point)
        self.image.unlink(missing_ok=True)


def libc_umount(path: Path) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise TransientError(f"cannot unmount {path.name}: {os.strerror(err)}")


def orphan_images(root: Path, min_age_s: float = 300.0) -> list[str]:
    """Sandbox names whose image nothing holds: no sandbox metadata in it (a create that died
    before writing any, or a directory deleted by hand), and older than a create takes."""
    found: list[str] = []
    try:
        entries = list(os.scandir(root / DISKS))
    except OSError:
        return found
    now = time.time()
    for entry in entries:
        name = entry.name.removesuffix(".img")
        if not entry.name.endswith(".img") or name.startswith("."):
            continue
        try:
            old = now - entry.stat().st_mtime > min_age_s
        except OSError:
            continue
        disk = SandboxDisk(root, name)
        # Unmounted with its directory still there is a host restart's doing: ``mount`` will
        # bring it back on the sandbox's next action.
        if disk.mounted():
            orphan = not (disk.base / "meta.json").exists()
        else:
            orphan = not disk.base.exists()
        if old and orphan:
            found.append(name)
    return found


def _tool(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=_TOOL_ENV, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TransientError(f"cannot {what}: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-300:]
        raise TransientError(f"cannot {what}: {detail or f'exit code {proc.returncode}'}")


@functools.cache
def unsupported() -> str | None:
    """Why this host cannot give sandboxes a disk quota, or None: tried for real, once per
    process, with a small image (root, loop devices and e2fsprogs are all needed, and a
    container may have the files but not the right to mount)."""
    missing = [t for t in ("mkfs.ext4", "mount") if shutil.which(t, path=SAFE_PATH) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: e2fsprogs, mount)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing)"
    with tempfile.TemporaryDirectory(prefix="qai-disk-probe-") as tmp:
        disk = SandboxDisk(Path(tmp), "probe")
        try:
            disk.create(32)
        except TransientError as exc:
            return f"{exc} (needs root with CAP_SYS_ADMIN and loop devices)"
        finally:
            try:
                disk.remove()
            except TransientError:
                pass
    return None
