"""Snapshots of local workspaces: what every store does (archive a tree, restore it, keep a
snapshot while a sandbox holds it), over a few storage primitives each store provides.

Two stores: a directory (store.py: on one machine, or shared between hosts over NFS) and
S3-compatible object storage (s3store.py). A snapshot is ``<id>.tar.gz`` beside its ``<id>.json``
manifest, written last, so a manifest means a complete archive.
"""

from __future__ import annotations

import contextlib
import json
import re
import tarfile
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from qai_jobs.errors import ErrorCode, PermanentError, QaiJobsError, TransientError
from qai_jobs.providers.local.fs import SafeTree, os_error
from qai_jobs.providers.local.streams import ExactReader

if TYPE_CHECKING:
    from qai_jobs.config import Settings

SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{32}$")
# Who holds snapshots: a sandbox's directory name (provider.py), never a path.
SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass
class Held:
    """The snapshots one sandbox holds on to."""

    sleep: list[str] = field(default_factory=list)  # its sleeps': wake needs only the newest
    kept: list[str] = field(default_factory=list)  # its `snapshot` actions', and restored-from

    def all(self) -> set[str]:
        return {*self.sleep, *self.kept}

    @classmethod
    def parse(cls, raw: bytes | None) -> Held:
        try:
            body = json.loads(raw) if raw is not None else {}
        except ValueError:
            body = {}

        def ids(key: str) -> list[str]:
            value = body.get(key) if isinstance(body, dict) else None
            return [i for i in value or [] if isinstance(i, str) and SNAPSHOT_ID.match(i)]

        return cls(sleep=ids("sleep"), kept=ids("kept"))


def checked_source(source: str) -> str:
    if not SOURCE.match(source):
        raise PermanentError(f"invalid snapshot holder {source!r}")
    return source


def not_found(snapshot_id: str, what: str = "does not exist") -> PermanentError:
    return PermanentError(f"snapshot {snapshot_id!r} {what}", code=ErrorCode.SNAPSHOT_NOT_FOUND)


