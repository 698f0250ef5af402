"""What one action runs with: its settings, payload and workspace, and the pipeline's callbacks.

The worker builds an :class:`ActionContext` per action; the runner reads and changes
``ctx.ws`` and fills ``events``, ``snapshots`` and ``manifest_update``, which the worker writes
in the action's fenced finishing transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

from qai_jobs.cancel import Cancel
from qai_jobs.config import Settings
from qai_jobs.db.file_record import RecordedFile
from qai_jobs.db.manifest import Manifest, ManifestUpdate
from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.egress import Egress
from qai_jobs.events import Event
from qai_jobs.providers.base import CreateSpec, Provider
from qai_jobs.providers.breaker import CircuitBreaker
from qai_jobs.providers.select import get_provider
from qai_jobs.sealing import unseal_env

ProgressFn = Callable[[str, int | None, int | None], None]
"""(stage, done, total): reported as the action moves on."""
OutputFn = Callable[[str, bytes], None]
"""("stdout" | "stderr", chunk): a running command's live output."""


class FileRecord(Protocol):
    """The workspace's file record (db/file_record.py) as a rebuild reads it."""

    def listing(self) -> list[RecordedFile]: ...
    def contents(self, paths: Sequence[str]) -> dict[str, bytes]: ...
    def deleted_since(self, snapshot_id: str | None) -> list[str]: ...


@dataclass(frozen=True)
class TakenSnapshot:
    """A snapshot this action took, recorded with it: ``kind`` is ``sleep`` or ``snapshot``."""

    snapshot_id: str
    kind: str
    manifest: dict[str, str] | None


def _no_progress(stage: str, done: int | None, total: int | None) -> None:
    return None


class NoRecord:
    def listing(self) -> list[RecordedFile]:
        return []

    def contents(self, paths: Sequence[str]) -> dict[str, bytes]:
        return {}

    def deleted_since(self, snapshot_id: str | None) -> list[str]:
        return []


def _nothing_lost(snapshot_id: str | None) -> list[dict[str, object]]:
    return []


def _no_manifest() -> Manifest:
    return Manifest(None, {})


def _no_owner(snapshot_id: str) -> str | None:
    return None


def _no_activity() -> datetime | None:
    return None


@dataclass
class ActionContext:
    settings: Settings
    action_id: uuid.UUID
    kind: str
    payload: BaseModel
    ws: WorkspaceState
    progress: ProgressFn = _no_progress
    output: OutputFn | None = None
    # Webhook events this action decided; written with its final status.
    events: list[Event] = field(default_factory=list)
    snapshots: list[TakenSnapshot] = field(default_factory=list)
    # Read only when a sandbox must be rebuilt, a batch of files at a time.
    record: FileRecord = field(default_factory=NoRecord)
    # The commands that ran since a snapshot (a rebuild from it loses what they changed).
    lost: Callable[[str | None], list[dict[str, object]]] = _nothing_lost
    # The project's synced-files manifest as this action finds it, and what a successful sync
    # changes in it.
    manifest: Callable[[], Manifest] = _no_manifest
    manifest_update: ManifestUpdate | None = None
    # The workspace's last activity as Postgres has it now (an idle sleep checks it again).
    last_activity: Callable[[], datetime | None] = _no_activity
    # Which project took a snapshot, as Postgres recorded it (None: not one of ours).
    snapshot_owner: Callable[[str], str | None] = _no_owner
    # Whether finishing this action counts as activity: the idle sweep's own sleep does not.
    counts_as_activity: bool = True
    # Where providers and the fallback breaker come from (the process's own unless a test
    # hands in others).
    providers: Callable[[str], Provider] | None = None
    breaker: CircuitBreaker | None = None
    # Fired by the worker when the action must stop at once (lease lost, deadline passed).
    cancel: Cancel = field(default_factory=Cancel)
    _env: tuple[object, dict[str, str]] | None = field(default=None, repr=False)

    def provider_named(self, name: str) -> Provider:
        if self.providers is not None:
            return self.providers(name)
        return get_provider(name, self.settings)

    @property
    def provider(self) -> Provider:
        """The provider holding this workspace (set once it has a sandbox)."""
        assert self.ws.provider is not None, "the workspace has no provider yet"
        return self.provider_named(self.ws.provider)

    def env(self) -> dict[str, str]:
        """The workspace's env values, unsealed once per action (again only if they change)."""
        sealed = self.ws.env
        if self._env is None or self._env[0] is not sealed:
            self._env = (sealed, unseal_env(self.settings, sealed))
        return dict(self._env[1])

    def spec(self, snapshot_id: str | None = None) -> CreateSpec:
        return CreateSpec(
            project_id=self.ws.project_id,
            workspace_id=str(self.ws.id),
            port=self.ws.port or self.settings.workspace_preview_port,
            env=self.env(),
            snapshot_id=snapshot_id,
            egress=self.egress(),
        )

    def egress(self) -> Egress:
        """The workspace's egress policy: what an ensure set, else the configured default."""
        egress: Egress = (self.ws.network or {}).get("egress", self.settings.workspace_egress)
        return egress
