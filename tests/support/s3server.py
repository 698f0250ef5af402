"""A real S3-compatible server for the s3:// snapshot store's tests: moto's standalone server
(``moto_server``, from the dev extra) in a process of its own, on a free port, with one bucket.
It speaks the S3 REST API over HTTP; boto3 in the workers talks to it as to any endpoint."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.procs import Proc

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
BUCKET = "qai-snapshots"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    url: str
    proc: Proc
    # Test credentials: moto accepts any; a real secret-shaped value so a test can look for it.
    access_key: str = "AKIAQAITESTFLEET0001"
    secret_key: str = "qai-test-secret-" + uuid.uuid4().hex

    def env(self, prefix: str) -> dict[str, str]:
        """What a worker needs to use the store ``s3://BUCKET/prefix`` on this server."""
        return {
            "WORKSPACE_SNAPSHOT_STORE": f"s3://{BUCKET}/{prefix}",
            "WORKSPACE_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def keys(self, prefix: str) -> list[str]:
        got = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
        return sorted(o["Key"].removeprefix(prefix + "/") for o in got.get("Contents", []))


@contextmanager
def s3_server(log_dir: Path, host: str = "127.0.0.1") -> Iterator[S3Server]:
    """``moto_server`` listening on ``host`` (the address the workers reach), bucket made."""
    port = _free_port(host)
    proc = Proc(
        [str(MOTO_SERVER), "-H", host, "-p", str(port)],
        {"PATH": os.environ["PATH"]},
        log_dir / f"s3-{port}.log",
    )
    server = S3Server(f"http://{host}:{port}", proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.client().create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {proc.log()}") from None
                time.sleep(0.2)
        yield server
    finally:
        proc.stop()
