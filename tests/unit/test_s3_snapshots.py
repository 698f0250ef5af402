"""The s3:// snapshot store against a real S3-compatible server (moto_server in its own
process): the local provider's snapshots round-trip through it, keep the same holding rules as
the directory store, leave nothing behind, and never show the credentials."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from qai_jobs.errors import ConfigurationError, PermanentError, TransientError
from qai_jobs.providers.base import CreateSpec
from qai_jobs.providers.local import LocalProvider
from qai_jobs.providers.local.s3store import S3SnapshotStore
from qai_jobs.sync import sha256
from tests.conformance.conftest import make_settings
from tests.support.s3server import S3Server, s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def prefix(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    env = s3.env(prefix)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    return prefix


def provider_for(tmp: Path, s3: S3Server, prefix: str, **extra: Any) -> LocalProvider:
    env = s3.env(prefix)
    return LocalProvider(
        make_settings(
            tmp,
            workspace_local_isolation="none",
            workspace_snapshot_store=env["WORKSPACE_SNAPSHOT_STORE"],
            workspace_s3_endpoint_url=env["WORKSPACE_S3_ENDPOINT_URL"],
            **extra,
        )
    )


def test_snapshots_round_trip_through_s3_and_nothing_is_left(
    tmp_path: Path, s3: S3Server, prefix: str
) -> None:
    provider = provider_for(tmp_path, s3, prefix, workspace_local_snapshots_kept=1)
    assert isinstance(provider.snapshots, S3SnapshotStore)
    sb = provider.create(CreateSpec("p", uuid.uuid4().hex, 3000))
    # Bigger than the multipart threshold (16 MiB), and incompressible.
    big = os.urandom(20 * 1024 * 1024)
    provider.write_files(sb, [("src/a.txt", b"one"), ("big.bin", big)])
    snapshot_id = provider.snapshot(sb)
    assert f"snapshots/{snapshot_id}.tar.gz" in s3.keys(prefix)
    provider.write_files(sb, [("src/a.txt", b"two"), ("new.txt", b"new")])
    provider.restore(sb, snapshot_id)
    got = provider.read_files(sb, ["src/a.txt", "new.txt"])
    assert got["src/a.txt"] == b"one" and got["new.txt"] is None
    assert provider.hashes(sb)["big.bin"] == sha256(big)

    # Another host's sandbox made from it keeps it after its taker is destroyed.
    elsewhere = provider_for(tmp_path / "host-b", s3, prefix, workspace_local_snapshots_kept=1)
    clone = elsewhere.create(CreateSpec("clone", uuid.uuid4().hex, 0, {}, snapshot_id))
    provider.destroy(sb)
    assert elsewhere.read_files(clone, ["src/a.txt"]) == {"src/a.txt": b"one"}
    elsewhere.restore(clone, snapshot_id)

    # Sleeps rotate (keep 1), and the last holder's destroy leaves an empty prefix.
    slept = []
    for i in range(3):
        elsewhere.write_files(clone, [("n.txt", str(i).encode())])
        slept.append(elsewhere.sleep(clone).snapshot_id)
        clone = elsewhere.wake(clone)
    with pytest.raises(PermanentError) as info:
        elsewhere.restore(clone, slept[0])
    assert info.value.code == "snapshot_not_found"
    ids = {k.split("/")[1].split(".")[0] for k in s3.keys(prefix) if k.startswith("snapshots/")}
    assert ids == {snapshot_id, slept[-1]}
    elsewhere.destroy(clone)
    assert s3.keys(prefix) == []


def test_ids_never_become_keys_outside_the_store(tmp_path: Path, s3: S3Server, prefix: str) -> None:
    provider = provider_for(tmp_path, s3, prefix)
    sb = provider.create(CreateSpec("p", uuid.uuid4().hex, 3000))
    for bad in ("../../other/snap", "snap-../x", f"snap-{'0' * 32}/../../x"):
        with pytest.raises(PermanentError) as info:
            provider.restore(sb, bad)
        assert info.value.code == "snapshot_not_found"
    with pytest.raises(PermanentError):
        provider.snapshots.forget("../by-source/x")
    provider.destroy(sb)
    for store in ("s3://b/../x", "s3://b/a/./x", "s3://Bad_Bucket/x", "s3://b/a b"):
        with pytest.raises(ValidationError, match="workspace_snapshot_store"):
            make_settings(tmp_path, workspace_snapshot_store=store)


def test_credentials_are_required_and_never_shown(
    tmp_path: Path, s3: S3Server, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = provider_for(tmp_path, s3, prefix)
    sb = provider.create(CreateSpec("p", uuid.uuid4().hex, 3000))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3.secret_key)
    provider = provider_for(tmp_path, s3, prefix)
    # moto checks no signatures: a bucket that does not exist stands for a refused request.
    provider.snapshots.bucket = "no-such-bucket"  # type: ignore[attr-defined]
    with pytest.raises(TransientError) as info:
        provider.snapshot(sb)
    assert "NoSuchBucket" in str(info.value)
    assert s3.secret_key not in str(info.value) and s3.access_key not in str(info.value)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigurationError, match="AWS_ACCESS_KEY_ID"):
        provider_for(tmp_path, s3, prefix)


def test_an_endpoint_with_credentials_in_it_is_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qai_jobs.config import load_settings

    monkeypatch.setenv("WORKSPACE_S3_ENDPOINT_URL", "http://AKIAX:very-secret@minio:9000")
    with pytest.raises(ConfigurationError) as info:
        load_settings(_env_file=None)
    assert "WORKSPACE_S3_ENDPOINT_URL" in str(info.value)
    assert "very-secret" not in str(info.value)
