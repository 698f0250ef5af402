"""Restoring a rebuilt sandbox's files from the workspace's file record (db/file_record.py).

On top of the snapshot the sandbox was created from (or of nothing): the repository, the
deletions qai-jobs made since the snapshot, then every recorded file whose content the sandbox
does not already hold, a bounded batch at a time. A record that cannot be honoured (content
not held, a blob gone, content that does not hash to its name) fails the action with
``history_incomplete``, and the workspace is left in ``error``, flagged so that no later action
runs on the partial tree until an ensure sends the full tree again.
"""

from __future__ import annotations

import logging
from typing import NoReturn

from qai_jobs.constants import WorkspaceStatus
from qai_jobs.db.file_record import batches
from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.providers.base import Sandbox
from qai_jobs.runner.context import ActionContext
from qai_jobs.sealing import unseal_url
from qai_jobs.sync import sha256

log = logging.getLogger(__name__)

INCOMPLETE = "rebuild_incomplete"  # in the sandbox state: why its tree is partial


def restore_files(ctx: ActionContext, sb: Sandbox, snapshot_id: str | None) -> None:
    record = ctx.record
    files = record.listing()
    deleted = record.deleted_since(snapshot_id)
    if not files and not deleted and not ctx.ws.repo:
        return
    ctx.progress("restoring files", 0, len(files))
    provider = ctx.provider
    if ctx.ws.repo:
        provider.git_sync(sb, unseal_url(ctx.settings, ctx.ws.repo["url"]), ctx.ws.repo["ref"])
    if deleted:
        provider.delete_files(sb, sorted(deleted, key=lambda p: (-p.count("/"), p)))
    unheld = [f.path for f in files if f.content_sha256 is None or f.size is None]
    if unheld:
        _incomplete(ctx, f"the record holds no content for {_some(unheld)}")
    done = written = nbatches = 0
    for batch in batches(files):
        nbatches += 1
        contents = record.contents([f.path for f in batch])
        current = provider.hashes(sb, [f.path for f in batch])
        to_write: list[tuple[str, bytes]] = []
        for f in batch:
            data = contents.get(f.path)
            if data is None or sha256(data) != f.content_sha256:
                _incomplete(ctx, f"the recorded content of {f.path} is missing or corrupt")
            # What the snapshot holds stays when the manifest saw it last (a command's newer
            # version); anything else gets the content qai-jobs wrote.
            if current.get(f.path) not in (f.sha256, f.content_sha256):
                to_write.append((f.path, data))
        if to_write:
            provider.write_files(sb, to_write)
        done += len(batch)
        written += len(to_write)
        ctx.progress("restoring files", done, len(files))
    log.info(
        "restored %s: %d recorded files in %d batches (%d written), %d deleted",
        ctx.ws.project_id,
        len(files),
        nbatches,
        written,
        len(deleted),
    )


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _incomplete(ctx: ActionContext, why: str) -> NoReturn:
    if ctx.ws.sandbox is not None:
        ctx.ws.sandbox = {**ctx.ws.sandbox, INCOMPLETE: why}
    raise _error(ctx.ws, why)


def incomplete(ws: WorkspaceState) -> str | None:
    """Why the workspace's sandbox holds a partial tree (a failed rebuild), if it does."""
    return (ws.sandbox or {}).get(INCOMPLETE)


def refuse_if_incomplete(ws: WorkspaceState) -> None:
    why = incomplete(ws)
    if why is not None:
        raise _error(ws, why)


def _error(ws: WorkspaceState, why: str) -> PermanentError:
    ws.status = WorkspaceStatus.ERROR  # not healthy: the tree is partial
    return PermanentError(
        f"the sandbox was rebuilt but {why}; send the full tree with an ensure",
        code=ErrorCode.HISTORY_INCOMPLETE,
    )


def mark_complete(ws: WorkspaceState) -> None:
    """A full ensure synced the producer's tree: the partial one is behind us."""
    if ws.sandbox is not None and INCOMPLETE in ws.sandbox:
        ws.sandbox = {k: v for k, v in ws.sandbox.items() if k != INCOMPLETE}
