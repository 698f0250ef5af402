"""The runner on its own: one action at a time against the fake provider, no services at all.

Each test drives ``runner.execute`` the way the worker does (a WorkspaceState in memory, the
context's callbacks), so the ensure flow and reconciliation can change with a fast safety net.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from qai_jobs.config import load_settings
from qai_jobs.constants import WorkspaceStatus
from qai_jobs.db.file_record import RecordedFile
from qai_jobs.db.manifest import Manifest, ManifestUpdate
from qai_jobs.db.workspace_state import WorkspaceState
from qai_jobs.errors import ErrorCode, PermanentError, TransientError
from qai_jobs.events import EventType
from qai_jobs.providers.breaker import CircuitBreaker, MemoryBreakerStore
from qai_jobs.runner import ActionContext, execute
from qai_jobs.sealing import unseal_env
from qai_jobs.testing import FakeProvider, MemoryStore
from qai_jobs.validation import validate_payload

PROJECT = "unit-runner"


class MemoryRecord:
    """The file record as the settles would leave it, in memory: path -> (hash, content)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}

    def apply(self, update: ManifestUpdate) -> None:
        if update.clear or update.replace:
            self.files.clear()
        for path in update.delete:
            self.files.pop(path, None)
        for path, digest in update.contents.items():
            if path in update.upsert:
                self.files[path] = (digest, update.blobs[digest])

    def listing(self) -> list[RecordedFile]:
        return [RecordedFile(p, h, h, len(c)) for p, (h, c) in sorted(self.files.items())]

    def contents(self, paths: Sequence[str]) -> dict[str, bytes]:
        return {p: self.files[p][1] for p in paths if p in self.files}

    def deleted_since(self, snapshot_id: str | None) -> list[str]:
        return []


class World:
    """One workspace's row (in memory) and the fake provider holding its sandboxes."""

    def __init__(self) -> None:
        self.settings = load_settings(
            _env_file=None,
            workspace_runtime="fake",
            workspace_secret_key="unit-test-key",
            redis_url="redis://unused.invalid:6379/0",
        )
        self.provider = FakeProvider(self.settings, store=MemoryStore())
        self.breaker = CircuitBreaker(MemoryBreakerStore())
        self.ws = WorkspaceState(PROJECT, uuid.uuid4())
        self.record = MemoryRecord()
        self.manifest = Manifest(None, {})
        self.stages: list[str] = []

    def run(self, kind: str, **payload: Any) -> tuple[dict[str, Any], ActionContext]:
        ctx = ActionContext(
            settings=self.settings,
            action_id=uuid.uuid4(),
            kind=kind,
            payload=validate_payload(kind, payload),
            ws=self.ws,
            progress=lambda stage, done, total: self.stages.append(stage),
            record=self.record,
            manifest=lambda: self.manifest,
            providers=lambda name: self.provider,
            breaker=self.breaker,
        )
        result = dict(execute(ctx))
        if ctx.manifest_update is not None:  # what the settle records
            self.record.apply(ctx.manifest_update)
            hashes = {p: h for p, (h, _) in self.record.files.items()}
            seq = None if ctx.manifest_update.clear else (self.manifest.seq or 0) + 1
            self.manifest = Manifest(seq, hashes)
        return result, ctx

    def files(self) -> dict[str, bytes]:
        sb = self.ws.sb
        assert sb is not None
        return {p: c for p, c in self.provider.read_files(sb, ["a.txt", "b.txt"]).items() if c}


@pytest.fixture
def world() -> World:
    return World()


def test_ensure_provisions_syncs_and_starts_the_dev_server(world: World) -> None:
    result, ctx = world.run("ensure", files={"a.txt": "one"}, dev_command="serve --port {port}")
    assert result["created"] is True and result["files_written"] == 1
    assert result["provider"] == "fake" and result["preview_url"]
    assert world.ws.status == WorkspaceStatus.READY
    assert world.ws.dev_process is not None and world.ws.dev_process["command"].endswith("3000")
    assert [e.type for e in ctx.events] == [EventType.READY]
    assert world.files() == {"a.txt": b"one"}
    assert ctx.manifest_update is not None and set(ctx.manifest_update.upsert) == {"a.txt"}


def test_a_second_ensure_sends_nothing_unchanged_and_reuses_the_dev_server(world: World) -> None:
    world.run("ensure", files={"a.txt": "one"})
    first_server = world.ws.dev_process
    result, _ = world.run("ensure", files={"a.txt": "one"})
    assert result["created"] is False
    assert (result["files_written"], result["files_unchanged"]) == (0, 1)
    assert world.ws.dev_process == first_server


def test_env_is_sealed_on_the_workspace(world: World) -> None:
    world.run("ensure", env={"TOKEN": "s3cret"}, start_dev_server=False)
    assert "s3cret" not in str(world.ws.env)
    assert unseal_env(world.settings, world.ws.env) == {"TOKEN": "s3cret"}


def test_any_action_provisions_a_bare_workspace_first(world: World) -> None:
    result, _ = world.run("command", cmd="echo hi")
    assert result["exit_code"] == 0 and result["stdout"] == "hi\n"
    assert world.ws.sb is not None and world.ws.dev_process is None