class SnapshotStore(ABC):
    """Snapshots of every local workspace, deleted once no sandbox holds them.

    A sandbox holds the newest ``keep`` of its sleep snapshots, every snapshot its `snapshot`
    actions took (a producer holds those ids and may restore them any time), and every snapshot
    it was created or restored from (a rebuild after a crash restores from it again), until it
    is destroyed. Sandboxes of different projects run actions at the same time and may hold the
    same snapshot; each store keeps the lists so that a snapshot somebody holds is never deleted.
    """

    def __init__(self, keep: int, max_file_bytes: int | None = None) -> None:
        self.keep = keep
        # Bigger files are left out (Settings.tracked_max_file_bytes), and named in the meta.
        self.max_file_bytes = max_file_bytes

    # -- what each store provides ------------------------------------------------------------
    @abstractmethod
    def _new_archive(self, snapshot_id: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A file to write the archive into, stored when the block ends without error."""

    @abstractmethod
    def _open_archive(self, snapshot_id: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """The archive, streamed; FileNotFoundError when there is none."""

    @abstractmethod
    def _write_meta(self, snapshot_id: str, body: bytes) -> None: ...

    @abstractmethod
    def _read_meta(self, snapshot_id: str) -> bytes:
        """The manifest file's bytes; FileNotFoundError when there is none."""

    @abstractmethod
    def _holding(self, source: str) -> contextlib.AbstractContextManager[Held]:
        """``source``'s list to change; afterwards the snapshots it let go of that no other
        sandbox holds are deleted."""

    @abstractmethod
    def _held_by(self, source: str) -> Held: ...

    @abstractmethod
    def _drop(self, ids: set[str]) -> None:
        """Delete these snapshots, manifest first (without it a snapshot does not exist)."""

    # -- the store ---------------------------------------------------------------------------
    def create(self, tree: SafeTree, source: str, *, kept: bool) -> str:
        """Archive the tree minus ignored paths (regular files only) with its manifest; a
        sleep's (``kept`` false) is dropped once ``keep`` newer sleeps of ``source`` exist."""
        checked_source(source)
        snapshot_id = f"snap-{uuid.uuid4().hex}"
        manifest: dict[str, str] = {}
        omitted: dict[str, int] = {}
        try:
            # Level 3: a few percent bigger than 9 and several times faster on source trees.
            with (
                self._new_archive(snapshot_id) as out,
                tarfile.open(fileobj=out, mode="w:gz", compresslevel=3) as tar,
            ):
                now = time.time()
                # Streamed: tar copies each file in chunks while it is hashed on the way.
                for f in tree.walk_files(self.max_file_bytes, omitted):
                    info = tarfile.TarInfo(f.path)
                    info.size, info.mode, info.mtime = f.size, f.mode, now
                    member = ExactReader(f.fh, f.size)
                    tar.addfile(info, member)
                    manifest[f.path] = member.hexdigest()
            body = {
                "id": snapshot_id,
                "source": source,
                "created_at": now,
                "manifest": manifest,
                "omitted": omitted,
            }
            self._write_meta(snapshot_id, json.dumps(body).encode())
            with self._holding(source) as held:
                if kept:
                    held.kept.append(snapshot_id)
                else:
                    held.sleep = [*held.sleep, snapshot_id][-self.keep :]
        except (OSError, TransientError) as exc:
            with contextlib.suppress(OSError, QaiJobsError):
                if snapshot_id not in self._held_by(source).all():
                    self._drop({snapshot_id})  # a full disk must not leave one nobody holds
            if isinstance(exc, OSError):
                raise os_error(exc, "snapshot", ".") from None
            raise
        return snapshot_id

    def hold(self, source: str, snapshot_id: str) -> bool:
        """Keep ``snapshot_id`` for ``source``, which is about to be made from it, until
        ``source`` is destroyed: whoever took it may be destroyed meanwhile, and a later sleep
        of ``source`` must not rotate it away. Whether it was not held before (for ``unhold``);
        ``snapshot_not_found`` when it is already gone."""
        with self._holding(checked_source(source)) as held:
            self.manifest(snapshot_id)
            if snapshot_id in held.kept:
                return False
            held.kept.append(snapshot_id)
            if snapshot_id in held.sleep:
                held.sleep.remove(snapshot_id)
                return False
            return True

    def unhold(self, source: str, snapshot_id: str) -> None:
        """Undo a ``hold`` that returned True, when making ``source`` from it failed."""
        with self._holding(checked_source(source)) as held:
            if snapshot_id in held.kept:
                held.kept.remove(snapshot_id)

    def forget(self, source: str) -> None:
        """Let go of everything ``source`` held (it is being destroyed)."""
        with self._holding(checked_source(source)) as held:
            held.sleep, held.kept = [], []

    def manifest(self, snapshot_id: str) -> dict[str, str]:
        if not SNAPSHOT_ID.match(snapshot_id):
            raise not_found(snapshot_id)  # nor is it ever made into a path or a key
        try:
            body: dict[str, Any] = json.loads(self._read_meta(snapshot_id))
            return dict(body["manifest"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            raise not_found(snapshot_id) from None

    def restore_into(self, tree: SafeTree, snapshot_id: str) -> None:
        """Make ``tree`` exactly the snapshot's (ignored dirs kept: see SafeTree.prune)."""
        manifest = self.manifest(snapshot_id)
        current = tree.manifest(self.max_file_bytes)
        tree.prune(manifest, self.max_file_bytes)
        try:
            # Read as a stream, member after member, like it was written: never all at once.
            with (
                self._open_archive(snapshot_id) as fh,
                tarfile.open(fileobj=fh, mode="r|gz") as tar,
            ):
                for info in tar:
                    if not info.isreg() or info.name not in manifest:
                        continue
                    if current.get(info.name) == manifest[info.name]:
                        continue
                    member = tar.extractfile(info)
                    assert member is not None
                    # Written through SafeTree, never tar's extractor: the tree may hold links.
                    tree.write(info.name, member, mode=info.mode & 0o755)
        except FileNotFoundError:
            raise not_found(snapshot_id, "has no archive") from None
        except (OSError, tarfile.TarError) as exc:
            raise TransientError(f"cannot read snapshot {snapshot_id!r}: {exc}") from None


def open_store(settings: Settings) -> SnapshotStore:
    """The store WORKSPACE_SNAPSHOT_STORE names: s3://bucket/prefix, or a directory."""
    keep, max_file = settings.workspace_local_snapshots_kept, settings.tracked_max_file_bytes
    if (s3 := settings.snapshot_s3) is not None:
        from qai_jobs.providers.local.s3store import S3SnapshotStore

        bucket, prefix = s3
        return S3SnapshotStore(settings, bucket, prefix, keep, max_file)
    from qai_jobs.providers.local.store import DirectorySnapshotStore

    return DirectorySnapshotStore(settings.snapshot_dir, keep, max_file)
