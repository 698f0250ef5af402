"""Hashes of many workspace files without re-reading unchanged ones.

A delta sync asks for the hash of every path it is about to write (5,000 for a big tree);
reading and hashing each one again makes the "nothing changed" case cost as much as the cold
write. Like git's index, this keeps each file's hash beside its lstat identity (inode, size,
mtime and ctime in nanoseconds) and reads only files whose identity changed. Every parent
directory is opened once per call, without following symlinks, and a file is looked at with
``lstat`` relative to that directory fd, so a planted symlink is never followed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from .local_fs import SafeTree

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _identity(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


class HashCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, list[str]] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, separators=(",", ":")))
        os.replace(tmp, self.path)

    def hashes(self, tree: SafeTree, paths: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        dirs: dict[str, int | None] = {}
        try:
            for path in paths:
                parent, _, name = path.rpartition("/")
                if parent not in dirs:
                    dirs[parent] = tree.open_dir(parent)
                dfd = dirs[parent]
                if dfd is None:
                    continue
                digest = self._hash(dfd, name, path)
                if digest is not None:
                    found[path] = digest
        finally:
            for fd in dirs.values():
                if fd is not None:
                    os.close(fd)
        return found

    def _hash(self, dfd: int, name: str, path: str) -> str | None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # a symlink or a directory is not a file we synced
        identity = _identity(st)
        cached = self.entries.get(path)
        if cached is not None and cached[0] == identity:
            return cached[1]
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                return None  # swapped for a symlink, or gone, since the lstat
            raise
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            digest = hashlib.sha256(fh.read()).hexdigest()
        self.entries[path] = [_identity(st), digest]
        self.dirty = True
        return digest
