"""Content-hash file sync: what to send, what to skip, what to ignore.

The sandbox's own hashes are the truth (a command may have changed a file we wrote), so a sync
asks the provider for the current hashes of the paths it is about to write and sends only
those that differ.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Directories that are outputs, caches or VCS data: never synced from a source tree, never part
# of a manifest (installing and building recreate them inside the sandbox).
IGNORED_DIRS = frozenset(
    {
        "node_modules",
        ".git",
        ".next",
        ".nuxt",
        ".svelte-kit",
        ".turbo",
        ".vercel",
        ".cache",
        ".parcel-cache",
        ".pnpm-store",
        ".yarn",
        "dist",
        "build",
        "out",
        "coverage",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".venv",
        ".qai",
    }
)
IGNORED_SUFFIXES = (".log", ".pyc", ".tmp", ".swp")
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db"})

# What decides whether the install must run again (CONTRACT 3: "package manifest or lock file").
INSTALL_INPUTS = (
    "package.json",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "pnpm-lock.yaml",
    "yarn.lock",
    "bun.lockb",
    "bun.lock",
)
LOCKFILE_COMMANDS = (
    ("pnpm-lock.yaml", "pnpm install --frozen-lockfile"),
    ("yarn.lock", "yarn install --frozen-lockfile"),
    ("bun.lockb", "bun install --frozen-lockfile"),
    ("bun.lock", "bun install --frozen-lockfile"),
    ("package-lock.json", "npm ci"),
    ("npm-shrinkwrap.json", "npm ci"),
)


def is_ignored(path: str) -> bool:
    parts = path.split("/")
    if any(part in IGNORED_DIRS for part in parts[:-1]):
        return True
    name = parts[-1]
    return name in IGNORED_DIRS or name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def walk_tree(root: Path) -> Iterator[str]:
    """Relative POSIX paths of regular files under ``root``, minus ignored ones; no symlinks."""
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            rel = full.relative_to(root).as_posix()
            if not is_ignored(rel):
                yield rel


@dataclass(frozen=True)
class SyncPlan:
    to_write: list[tuple[str, bytes]]
    unchanged: list[str]


def plan_writes(files: Iterable[tuple[str, bytes]], current: dict[str, str]) -> SyncPlan:
    """Split ``files`` into those whose content differs from ``current`` hashes and the rest."""
    to_write: list[tuple[str, bytes]] = []
    unchanged: list[str] = []
    for path, data in files:
        if current.get(path) == sha256(data):
            unchanged.append(path)
        else:
            to_write.append((path, data))
    return SyncPlan(to_write, unchanged)


def install_command_for(present: Sequence[str]) -> str | None:
    """The install command a project's lock file asks for; None without a package.json."""
    if "package.json" not in present:
        return None
    for lockfile, command in LOCKFILE_COMMANDS:
        if lockfile in present:
            return command
    return "npm install"


def install_fingerprint(hashes: dict[str, str]) -> str | None:
    """One hash over the install inputs present; None when there is no package.json."""
    if "package.json" not in hashes:
        return None
    parts = [f"{name}:{hashes[name]}" for name in INSTALL_INPUTS if name in hashes]
    return sha256("\n".join(parts).encode())