def test_read_returns_text_and_reports_missing_paths(world: World) -> None:
    world.run("write", files={"a.txt": "one"})
    result, _ = world.run("read", paths=["a.txt", "nope.txt"])
    assert result["files"] == [{"path": "a.txt", "content": "one", "encoding": "utf-8", "size": 3}]
    assert result["missing"] == ["nope.txt"]


def test_an_action_on_a_sleeping_workspace_wakes_it_with_its_dev_server(world: World) -> None:
    world.run("ensure", files={"a.txt": "one"})
    slept, ctx = world.run("sleep")
    assert world.ws.status == WorkspaceStatus.SLEEPING and world.ws.dev_process is None
    assert [e.type for e in ctx.events] == [EventType.SLEEPING]
    assert world.ws.last_snapshot_id == slept["snapshot_id"]
    world.run("read", paths=["a.txt"])
    assert world.ws.status == WorkspaceStatus.READY
    assert world.ws.dev_process is not None  # woken whole, preview included
    assert "waking" in world.stages


def test_a_sandbox_gone_behind_our_back_comes_back_with_its_files(world: World) -> None:
    world.run("ensure", files={"a.txt": "one"}, start_dev_server=False)
    world.run("write", files={"b.txt": "two"})
    old = world.ws.sandbox_id
    assert old is not None
    world.provider.destroy(world.ws.sb)  # type: ignore[arg-type]
    result, ctx = world.run("read", paths=["a.txt", "b.txt"])
    assert world.ws.sandbox_id != old
    assert {f["path"] for f in result["files"]} == {"a.txt", "b.txt"}
    assert "restoring files" in world.stages
    # The rebuild is announced: from no snapshot (none was taken), on the same provider.
    [moved] = [e for e in ctx.events if e.type == EventType.MOVED]
    assert moved.data == {"from_host": "fake", "to_host": "fake", "snapshot_id": None, "lost": []}


def test_destroy_forgets_everything_and_the_next_ensure_is_a_new_workspace(world: World) -> None:
    world.run("ensure", files={"a.txt": "one"})
    first_id = world.ws.id
    _, ctx = world.run("destroy")
    assert world.ws.status == WorkspaceStatus.DESTROYED and world.ws.sb is None
    assert [e.type for e in ctx.events] == [EventType.DESTROYED]
    assert ctx.manifest_update is not None and ctx.manifest_update.clear
    result, _ = world.run("ensure", start_dev_server=False)
    assert result["created"] is True and world.ws.id != first_id


def test_sleep_logs_and_destroy_without_a_workspace_do_nothing(world: World) -> None:
    assert world.run("sleep")[0] == {"snapshot_id": None}
    assert world.run("logs")[0] == {"text": ""}
    assert world.run("destroy")[0] == {}
    assert world.ws.sb is None


def test_a_delta_against_another_manifest_is_refused_before_any_change(world: World) -> None:
    world.run("ensure", files={"a.txt": "one"}, start_dev_server=False)
    world.manifest = Manifest(7, {"a.txt": "x"})
    with pytest.raises(PermanentError) as info:
        world.run("ensure", files={"b.txt": "two"}, manifest_base=3, dev_command="other")
    assert info.value.code == ErrorCode.MANIFEST_STALE
    assert world.ws.dev_command is None  # settings wait for the full sync
    assert world.files() == {"a.txt": b"one"}


def test_install_runs_when_the_manifest_changes_and_only_then(world: World) -> None:
    first, _ = world.run("ensure", files={"package.json": "{}"}, start_dev_server=False)
    again, _ = world.run("ensure", files={"package.json": "{}"}, start_dev_server=False)
    changed, _ = world.run(
        "ensure", files={"package.json": '{"name": "x"}'}, start_dev_server=False
    )
    assert (first["installed"], again["installed"], changed["installed"]) == (True, False, True)


def test_snapshot_and_restore_record_what_they_took(world: World) -> None:
    world.run("write", files={"a.txt": "one"})
    taken, ctx = world.run("snapshot")
    assert [t.snapshot_id for t in ctx.snapshots] == [taken["snapshot_id"]]
    world.run("write", files={"a.txt": "changed"})
    world.run("restore", snapshot_id=taken["snapshot_id"])
    assert world.files() == {"a.txt": b"one"}


def test_a_transient_provider_error_propagates_for_the_worker_to_retry(world: World) -> None:
    fault = {"op": "create", "count": 1, "mode": "transient", "latency": 0.0}
    world.provider.store.inject(fault)  # type: ignore[attr-defined]
    with pytest.raises(TransientError):
        world.run("ensure", start_dev_server=False)
    assert world.run("ensure", start_dev_server=False)[0]["created"] is True


def test_a_handler_gets_its_own_payload_class(world: World) -> None:
    ctx = ActionContext(
        settings=world.settings,
        action_id=uuid.uuid4(),
        kind="read",
        payload=validate_payload("write", {"files": {"a": "b"}}),
        ws=world.ws,
        providers=lambda name: world.provider,
        breaker=world.breaker,
    )
    with pytest.raises(TypeError, match="ReadPayload"):
        execute(ctx)
