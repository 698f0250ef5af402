"""Machine-wide bookkeeping of the local provider: ports, and snapshots in a directory.

Both are files, because the workers sharing a machine are separate processes with no other
shared memory: ``ports.json`` guarded by an flock, and ``<id>.tar.gz`` beside its ``<id>.json``
manifest in the snapshot directory (snapshots.py holds what every snapshot store does).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

from qai_jobs.errors import TransientError
from qai_jobs.providers.local.snapshots import Held, SnapshotStore


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


class DirectorySnapshotStore(SnapshotStore):
    """Snapshots as files in one directory, shared by every host of a fleet (flock works on NFS
    v4 and on one machine): the holders' lists and the deletions happen under one flock."""

    def __init__(self, directory: Path, keep: int, max_file_bytes: int | None = None) -> None:
        super().__init__(keep, max_file_bytes)
        self.dir = directory

    def _paths(self, snapshot_id: str) -> tuple[Path, Path]:
        return self.dir / f"{snapshot_id}.tar.gz", self.dir / f"{snapshot_id}.json"

    @contextlib.contextmanager
    def _new_archive(self, snapshot_id: str) -> Iterator[BinaryIO]:
        archive, _ = self._paths(snapshot_id)
        tmp = archive.with_name(archive.name + ".tmp")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as out:
                yield out
            os.replace(tmp, archive)
        finally:
            tmp.unlink(missing_ok=True)

    def _open_archive(self, snapshot_id: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return open(self._paths(snapshot_id)[0], "rb")

    def _write_meta(self, snapshot_id: str, body: bytes) -> None:
        atomic_write(self._paths(snapshot_id)[1], body, durable=True)

    def _read_meta(self, snapshot_id: str) -> bytes:
        return self._paths(snapshot_id)[1].read_bytes()

    @contextlib.contextmanager
    def _holding(self, source: str) -> Iterator[Held]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held = self._held_by(source)
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

    def _held_by(self, source: str) -> Held:
        try:
            return Held.parse(self._index(source).read_bytes())
        except FileNotFoundError:
            return Held()

    def _held_by_anyone(self) -> set[str]:
        held: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.dir / "by-source"):
                if entry.name.endswith(".json"):
                    with contextlib.suppress(FileNotFoundError):
                        held |= Held.parse(Path(entry.path).read_bytes()).all()
        return held

    def _drop(self, ids: set[str]) -> None:
        for snapshot_id in ids:
            archive, meta = self._paths(snapshot_id)
            meta.unlink(missing_ok=True)  # first: without its manifest a snapshot does not exist
            archive.unlink(missing_ok=True)
