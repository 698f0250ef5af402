"""A sandbox lost behind our back comes back from the file record, not from old payloads:
real workers on the fake provider, a real webhook receiver, the prune sweep's own queries."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from qai_jobs import ActionFailed
from qai_jobs.config import Settings
from qai_jobs.db import file_record, maintenance
from qai_jobs.db.session import engine_for
from qai_jobs.providers.base import Sandbox
from qai_jobs.testing import FakeProvider, journal
from tests.conftest import settings_for
from tests.integration.ops_support import Receiver, env_for, events_of, isolated_env, wait_until


@pytest.fixture(scope="module")
def base_env(base_env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield from isolated_env(base_env)


@pytest.fixture(scope="module")
def settings(base_env: dict[str, str]) -> Settings:
    return settings_for(base_env)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Any:
    from qai_jobs.client import WorkspaceClient

    return WorkspaceClient(settings)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=0)
    yield r
    r.close()


def _sandbox(client: Any, project: str) -> Sandbox:
    return Sandbox("fake", client.get_workspace(project)["sandbox_id"], {"project_id": project})


def _tree(settings: Settings, sb: Sandbox) -> dict[str, bytes]:
    store = FakeProvider(settings).store
    return {p: bytes(c) for p, c in store.hgetall(f"files:{sb.sandbox_id}").items()}


def _vanish(settings: Settings, sb: Sandbox) -> None:
    """Delete the sandbox behind the system's back (as a provider losing it would)."""
    FakeProvider(settings).store.delete(f"sb:{sb.sandbox_id}", f"files:{sb.sandbox_id}")


def _moved(receiver: Receiver, project: str) -> dict[str, Any]:
    """The project's one workspace.moved webhook, as the receiver verified it."""

    def moved() -> list[dict[str, Any]]:
        return [e for e in events_of(receiver, project) if e["type"] == "workspace.moved"]

    [event] = wait_until(moved, 30, "the workspace.moved webhook")
    return event


def _prune_everything(settings: Settings) -> None:
    engine = engine_for(settings.database_url)
    while any(len(part) >= 1000 for part in maintenance.prune_batch(engine, 0, 1000)):
        pass
    while file_record.collect_garbage(engine, 1000)[0] >= 1000:
        pass


def _count(settings: Settings, sql: str, project: str) -> int:
    with engine_for(settings.database_url).connect() as conn:
        return int(conn.execute(sa.text(sql), {"p": project}).scalar_one())


def test_a_lost_sandbox_comes_back_from_the_record_after_its_payloads_were_pruned(
    workers: Any, client: Any, settings: Settings, receiver: Receiver, project: str
) -> None:
    workers(concurrency=2, **env_for(receiver.url("/flaky")))
    client.ensure(
        project,
        files={"a.txt": "a0", "b.txt": "b", "c.txt": "c0", "d.txt": "d", "same.txt": "x"},
        start_dev_server=False,
    ).wait(30)
    for i in range(1, 6):  # overwrites, a delete, a file that comes and goes
        client.write(project, files={"a.txt": f"a{i}", "tmp.txt": f"t{i}"}).wait(30)
        client.write(project, files={"twin.txt": "x"}, delete=["tmp.txt"]).wait(30)
    binary = [{"path": "e.bin", "content": "AAH/", "encoding": "base64"}]
    client.write(project, files=binary, delete=["b.txt"]).wait(30)
    snapshot_id = client.sleep(project).wait(30)["snapshot_id"]
    # After the snapshot: an overwrite, a delete the snapshot does not know, a new file.
    client.write(project, files={"c.txt": "c1", "f.txt": "f"}, delete=["d.txt"]).wait(30)
    expected = _tree(settings, _sandbox(client, project))

    _prune_everything(settings)
    payloads = "SELECT count(*) FROM actions WHERE project_id = :p"
    assert _count(settings, payloads, project) == 0  # no payload is left to replay
    # Storage is the current files, once per content (same.txt and twin.txt share one).
    blobs = (
        "SELECT count(*) FROM file_blobs WHERE sha256 IN "
        "(SELECT content_sha256 FROM workspace_files WHERE project_id = :p)"
    )
    assert _count(settings, blobs, project) == len(set(expected.values())) == 5
    assert _count(settings, "SELECT count(*) FROM file_blobs", project) == 5

    # A command after the snapshot: what it made is in no snapshot and no record.
    cmd = client.command(project, "echo build")
    cmd.wait(30)
    sb = _sandbox(client, project)
    FakeProvider(settings).store.hset(f"files:{sb.sandbox_id}", {"made-by-build.txt": b"1"})
    _vanish(settings, sb)

    got = client.read(project, paths=["a.txt", "e.bin"]).wait(30)
    assert [f["content"] for f in got["files"]] == ["a5", "AAH/"]
    rebuilt = _sandbox(client, project)
    assert rebuilt.sandbox_id != sb.sandbox_id
    assert _tree(settings, rebuilt) == expected  # exactly: d.txt gone, no made-by-build.txt
    assert expected["e.bin"] == b"\x00\x01\xff"

    event = _moved(receiver, project)
    assert event["data"]["snapshot_id"] == snapshot_id
    assert [x["action_id"] for x in event["data"]["lost"]] == [str(cmd.id)]
    assert event["data"]["from_host"] == event["data"]["to_host"] == "fake"
    assert client.get_workspace(project)["status"] == "ready"


