"""Snapshots in S3-compatible object storage (``WORKSPACE_SNAPSHOT_STORE=s3://bucket/prefix``),
through boto3 (the ``s3`` extra), for a fleet whose hosts share no file system.

Keys under the prefix: ``snapshots/<id>.tar.gz`` and its manifest ``snapshots/<id>.json``
(written last), ``by-source/<sandbox>.json`` (what one sandbox holds), and an empty
``refs/<id>/<sandbox>`` per holder of a snapshot. There is no lock: a sandbox's own list changes
only in its actions, which its project's lease runs one at a time, and a snapshot is deleted
when the last holder lets go and no ``refs/<id>/`` key is left. A sandbox that starts holding a
snapshot at the very moment its last other holder lets go may find it gone: that action fails
with ``snapshot_not_found``, never with a partial tree.

Archives stream both ways: written to an unlinked temporary file under WORKSPACE_ROOT, then
uploaded by boto3's transfer manager (multipart above 16 MB, at most 32 MB of it in memory);
read straight from the response body, member after member. Reads are bounded by size before
they start. Credentials are boto3's (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
instance roles) and never pass through this code, so no message of ours can show them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from qai_jobs.errors import ConfigurationError, TransientError
from qai_jobs.providers.local.snapshots import SNAPSHOT_ID, Held, SnapshotStore, checked_source

if TYPE_CHECKING:
    from qai_jobs.config import Settings

MIB = 1024 * 1024
META_MAX = 64 * MIB  # a manifest of a few hundred thousand files
INDEX_MAX = 4 * MIB
_MISSING = {"NoSuchKey", "404", "NotFound"}


class _Body:
    """A response body as a file tar can stream from: transport errors become OSError (a
    TransientError for the action), like a failing disk's would."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def read(self, n: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        try:
            data: bytes = self.body.read(None if n < 0 else n)
        except (BotoCoreError, HTTPError) as exc:
            raise OSError(f"snapshot download interrupted ({type(exc).__name__})") from None
        return data


