"""Files of any size, streamed: a sandbox decides how big its files are (a sparse 50 GB file
costs it nothing), so the worker only ever holds a chunk of one in memory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

CHUNK = 1024 * 1024  # what a streamed copy or hash holds in memory at once


@dataclass(frozen=True)
class TreeFile:
    """One file of a tree walk, open for reading; ``size`` is its size when it was opened."""

    path: str
    fh: BinaryIO
    size: int
    mode: int

    def sha256(self) -> str:
        return hash_stream(self.fh, self.size)


class ExactReader:
    """Exactly ``size`` bytes of ``fh`` for tar, hashed as they are read: zeros make up for a
    file that shrank meanwhile (tar needs the size it was told), and what it grew by is left
    out, so the archive and its manifest always agree."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.left = fh, size
        self._digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) if n else b""
        if len(data) < n:
            data += bytes(n - len(data))
        self.left -= len(data)
        self._digest.update(data)
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def hash_stream(fh: BinaryIO, size: int) -> str:
    """sha256 of the first ``size`` bytes of ``fh``, read in chunks: never the whole file at
    once, and never more than it held when looked at (a sandbox may keep appending)."""
    digest = hashlib.sha256()
    left = size
    while left > 0:
        chunk = fh.read(min(CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()