def test_a_rebuild_after_a_restore_gives_back_the_restored_tree(
    workers: Any, client: Any, settings: Settings, project: str
) -> None:
    workers(concurrency=1)
    client.ensure(project, files={"a.txt": "v1", "b.txt": "b"}, start_dev_server=False).wait(30)
    snapshot_id = client.snapshot(project).wait(30)["snapshot_id"]
    # Written and deleted after the snapshot, then undone by restoring it.
    client.write(project, files={"a.txt": "v2", "new.txt": "n"}, delete=["b.txt"]).wait(30)
    client.restore(project, snapshot_id).wait(30)
    restored = _tree(settings, _sandbox(client, project))
    assert restored == {"a.txt": b"v1", "b.txt": b"b"}

    _vanish(settings, _sandbox(client, project))
    got = client.read(project, paths=["a.txt", "b.txt"]).wait(30)
    assert [f["content"] for f in got["files"]] == ["v1", "b"]
    assert _tree(settings, _sandbox(client, project)) == restored


def test_a_record_that_cannot_be_honoured_fails_history_incomplete_until_a_full_ensure(
    workers: Any, client: Any, settings: Settings, project: str
) -> None:
    workers(concurrency=1)
    client.ensure(project, files={"a.txt": "A", "b.txt": "B"}, start_dev_server=False).wait(30)
    digest = hashlib.sha256(b"B").hexdigest()
    with engine_for(settings.database_url).begin() as conn:
        conn.execute(
            sa.text("UPDATE file_blobs SET content = 'tampered' WHERE sha256 = :h"), {"h": digest}
        )
    _vanish(settings, _sandbox(client, project))

    with pytest.raises(ActionFailed) as failed:
        client.read(project, paths=["a.txt"]).wait(30)
    assert failed.value.error["code"] == "history_incomplete"
    assert failed.value.error["retryable"] is False
    assert "b.txt" in failed.value.error["message"]
    assert client.get_workspace(project)["status"] == "error"
    # The partial tree serves nothing: the next action is refused too, not run on it.
    with pytest.raises(ActionFailed) as again:
        client.command(project, "echo hi").wait(30)
    assert again.value.error["code"] == "history_incomplete"
    # A delta cannot repair it (its base is a record that does not hold); the full tree does.
    full = client.ensure(project, files={"a.txt": "A", "b.txt": "B"}, start_dev_server=False)
    assert full.wait(30)["files_written"] >= 1
    assert client.get_workspace(project)["status"] == "ready"
    assert _tree(settings, _sandbox(client, project)) == {"a.txt": b"A", "b.txt": b"B"}
    assert client.command(project, "echo hi").wait(30)["stdout"] == "hi\n"
    with engine_for(settings.database_url).connect() as conn:
        healed = "SELECT content FROM file_blobs WHERE sha256 = :h"
        assert bytes(conn.execute(sa.text(healed), {"h": digest}).scalar_one()) == b"B"

    # Content no longer held at all (a row from before the record, no payload left): the same.
    with engine_for(settings.database_url).begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE workspace_files SET content_sha256 = NULL "
                "WHERE project_id = :p AND path = 'a.txt'"
            ),
            {"p": project},
        )
    _vanish(settings, _sandbox(client, project))
    with pytest.raises(ActionFailed) as unheld:
        client.read(project, paths=["b.txt"]).wait(30)
    assert unheld.value.error["code"] == "history_incomplete"
    assert "a.txt" in unheld.value.error["message"]


