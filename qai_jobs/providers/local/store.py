"""Machine-wide bookkeeping of the local provider under WORKSPACE_ROOT: ports and snapshots.

Both are files, because the workers sharing a machine are separate processes with no other
shared memory: ``ports.json`` guarded by an flock, and ``snapshots/<id>.tar.gz`` beside its
``<id>.json`` manifest (written last, so a manifest means a complete archive).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qai_jobs.errors import ErrorCode, PermanentError, TransientError
from qai_jobs.providers.local.fs import SafeTree, os_error
from qai_jobs.providers.local.streams import ExactReader

_SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{32}$")


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` whole; ``durable`` also survives a power cut (fsync before rename), for
    files whose loss would delete or leak data, not for ones rebuilt or re-checked anyway."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class PortRegistry:
    """Host ports handed out one per workspace, unique on this machine."""

    def __init__(self, root: Path, low: int, high: int) -> None:
        self.root = root
        self.low, self.high = low, high

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".ports.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / "ports.json"
            try:
                table: dict[str, str] = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                table = {}
            before = dict(table)
            yield table
            if table != before:
                atomic_write(path, json.dumps(table, sort_keys=True).encode())

    def allocate(self, owner: str) -> int:
        """The owner's port, or a free one recorded for it; stable for the owner's lifetime."""
        with self._locked() as table:
            for key, who in table.items():
                if who == owner:
                    return int(key)
            span = self.high - self.low + 1
            # Start at a spot derived from the owner so concurrent machines rarely collide.
            first = int(uuid.uuid5(uuid.NAMESPACE_URL, owner).int % span)
            for i in range(span):
                port = self.low + (first + i) % span
                if str(port) not in table and port_free(port):
                    table[str(port)] = owner
                    return port
        raise TransientError("no free port left for a local dev server")

    def release(self, owner: str) -> None:
        with self._locked() as table:
            for port in [p for p, who in table.items() if who == owner]:
                del table[port]

    def owner_of(self, port: int) -> str | None:
        with self._locked() as table:
            return table.get(str(port))


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers that will bind it: a port in TIME_WAIT is usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - probing, nothing listens
        except OSError:
            return False
    return True


@dataclass
class _Held:
    """The snapshots one sandbox holds on to (``by-source/<sandbox_id>.json``)."""

    sleep: list[str] = field(default_factory=list)  # its sleeps': wake needs only the newest
    kept: list[str] = field(default_factory=list)  # its `snapshot` actions', and restored-from

    def all(self) -> set[str]:
        return {*self.sleep, *self.kept}


class SnapshotStore:
    """Snapshots of every workspace on this machine, deleted once no sandbox holds them.

    A sandbox holds the newest ``keep`` of its sleep snapshots, every snapshot its `snapshot`
    actions took (a producer holds those ids and may restore them any time), and every snapshot
    it was created or restored from (a rebuild after a crash restores from it again), until it
    is destroyed. Sandboxes of different projects run actions at the same time and may hold the
    same snapshot, so the lists change and snapshots are deleted under one flock.
    """

    def __init__(self, directory: Path, keep: int, max_file_bytes: int | None = None) -> None:
        # Shared by every host of a fleet (flock works on NFS v4 and on one machine).
        self.dir = directory
        self.keep = keep
        # Bigger files are left out (Settings.tracked_max_file_bytes), and named in the meta.
        self.max_file_bytes = max_file_bytes

    def _paths(self, snapshot_id: str) -> tuple[Path, Path]:
        return self.dir / f"{snapshot_id}.tar.gz", self.dir / f"{snapshot_id}.json"

    def create(self, tree: SafeTree, source: str, *, kept: bool) -> str:
        """Archive the tree minus ignored paths (regular files only) with its manifest; a
        sleep's (``kept`` false) is dropped once ``keep`` newer sleeps of ``source`` exist."""
        snapshot_id = f"snap-{uuid.uuid4().hex}"
        archive, meta = self._paths(snapshot_id)
        tmp = archive.with_name(archive.name + ".tmp")
        manifest: dict[str, str] = {}
        omitted: dict[str, int] = {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Level 3: a few percent bigger than 9 and several times faster on source trees.
            with tarfile.open(tmp, "w:gz", compresslevel=3) as tar:
                now = time.time()
                # Streamed: tar copies each file in chunks while it is hashed on the way.
                for f in tree.walk_files(self.max_file_bytes, omitted):
                    info = tarfile.TarInfo(f.path)
                    info.size, info.mode, info.mtime = f.size, f.mode, now
                    member = ExactReader(f.fh, f.size)
                    tar.addfile(info, member)
                    manifest[f.path] = member.hexdigest()
            os.replace(tmp, archive)
            body = {
                "id": snapshot_id,
                "source": source,
                "created_at": now,
                "manifest": manifest,
                "omitted": omitted,
            }
            atomic_write(meta, json.dumps(body).encode(), durable=True)
            with self._holding(source) as held:
                if kept:
                    held.kept.append(snapshot_id)
                else:
                    held.sleep = [*held.sleep, snapshot_id][-self.keep :]
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                if snapshot_id not in self._held(self._index(source)).all():
                    self._drop({snapshot_id})  # a full disk must not leave one nobody holds
            raise os_error(exc, "snapshot", ".") from None
        return snapshot_id

    def hold(self, source: str, snapshot_id: str) -> bool:
        """Keep ``snapshot_id`` for ``source``, which is about to be made from it, until
        ``source`` is destroyed: whoever took it may be destroyed meanwhile, and a later sleep
        of ``source`` must not rotate it away. Whether it was not held before (for ``unhold``);
        ``snapshot_not_found`` when it is already gone."""
        with self._holding(source) as held:
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
        with self._holding(source) as held:
            if snapshot_id in held.kept:
                held.kept.remove(snapshot_id)

    def forget(self, source: str) -> None:
        """Let go of everything ``source`` held (it is being destroyed)."""
        with self._holding(source) as held:
            held.sleep, held.kept = [], []

    @contextlib.contextmanager
    def _holding(self, source: str) -> Iterator[_Held]:
        """``source``'s list to change; afterwards the snapshots it let go of that no other
        sandbox holds are deleted."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held = self._held(self._index(source))
            before = held.all()
            yield held
            index = self._index(source)
            if held.all():
                index.parent.mkdir(parents=True, exist_ok=True)
                # Durable: read back as empty, it would let another sandbox's destroy delete
                # snapshots this one still holds.
                atomic_write(index, json.dumps(asdict(held)).encode(), durable=True)
            else:
                index.unlink(missing_ok=True)
            released = before - held.all()
            if released:
                self._drop(released - self._held_by_anyone())

    def _index(self, source: str) -> Path:
        return self.dir / "by-source" / f"{source}.json"

    @staticmethod
    def _held(index: Path) -> _Held:
        try:
            body = json.loads(index.read_bytes())
        except (FileNotFoundError, ValueError):
            return _Held()

        def ids(key: str) -> list[str]:
            value = body.get(key) if isinstance(body, dict) else None
            return [i for i in value or [] if isinstance(i, str) and _SNAPSHOT_ID.match(i)]

        return _Held(sleep=ids("sleep"), kept=ids("kept"))

    def _held_by_anyone(self) -> set[str]:
        held: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.dir / "by-source"):
                if entry.name.endswith(".json"):
                    held |= self._held(Path(entry.path)).all()
        return held

    def _drop(self, ids: set[str]) -> None:
        for snapshot_id in ids:
            archive, meta = self._paths(snapshot_id)
            meta.unlink(missing_ok=True)  # first: without its manifest a snapshot does not exist
            archive.unlink(missing_ok=True)

    def manifest(self, snapshot_id: str) -> dict[str, str]:
        _, meta = self._paths(snapshot_id) if _SNAPSHOT_ID.match(snapshot_id) else (None, None)
        try:
            if meta is None:
                raise FileNotFoundError
            body: dict[str, Any] = json.loads(meta.read_bytes())
        except (FileNotFoundError, ValueError):
            raise PermanentError(
                f"snapshot {snapshot_id!r} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
            ) from None
        return dict(body["manifest"])

    def restore_into(self, tree: SafeTree, snapshot_id: str) -> None:
        """Make ``tree`` exactly the snapshot's (ignored dirs kept: see SafeTree.prune)."""
        manifest = self.manifest(snapshot_id)
        current = tree.manifest(self.max_file_bytes)
        tree.prune(manifest, self.max_file_bytes)
        archive, _ = self._paths(snapshot_id)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for info in tar:
                    if not info.isreg() or info.name not in manifest:
                        continue
                    if current.get(info.name) == manifest[info.name]:
                        continue
                    fh = tar.extractfile(info)
                    assert fh is not None
                    # Written through SafeTree, never tar's extractor: the tree may hold links.
                    # Streamed from the archive, like it was written.
                    tree.write(info.name, fh, mode=info.mode & 0o755)
        except FileNotFoundError:
            raise PermanentError(
                f"snapshot {snapshot_id!r} has no archive", code=ErrorCode.SNAPSHOT_NOT_FOUND
            ) from None
        except (OSError, tarfile.TarError) as exc:
            raise TransientError(f"cannot read snapshot {snapshot_id!r}: {exc}") from None
