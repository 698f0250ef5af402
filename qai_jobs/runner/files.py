"""File sync into the sandbox: deletes, then writes of what differs, and the manifest update."""

from __future__ import annotations

from qai_jobs.db.manifest import Manifest, ManifestUpdate
from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.providers.base import Sandbox
from qai_jobs.runner.context import ActionContext
from qai_jobs.schemas import WithFiles
from qai_jobs.sync import plan_writes

WRITE_CHUNK = 500  # files a provider call; progress is reported after each


def check_base(ctx: ActionContext, payload: WithFiles, untrusted: str | None = None) -> Manifest:
    """The manifest, after refusing a delta computed against another one (nothing changed yet).

    ``untrusted`` says why the recorded manifest does not describe the sandbox (an adopted
    one, a partial rebuild): a delta is refused, and a full sync replaces the record.
    """
    manifest = ctx.manifest()
    base = payload.manifest_base
    if base is not None and untrusted:
        raise _stale(f"a delta cannot be applied to {untrusted}")
    if base is not None and base != manifest.seq:
        now = (
            f"is at {manifest.seq}"
            if manifest.seq is not None
            else "has none (never synced, destroyed, or restored)"
        )
        raise _stale(f"this delta was computed against manifest {base}; the workspace's {now}")
    return Manifest(None, {}) if untrusted else manifest


def _stale(why: str) -> PermanentError:
    return PermanentError(f"{why}; send the full tree", code=ErrorCode.MANIFEST_STALE)


def sync_files(
    ctx: ActionContext, sb: Sandbox, payload: WithFiles, manifest: Manifest
) -> dict[str, int]:
    provider = ctx.provider
    entries = [(f.path, f.data()) for f in payload.files or []]
    sent = {path for path, _ in entries}
    deleting = set(payload.delete or []) - sent  # sent and deleted: the file wins
    update = ManifestUpdate(replace=manifest.seq is None)
    # The sandbox is the truth, and commands, dev servers, installs, a woken or rebuilt sandbox
    # may have changed any recorded file since: hash those this sync leaves alone (a stat each
    # on the local provider) before a delta relies on them, and record what is really there.
    others = {p: h for p, h in manifest.files.items() if p not in sent and p not in deleting}
    if others:
        actual = provider.hashes(sb, list(others))
        drifted = sorted(p for p, h in others.items() if actual.get(p) != h)
        if drifted and payload.manifest_base is not None:
            shown = ", ".join(drifted[:5]) + (" ..." if len(drifted) > 5 else "")
            raise _stale(f"{len(drifted)} unsent file(s) changed in the workspace ({shown})")
        for path in drifted:
            if path in actual:
                update.upsert[path] = actual[path]
            else:
                update.delete.add(path)
    deleted = written = unchanged = 0
    if deleting:
        # Deletes first, deepest first: a tree that turned a file into a directory (or back)
        # sends the new path and deletes the old one, which would be in the new one's way.
        order = sorted(deleting, key=lambda p: (-p.count("/"), p))
        deleted = len(provider.delete_files(sb, order))
        update.delete |= deleting
    if entries:
        current = provider.hashes(sb, [p for p, _ in entries])
        plan = plan_writes(entries, current)
        total = len(plan.to_write)
        ctx.progress("syncing", 0, total)
        for i in range(0, total, WRITE_CHUNK):
            provider.write_files(sb, plan.to_write[i : i + WRITE_CHUNK])
            ctx.progress("syncing", min(total, i + WRITE_CHUNK), total)
        written, unchanged = total, len(plan.unchanged)
        update.upsert.update(plan.hashes)
        # What a rebuild restores: the content of every file sent, written or already there.
        update.contents.update(plan.hashes)
        update.blobs.update((plan.hashes[path], data) for path, data in entries)
    update.delete -= update.upsert.keys()
    ctx.manifest_update = update
    return {"files_written": written, "files_unchanged": unchanged, "files_deleted": deleted}


def record_after_install(ctx: ActionContext, sb: Sandbox) -> None:
    """An install may rewrite synced files (a lock file): record what it left, so the next
    delta sends the producer's version instead of trusting one the sandbox no longer has."""
    update = ctx.manifest_update
    if update is None or not update.upsert:
        return
    actual = ctx.provider.hashes(sb, list(update.upsert))
    for path in list(update.upsert):
        if path in actual:
            update.upsert[path] = actual[path]
        else:
            del update.upsert[path]
            update.delete.add(path)
