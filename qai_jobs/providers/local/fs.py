"""Host-side file I/O inside a workspace tree that never follows a symbolic link.

Sandboxed code can plant a symlink anywhere in its tree (``ln -s /etc evil``) and swap it at any
moment, so checking a resolved path and then using it is racy. Every operation here walks the
path one component at a time with ``dir_fd`` + ``O_NOFOLLOW`` instead: a symlink met as a parent
directory or as the file itself is refused, never followed, and there is no check-then-use gap.
Symlinks are refused even when they point inside the tree: telling "inside" from "outside"
needs a resolution that the sandbox can race.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from qai_jobs.errors import ErrorCode, PermanentError, ProviderError, TransientError
from qai_jobs.providers.local.streams import CHUNK, TreeFile
from qai_jobs.sync import IGNORED_DIRS, is_ignored

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted by the sandbox must not hang the worker on open.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Conditions that may clear by themselves (disk freed, descriptors released): retry the action.
_TRANSIENT_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.EIO, errno.EAGAIN, errno.EINTR, errno.ENOMEM, errno.EBUSY}
)
# A workspace's disk is its own (disk.py): full stays full until something in it is deleted,
# so retrying would only delay the answer.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def os_error(exc: OSError, what: str, path: str) -> ProviderError:
    """Map an OSError onto the provider error kinds, naming only the workspace-relative path."""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
    message = f"{what} {path!r} failed: {reason}"
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientError(message)
    if exc.errno in _FULL_ERRNOS:
        return PermanentError(
            f"{message} (the workspace's disk is full: delete files in it, or raise "
            "WORKSPACE_LOCAL_MAX_DISK_MB)",
            code=ErrorCode.PROVIDER_NO_SPACE,
        )
    if exc.errno == errno.ENAMETOOLONG:
        return PermanentError(message, code=ErrorCode.INVALID_PATH)
    return PermanentError(message, code=ErrorCode.FILESYSTEM_ERROR)


def _outside(path: str) -> PermanentError:
    return PermanentError(
        f"{path!r} goes through a symbolic link; refusing to follow it out of the workspace",
        code=ErrorCode.PATH_OUTSIDE_WORKSPACE,
    )


def _split(path: str) -> tuple[list[str], str]:
    parts = path.split("/")
    # Paths are validated upstream (schemas.check_path); this is the last line of defence.
    if not path or path.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise PermanentError(f"invalid path {path!r}", code=ErrorCode.INVALID_PATH)
    return parts[:-1], parts[-1]


class SafeTree:
    """One workspace tree on the host; every path is relative to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _root_fd(self) -> int:
        try:
            return os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise os_error(exc, "open workspace", ".") from None

    def _parent(self, path: str, parts: list[str], *, create: bool) -> int | None:
        """An fd of the parent directory of ``path``; None if missing and not ``create``."""
        fd = self._root_fd()
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        self._classify(fd, part, path)
                    raise
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            raise os_error(exc, "open", path) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_dir(self, path: str) -> int | None:
        """An fd of directory ``path`` ("" is the root), walked without following symlinks;
        None if it does not exist. The caller closes it."""
        if not path:
            return self._root_fd()
        return self._parent(path, path.split("/"), create=False)

    @staticmethod
    def _classify(dir_fd: int, name: str, path: str) -> None:
        """Raise the right error for a component that is not a plain directory."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise _outside(path)
        raise PermanentError(f"{path!r}: a parent is not a directory", code=ErrorCode.INVALID_PATH)

    def size(self, path: str) -> int | None:
        """The size of regular file ``path`` (from a stat, nothing read); None if missing."""
        parts, name = _split(path)
        dfd = self._parent(path, parts, create=False)
        if dfd is None:
            return None
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error(exc, "read", path) from None
        finally:
            os.close(dfd)
        if stat.S_ISLNK(st.st_mode):
            raise _outside(path)
        if not stat.S_ISREG(st.st_mode):
            raise PermanentError(f"{path!r} is not a regular file", code=ErrorCode.NOT_A_FILE)
        return st.st_size

    def read(self, path: str, max_bytes: int | None = None) -> bytes | None:
        """The file's bytes; with ``max_bytes``, never more than one byte past it (the caller
        refuses a file that has more: the sandbox decides how big its files are)."""
        parts, name = _split(path)
        dfd = self._parent(path, parts, create=False)
        if dfd is None:
            return None
        try:
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _outside(path) from None
                raise os_error(exc, "read", path) from None
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise PermanentError(
                        f"{path!r} is not a regular file", code=ErrorCode.NOT_A_FILE
                    )
                return fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        except OSError as exc:
            raise os_error(exc, "read", path) from None
        finally:
            os.close(dfd)

    def write(
        self, path: str, data: bytes | IO[bytes], mode: int | None = None
    ) -> os.stat_result | None:
        """Atomically replace ``path`` (temp file + rename), keeping an existing file's mode.
        ``data`` may be a binary stream (a snapshot's member), copied in chunks.

        Returns the file's lstat when it is still the inode we wrote, unmodified since (for
        the hash cache); None if something in the sandbox replaced or rewrote it meanwhile."""
        parts, name = _split(path)
        dfd = self._parent(path, parts, create=True)
        assert dfd is not None
        tmp = f".qai-{secrets.token_hex(6)}.tmp"
        try:
            keep = 0o644
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise _outside(path)
                if not stat.S_ISREG(st.st_mode):
                    raise PermanentError(
                        f"{path!r} is not a regular file", code=ErrorCode.NOT_A_FILE
                    )
                keep = stat.S_IMODE(st.st_mode)
            mode = keep if mode is None else mode
            fd = os.open(tmp, _CREATE_FLAGS, mode, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    if isinstance(data, bytes):
                        fh.write(data)
                    else:
                        shutil.copyfileobj(data, fh, CHUNK)
                    os.fchmod(fh.fileno(), mode)  # the umask must not narrow a kept mode
                    fh.flush()  # the size and mtime compared below are those of the data
                    ours = os.fstat(fh.fileno())
                # No fsync: the rename already makes the write all-or-nothing for readers, and a
                # crash is repaired by the next sync, which compares content hashes.
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                # After the rename, which changes the inode's ctime on some file systems.
                now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                same = (now.st_ino, now.st_size, now.st_mtime_ns) == (
                    ours.st_ino,
                    ours.st_size,
                    ours.st_mtime_ns,
                )
                return now if same else None
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
        except OSError as exc:
            raise os_error(exc, "write", path) from None
        finally:
            os.close(dfd)

    def delete(self, path: str) -> bool:
        """Remove a file, a symlink (the link itself) or a directory tree; False if missing."""
        parts, name = _split(path)
        dfd = self._parent(path, parts, create=False)
        if dfd is None:
            return False
        try:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)  # the fd-based rmtree never follows symlinks
            else:
                os.unlink(name, dir_fd=dfd)
            return True
        except OSError as exc:
            raise os_error(exc, "delete", path) from None
        finally:
            os.close(dfd)

    def prune_empty_parents(self, path: str) -> None:
        """Remove the directories above ``path`` that are now empty, deepest first (a deleted
        file's directory may be about to become a file of the same name)."""
        parts, _ = _split(path)
        while parts:
            name = parts.pop()
            dfd = self._parent("/".join([*parts, name]), parts, create=False)
            if dfd is None:
                return
            try:
                os.rmdir(name, dir_fd=dfd)
            except OSError:
                return  # not empty (or not a directory): nothing above it is empty either
            finally:
                os.close(dfd)

    def is_dir(self, path: str) -> bool:
        parts, name = _split(path)
        dfd = self._parent(path, [*parts, name], create=False)
        if dfd is None:
            return False
        os.close(dfd)
        return True

    # -- whole-tree operations -------------------------------------------------------------
    def walk_files(
        self, max_bytes: int | None = None, omitted: dict[str, int] | None = None
    ) -> Iterator[TreeFile]:
        """Every regular file minus ignored paths (no symlinks), each open for reading until
        the next one is asked for: nothing is read here, so a file of any size costs no memory.
        Files over ``max_bytes`` are left out (see Settings.tracked_max_file_bytes), and their
        sizes put in ``omitted``."""
        try:
            walker = os.fwalk(self.root, follow_symlinks=False)
            for dirpath, dirnames, filenames, dirfd in walker:
                dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
                rel_dir = os.path.relpath(dirpath, self.root)
                for name in sorted(filenames):
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if is_ignored(rel):
                        continue
                    fh = _open_regular(dirfd, name)
                    if fh is None:
                        continue
                    with fh:
                        st = os.fstat(fh.fileno())
                        if max_bytes is not None and st.st_size > max_bytes:
                            if omitted is not None:
                                omitted[rel] = st.st_size
                            continue
                        yield TreeFile(rel, fh, st.st_size, stat.S_IMODE(st.st_mode))
        except OSError as exc:
            raise os_error(exc, "walk", ".") from None

    def manifest(self, max_bytes: int | None = None) -> dict[str, str]:
        return {f.path: f.sha256() for f in self.walk_files(max_bytes)}

    def prune(self, keep: Iterable[str], max_bytes: int | None = None) -> None:
        """Remove every non-ignored entry not in ``keep``: files, symlinks, emptied dirs.

        Ignored directories (node_modules, .git, build outputs...) are left alone: they are
        derived from the kept files, and reinstalling is keyed on the manifest and lock file.
        So are files over ``max_bytes``, which no snapshot or manifest holds either.
        """
        keep = set(keep)
        ancestors = {"/".join(p.split("/")[:i]) for p in keep for i in range(1, p.count("/") + 1)}
        dirs: list[str] = []
        try:
            for dirpath, dirnames, filenames, dirfd in os.fwalk(self.root, follow_symlinks=False):
                rel_dir = os.path.relpath(dirpath, self.root)
                prefix = "" if rel_dir == "." else rel_dir + "/"
                for name in list(dirnames):
                    if name in IGNORED_DIRS:
                        dirnames.remove(name)
                    elif stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                        os.unlink(name, dir_fd=dirfd)
                        dirnames.remove(name)
                    else:
                        dirs.append(prefix + name)
                for name in filenames:
                    rel = prefix + name
                    if rel in keep or is_ignored(rel):
                        continue
                    if max_bytes is not None:
                        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
                            continue
                    os.unlink(name, dir_fd=dirfd)
            for rel in reversed(dirs):
                if rel not in ancestors:
                    self._rmdir_if_empty(rel)
        except OSError as exc:
            raise os_error(exc, "prune", ".") from None

    def _rmdir_if_empty(self, path: str) -> None:
        parts, name = _split(path)
        try:
            dfd = self._parent(path, parts, create=False)
        except PermanentError:
            return
        if dfd is None:
            return
        try:
            os.rmdir(name, dir_fd=dfd)
        except OSError:
            pass  # still holds ignored content, or became a symlink: leave it
        finally:
            os.close(dfd)


def _open_regular(dirfd: int, name: str) -> BinaryIO | None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
            return None  # a symlink, or gone since listed
        raise
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        return None
    return fh
