"""Content-hash file sync: what to send, what to skip, what to ignore.

Two halves. The producer diffs its tree against the workspace's recorded manifest
(manifest.py) and sends only the files that differ, plus deletions (``delta_sync``). The worker
asks the sandbox for the current hashes of the paths it is about to write and writes only those
that differ (``plan_writes``): the sandbox's own hashes are the truth, since a command may have
changed a file we wrote.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qai_jobs.errors import ActionFailed, ErrorCode, ValidationFailed
from qai_jobs.schemas import check_path, decode_content

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

# What decides whether the install must run again: the package manifest or a lock file.
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
    hashes: dict[str, str]  # every file's, as sent: what the manifest records


def plan_writes(files: Iterable[tuple[str, bytes]], current: dict[str, str]) -> SyncPlan:
    """Split ``files`` into those whose content differs from ``current`` hashes and the rest."""
    to_write: list[tuple[str, bytes]] = []
    unchanged: list[str] = []
    hashes: dict[str, str] = {}
    for path, data in files:
        hashes[path] = digest = sha256(data)
        if current.get(path) == digest:
            unchanged.append(path)
        else:
            to_write.append((path, data))
    return SyncPlan(to_write, unchanged, hashes)


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


# --- the producer's half ---------------------------------------------------------------------

Entry = dict[str, str]  # a file on the wire: {"path", "content", "encoding"?}


def wire_entries(files: Mapping[str, str] | Sequence[Mapping[str, str]]) -> list[Entry]:
    """Files in either payload form (a mapping or a list of entries) as wire entries, paths as
    the worker will store them (``./a`` is ``a``): the diff must compare what the manifest
    records."""
    raw = (
        [{"path": path, "content": content} for path, content in files.items()]
        if isinstance(files, Mapping)
        else [dict(entry) for entry in files]
    )
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        path = entry.get("path")
        if not isinstance(path, str):
            raise ValidationFailed(f"files[{index}]: needs a string path", field="files")
        # Only a "." segment changes a path; anything else wrong with one is refused when it
        # is enqueued (a path the manifest does not have is always sent).
        if path == "." or path.startswith("./") or "/./" in path or path.endswith("/."):
            try:
                entry["path"] = check_path(path)
            except ValueError as exc:
                raise ValidationFailed(f"files[{index}]: {exc}", field="files") from None
        if entry["path"] in seen:
            raise ValidationFailed(f"files[{index}]: {path!r} appears twice", field="files")
        seen.add(entry["path"])
    return raw


def entry_sha256(entry: Mapping[str, Any], index: int) -> str:
    """The hash of an entry's decoded bytes (what the sandbox will hold)."""
    content = entry.get("content")
    if not isinstance(content, str) or not isinstance(entry.get("path"), str):
        raise ValidationFailed(f"files[{index}]: needs a string path and content", field="files")
    try:
        return sha256(decode_content(content, entry.get("encoding", "utf-8")))
    except ValueError:
        raise ValidationFailed(
            f"files[{index}]: content of {entry['path']!r} is not valid base64", field="files"
        ) from None


@dataclass(frozen=True)
class Delta:
    files: list[Entry]  # those whose content differs from the recorded hash
    delete: list[str]  # recorded paths the tree no longer has
    unchanged: int  # files of the tree left out because the manifest has them as they are


def plan_delta(
    entries: Sequence[Entry], recorded: Mapping[str, str], delete_missing: bool
) -> Delta:
    changed = [e for i, e in enumerate(entries) if recorded.get(e["path"]) != entry_sha256(e, i)]
    present = {e["path"] for e in entries}
    delete = sorted(p for p in recorded if p not in present) if delete_missing else []
    return Delta(changed, delete, len(entries) - len(changed))


def delta_sync(
    get_manifest: Callable[[], Mapping[str, Any]],
    submit: Callable[[dict[str, Any]], dict[str, Any]],
    files: Mapping[str, str] | Sequence[Mapping[str, str]],
    payload: Mapping[str, Any],
    *,
    delete_missing: bool,
) -> dict[str, Any]:
    """Sync ``files`` sending only what differs from the workspace's manifest (both clients'
    ``sync``: ``get_manifest`` is theirs, ``submit`` enqueues ``payload`` plus the given file
    keys and waits for the result).

    When the workspace changed under the delta (``manifest_stale``, refused before any file
    was written), the full tree goes instead, and the sandbox's own hashes decide what to
    write. With ``delete_missing``, recorded files (synced by any ensure/write of the project)
    that ``files`` no longer has are deleted; files the sandbox made itself are never touched.
    """
    parts = sync_parts(get_manifest(), files, payload, delete_missing=delete_missing)
    if parts.delta is not None:
        try:
            result = submit(parts.delta)
        except ActionFailed as exc:
            if exc.code != ErrorCode.MANIFEST_STALE:
                raise
        else:
            return parts.counted(result)
    return submit(parts.full)


@dataclass(frozen=True)
class SyncParts:
    """What a sync sends: ``delta`` first when there is a manifest to diff against, ``full``
    when there is not or the delta came back ``manifest_stale``."""

    delta: dict[str, Any] | None
    full: dict[str, Any]
    unchanged: int

    def counted(self, result: dict[str, Any]) -> dict[str, Any]:
        """A delta's result, counting the files it left out as unchanged."""
        if "files_unchanged" in result:
            result["files_unchanged"] += self.unchanged
        return result


def sync_parts(
    recorded: Mapping[str, Any],
    files: Mapping[str, str] | Sequence[Mapping[str, str]],
    payload: Mapping[str, Any],
    *,
    delete_missing: bool,
) -> SyncParts:
    """The payload parts of a sync against ``recorded`` (a ``get_manifest`` answer); shared by
    the blocking and the asyncio clients, which differ only in how they submit."""
    entries = wire_entries(files)
    # A git fetch or an adopted sandbox puts files in place that no manifest knows of: send the
    # whole tree (and delete nothing in a sandbox we never synced into).
    full = bool(payload.get("repo") or payload.get("sandbox_id"))
    delete_missing = delete_missing and not payload.get("sandbox_id")
    seq: int | None = recorded["manifest_seq"]
    delta = plan_delta(entries, recorded["files"], delete_missing)
    first = None
    if seq is not None and not full:
        first = {"files": delta.files, "delete": delta.delete or None, "manifest_base": seq}
    return SyncParts(first, {"files": entries, "delete": delta.delete or None}, delta.unchanged)


class _Handle(Protocol):
    def wait(
        self, timeout: float | None = None, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]: ...


class _Client(Protocol):
    def get_manifest(self, project_id: str) -> dict[str, Any]: ...

    def enqueue_payload(
        self,
        project_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> _Handle: ...


class Syncing:
    """``sync`` for both clients (``WorkspaceClient`` and ``HttpWorkspaceClient``)."""

    def sync(
        self: _Client,
        project_id: str,
        files: Any,
        *,
        kind: str = "ensure",
        delete_missing: bool = True,
        timeout: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        **payload: Any,
    ) -> dict[str, Any]:
        """``ensure`` (or ``write``) ``files``, sending only those that differ from what the
        workspace holds, and wait for the result (see ``delta_sync``; over HTTP ``on_event``
        sees nothing, as in ``wait``)."""

        def submit(part: dict[str, Any]) -> dict[str, Any]:
            handle = self.enqueue_payload(project_id, kind, {**payload, **part})
            return handle.wait(timeout=timeout, on_event=on_event)

        return delta_sync(
            lambda: self.get_manifest(project_id),
            submit,
            files,
            payload,
            delete_missing=delete_missing,
        )