def test_a_large_history_rebuilds_a_bounded_batch_at_a_time(
    workers: Any, client: Any, settings: Settings, project: str
) -> None:
    worker = workers(concurrency=1)
    # 40 files of 512 KiB (20 MiB now) written three times over: 60 MiB of payloads.
    size = 512 * 1024
    for round_ in range(3):
        files = {f"f{i:02}.bin": os.urandom(size) for i in range(40)}
        encoded = [
            {"path": p, "content": base64.b64encode(c).decode(), "encoding": "base64"}
            for p, c in files.items()
        ]
        client.write(project, files=encoded).wait(60)
    sb = _sandbox(client, project)
    expected = _tree(settings, sb)
    assert expected == files
    _vanish(settings, sb)

    client.read(project, paths=["f00.bin"]).wait(60)
    rebuilt = _sandbox(client, project)
    assert _tree(settings, rebuilt) == expected
    # The record is read as a listing, then content a batch at a time (16 MiB: 32 files,
    # then 8), each written before the next is fetched; the payloads are never read.
    writes = [
        j
        for j in journal(settings.redis_url, project)
        if j["op"] == "write_files" and j["sandbox_id"] == rebuilt.sandbox_id
    ]
    assert len(writes) == 2
    worker.wait_for_log(f"restored {project}: 40 recorded files in 2 batches (40 written)")


def test_the_blob_sweep_never_takes_a_blob_a_settle_is_about_to_reference(
    settings: Settings, project: str
) -> None:
    """The settle's SQL against the sweep's, on two connections (no worker needed)."""
    from qai_jobs.db import manifest
    from qai_jobs.db.manifest import ManifestUpdate

    engine = engine_for(settings.database_url)
    content = os.urandom(64)
    digest = hashlib.sha256(content).hexdigest()
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO workspaces (project_id, id) VALUES (:p, gen_random_uuid())"),
            {"p": project},
        )
        conn.execute(
            sa.text("INSERT INTO file_blobs (sha256, content, size) VALUES (:h, :c, 64)"),
            {"h": digest, "c": content},
        )  # left unreferenced, as an overwritten file's content is
    update = ManifestUpdate(upsert={"a.bin": digest}, contents={"a.bin": digest})
    update.blobs[digest] = content
    with engine.begin() as settle:
        manifest.apply(settle, project, 1, update)  # not committed yet
        file_record.collect_garbage(engine, 1000)  # passes it by, does not wait for it
    with engine.connect() as conn:
        kept = conn.execute(
            sa.text(
                "SELECT b.content FROM workspace_files f JOIN file_blobs b "
                "ON b.sha256 = f.content_sha256 WHERE f.project_id = :p"
            ),
            {"p": project},
        ).scalar_one()
    assert bytes(kept) == content
    # Once nothing references it, the sweep takes it.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM workspaces WHERE project_id = :p"), {"p": project})
    file_record.collect_garbage(engine, 1000)
    with engine.connect() as conn:
        left = "SELECT count(*) FROM file_blobs WHERE sha256 = :h"
        assert conn.execute(sa.text(left), {"h": digest}).scalar_one() == 0


def test_a_snapshot_the_provider_lost_too_leaves_the_record_and_says_so(
    workers: Any, client: Any, settings: Settings, receiver: Receiver, project: str
) -> None:
    """The record alone restores every file qai-jobs wrote; what only the snapshot held (what
    commands made) is reported lost: ``snapshot_id`` null and every command since creation."""
    workers(concurrency=1, **env_for(receiver.url("/flaky")))
    client.ensure(project, files={"a.txt": "A"}, start_dev_server=False).wait(30)
    before = client.command(project, "echo before")
    before.wait(30)
    snapshot_id = client.snapshot(project).wait(30)["snapshot_id"]
    client.write(project, files={"b.txt": "B"}).wait(30)
    FakeProvider(settings).store.delete(f"snapmeta:{snapshot_id}", f"snap:{snapshot_id}")
    _vanish(settings, _sandbox(client, project))

    got = client.read(project, paths=["a.txt", "b.txt"]).wait(30)
    assert [f["content"] for f in got["files"]] == ["A", "B"]
    assert _tree(settings, _sandbox(client, project)) == {"a.txt": b"A", "b.txt": b"B"}

    event = _moved(receiver, project)
    assert event["data"]["snapshot_id"] is None
    assert [x["action_id"] for x in event["data"]["lost"]] == [str(before.id)]
