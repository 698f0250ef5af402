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
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.providers.local.fs import SafeTree
from qai_jobs.providers.local.streams import hash_stream

log = logging.getLogger("qai_jobs.local")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _identity(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


# Entries learnt but not yet on disk before ``save`` writes the file. Writing it is not free
# (an ext4 rename over an existing file flushes its data), and a missing entry only costs
# hashing that file again, so a sync that learnt a handful of hashes keeps them in memory.
SAVE_AFTER = 64
RACY_NS = 2_000_000_000
MEMO_SIZE = 64  # workspaces whose caches a process keeps parsed


class HashCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.entries: dict[str, list[str]] = {}
        self.unsaved = 0
        self._load()

    @classmethod
    def at(cls, path: Path) -> HashCache:
        """The process's cache for ``path``, read from disk again only if another process
        rewrote it (parsing 5,000 entries costs more than the stats it saves)."""
        cache = _open.pop(path, None)
        if cache is None:
            cache = cls(path)
        elif cache._stamp != _stamp(path):
            cache._load()
        _open[path] = cache  # most recently used last
        while len(_open) > MEMO_SIZE:
            del _open[next(iter(_open))]
        return cache

    def _load(self) -> None:
        self._stamp = _stamp(self.path)
        try:
            self.entries = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            self.entries = {}
        self.unsaved = 0

    def save(self, force: bool = False) -> None:
        """Write the entries out; never fails an action (the cache is only a shortcut)."""
        if not self.unsaved or (self.unsaved < SAVE_AFTER and not force):
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            tmp.write_text(json.dumps(self.entries, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("cannot save the hash cache %s: %s", self.path, exc.strerror)
            return
        self._stamp = _stamp(self.path)
        self.unsaved = 0

    @classmethod
    def forget(cls, path: Path) -> None:
        _open.pop(path, None)

    def hashes(
        self, tree: SafeTree, paths: Sequence[str], max_bytes: int | None = None
    ) -> dict[str, str]:
        """The hashes of those ``paths`` that are regular files of at most ``max_bytes``."""
        found: dict[str, str] = {}
        by_parent: dict[str, list[tuple[str, str]]] = {}
        for path in paths:
            parent, _, name = path.rpartition("/")
            by_parent.setdefault(parent, []).append((name, path))
        # One directory open at a time: a tree of thousands of directories must not run the
        # worker out of descriptors.
        for parent, names in by_parent.items():
            try:
                dfd = tree.open_dir(parent)
            except PermanentError as exc:
                if exc.code != ErrorCode.INVALID_PATH:
                    raise  # a planted link: path_outside_workspace, never followed
                continue  # a parent is a file: no file here
            if dfd is None:
                continue
            try:
                for name, path in names:
                    digest = self._hash(dfd, name, path, max_bytes)
                    if digest is not None:
                        found[path] = digest
            finally:
                os.close(dfd)
        return found

    def record(self, path: str, st: os.stat_result | None, digest: str) -> None:
        """Remember the hash of content just written (so the next sync only stats it); ``st``
        is None when the file changed under the write, and is then hashed when next asked."""
        if st is None:
            self.entries.pop(path, None)
            return
        self.entries[path] = [_identity(st), digest]
        self.unsaved += 1

    def _hash(self, dfd: int, name: str, path: str, max_bytes: int | None) -> str | None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # a symlink or a directory is not a file we synced
        if max_bytes is not None and st.st_size > max_bytes:
            return None  # not a file a producer sent, whatever it holds
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
            if not stat.S_ISREG(st.st_mode) or (max_bytes is not None and st.st_size > max_bytes):
                return None
            digest = hash_stream(fh, st.st_size)
        # Git's "racily clean" case: a file changed within a timestamp tick of being read here
        # could change again with the same size and times. Remember only settled files.
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
            self.entries[path] = [_identity(st), digest]
            self.unsaved += 1
        return digest


_open: dict[Path, HashCache] = {}


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