class S3SnapshotStore(SnapshotStore):
    def __init__(
        self,
        settings: Settings,
        bucket: str,
        prefix: str,
        keep: int,
        max_file_bytes: int | None = None,
    ) -> None:
        super().__init__(keep, max_file_bytes)
        try:
            import boto3
        except ImportError:
            raise ConfigurationError(
                "WORKSPACE_SNAPSHOT_STORE=s3://... needs boto3: pip install 'qai-jobs[s3]'"
            ) from None
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url = settings.workspace_s3_endpoint_url
        # Where archives are written before upload: this host's disk, not /tmp (often memory).
        self.spool = Path(settings.workspace_root).expanduser().resolve()
        # An archive holds a sandbox's tree, which its disk bounds (gzip adds little to data
        # it cannot compress); anything bigger is not one of ours.
        self.max_archive_bytes = (settings.workspace_local_max_disk_mb + 64) * MIB
        if boto3.session.Session().get_credentials() is None:
            raise ConfigurationError(
                "WORKSPACE_SNAPSHOT_STORE=s3://... found no AWS credentials: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the workers"
            )
        self._client: Any = None
        self._client_pid = 0

    @property
    def client(self) -> Any:
        """One client per process: boto3's are thread-safe but not fork-safe, and Celery
        forks its pool after the provider exists."""
        if self._client is None or self._client_pid != os.getpid():
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 5},
                # S3-compatible servers are reached by URL, rarely by a bucket's DNS name.
                s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, config=config
            )
            self._client_pid = os.getpid()
        return self._client

    # -- keys: built from checked ids only, so none can climb out of the prefix --------------
    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _snapshot_key(self, snapshot_id: str, ext: str) -> str:
        if not SNAPSHOT_ID.match(snapshot_id):
            raise TransientError(f"invalid snapshot id {snapshot_id!r}")
        return self._key("snapshots", f"{snapshot_id}.{ext}")

    def _ref_key(self, snapshot_id: str, source: str = "") -> str:
        self._snapshot_key(snapshot_id, "json")
        return self._key("refs", snapshot_id, checked_source(source) if source else "")

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """botocore's errors as ours: the S3 error code and the operation, nothing else."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise FileNotFoundError(what) from None
            raise TransientError(f"snapshot store: {what} failed ({code or 'error'})") from None
        except BotoCoreError as exc:
            raise TransientError(f"snapshot store: {what} failed ({type(exc).__name__})") from None

    def _get_small(self, key: str, limit: int) -> bytes:
        with self._calling("reading " + key.rsplit("/", 1)[-1]):
            got = self.client.get_object(Bucket=self.bucket, Key=key)
            body = got["Body"]
            if int(got.get("ContentLength", 0)) > limit:
                body.close()
                raise TransientError(f"snapshot store: {key.rsplit('/', 1)[-1]} is too big")
            data: bytes = body.read(limit + 1)
        return data

    def _put(self, key: str, body: bytes) -> None:
        with self._calling("writing " + key.rsplit("/", 1)[-1]):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def _delete(self, key: str) -> None:
        with self._calling("deleting " + key.rsplit("/", 1)[-1]):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    # -- the primitives ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _new_archive(self, snapshot_id: str) -> Iterator[BinaryIO]:
        from boto3.s3.transfer import TransferConfig

        key = self._snapshot_key(snapshot_id, "tar.gz")
        self.spool.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.spool, prefix=".snapshot-") as out:
            yield out
            out.seek(0)
            transfer = TransferConfig(
                multipart_threshold=16 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4
            )
            # What the upload holds in memory: 4 parts of 8 MB (s3transfer's default is 10).
            transfer.max_in_memory_upload_chunks = 4
            with self._calling("uploading the archive"):
                self.client.upload_fileobj(out, self.bucket, key, Config=transfer)

    @contextlib.contextmanager
    def _open_archive(self, snapshot_id: str) -> Iterator[BinaryIO]:
        key = self._snapshot_key(snapshot_id, "tar.gz")
        with self._calling("downloading the archive"):
            got = self.client.get_object(Bucket=self.bucket, Key=key)
        body = got["Body"]
        try:
            if int(got.get("ContentLength", 0)) > self.max_archive_bytes:
                raise TransientError(f"snapshot {snapshot_id!r} is bigger than any sandbox disk")
            yield _Body(body)  # type: ignore[misc]
        finally:
            body.close()

    def _write_meta(self, snapshot_id: str, body: bytes) -> None:
        self._put(self._snapshot_key(snapshot_id, "json"), body)

    def _read_meta(self, snapshot_id: str) -> bytes:
        return self._get_small(self._snapshot_key(snapshot_id, "json"), META_MAX)

    def _index(self, source: str) -> str:
        return self._key("by-source", f"{checked_source(source)}.json")

    def _held_by(self, source: str) -> Held:
        try:
            return Held.parse(self._get_small(self._index(source), INDEX_MAX))
        except FileNotFoundError:
            return Held()

    @contextlib.contextmanager
    def _holding(self, source: str) -> Iterator[Held]:
        held = self._held_by(source)
        before = held.all()
        yield held
        after = held.all()
        # References first: a snapshot is never without one while somebody holds it.
        for snapshot_id in after - before:
            self._put(self._ref_key(snapshot_id, source), b"")
        if after:
            self._put(self._index(source), json.dumps(asdict(held)).encode())
        else:
            with contextlib.suppress(FileNotFoundError):
                self._delete(self._index(source))
        for snapshot_id in before - after:
            with contextlib.suppress(FileNotFoundError):
                self._delete(self._ref_key(snapshot_id, source))
            if not self._referenced(snapshot_id):
                self._drop({snapshot_id})

    def _referenced(self, snapshot_id: str) -> bool:
        prefix = self._ref_key(snapshot_id) + "/"
        with self._calling("listing holders"):
            got = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(got.get("KeyCount", 0))

    def _drop(self, ids: set[str]) -> None:
        for snapshot_id in ids:
            for ext in ("json", "tar.gz"):  # the manifest first
                with contextlib.suppress(FileNotFoundError):
                    self._delete(self._snapshot_key(snapshot_id, ext))
