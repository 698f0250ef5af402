"""The worker host's own settings: its local sandboxes and its place in a fleet.

One group of :class:`qai_jobs.config.Settings` (which is what callers build and import): where
this host keeps local workspaces and their snapshots, the limits and ports each local sandbox
gets, and how other hosts and the gateway know and reach it. Apart from the rest because it
changes with the local provider and the fleet, not with the action pipeline.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, PositiveFloat, PositiveInt, field_validator
from pydantic_settings import BaseSettings

# A host's or a deployment's name: it goes into sandbox tags, queue names and file names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# S3 bucket names (the DNS-compatible rules), and the key prefix's parts: never '.' or '..',
# which some S3-compatible servers resolve like a path.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_PART = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def check_name(value: str) -> str:
    """WORKSPACE_HOST_ID's and WORKSPACE_DEPLOYMENT_ID's shared rule."""
    if not _NAME.match(value):
        raise ValueError(
            "1 to 63 letters, digits, '.', '_' or '-', starting with one of the first two"
        )
    return value


class HostSettings(BaseSettings):
    """This host's part of Settings (README "Configuration"); build Settings, not this."""

    workspace_root: Path = Path("./.qai/workspaces")
    workspace_local_isolation: Literal["bwrap", "none"] | None = None
    # Per-sandbox limits of the local provider, so one runaway workspace cannot starve the host
    # or the other workspaces: processes, memory and CPU through a cgroup, disk through a
    # filesystem of its own, /tmp and /var/tmp as sized tmpfs, open files through rlimit.
    workspace_local_max_processes: PositiveInt = 512
    workspace_local_max_memory_mb: PositiveInt = 4096
    workspace_local_max_open_files: PositiveInt = 8192
    workspace_local_max_cpus: PositiveFloat = 2.0
    workspace_local_max_disk_mb: Annotated[int, Field(ge=32)] = 10240
    workspace_local_tmp_mb: PositiveInt = 1024  # each of /tmp and /var/tmp
    # Start the local provider even where some of those limits cannot be enforced (no
    # writable cgroup, no loop devices): the ones that can still apply.
    workspace_local_unlimited: bool = False
    # Sleep snapshots each local sandbox keeps (newest; wake needs only the last). Snapshots a
    # `snapshot` action took, and those a sandbox was restored from, stay until it is destroyed.
    workspace_local_snapshots_kept: PositiveInt = 10
    # Host ports handed out to local dev servers, one per workspace.
    workspace_local_port_min: Annotated[int, Field(ge=1024, le=65535)] = 41000
    workspace_local_port_max: Annotated[int, Field(ge=1024, le=65535)] = 41999
    # Where this host's previews are reached (by the gateway and other hosts).
    workspace_host_address: str = "127.0.0.1"
    # This worker's host in a fleet: a local workspace lives on one host, and only that host's
    # workers (consuming its own queue) run its actions. A host silent for the dead period is
    # dead and its workspaces move, through the snapshot store every host reaches.
    workspace_host_id: str = Field(default_factory=socket.gethostname, min_length=1)
    workspace_host_dead_seconds: PositiveFloat = 60
    # A directory (shared between hosts, e.g. NFS) or s3://bucket/prefix; unset: a
    # `snapshots` directory beside WORKSPACE_ROOT.
    workspace_snapshot_store: str | None = None
    # An S3-compatible server's URL (MinIO, Ceph, R2...) for an s3:// store; unset: AWS S3.
    # Credentials and region come from the standard AWS variables and files, never from here.
    workspace_s3_endpoint_url: str | None = None

    @field_validator("workspace_host_id")
    @classmethod
    def _host_id(cls, value: str) -> str:
        return check_name(value)

    @field_validator("workspace_root")
    @classmethod
    def _absolute_root(cls, value: Path) -> Path:
        # Made absolute once, at start-up: a worker started in another directory must find
        # the same workspaces, not a fresh empty root beside it.
        return value.expanduser().resolve()

    @field_validator("workspace_snapshot_store")
    @classmethod
    def _snapshot_store(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value.startswith("s3://"):
            bucket, _, prefix = value.removeprefix("s3://").partition("/")
            if not _BUCKET.match(bucket):
                raise ValueError("s3://BUCKET/prefix: 3 to 63 lowercase letters, digits, '.', '-'")
            parts = [p for p in prefix.split("/") if p]
            if any(p in {".", ".."} or not _KEY_PART.match(p) for p in parts):
                raise ValueError("s3://bucket/PREFIX: letters, digits, '.', '_', '-' between '/'")
            return "/".join(["s3:/", bucket, *parts])
        return str(Path(value).expanduser().resolve())

    @field_validator("workspace_s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        url = urlsplit(value)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if url.username or url.password:
            raise ValueError("must not hold credentials: use AWS_ACCESS_KEY_ID and friends")
        return value

    @field_validator("workspace_host_address")
    @classmethod
    def _host_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError("must be an IP address of this host") from None

    @property
    def snapshot_s3(self) -> tuple[str, str] | None:
        """Bucket and key prefix of an s3:// snapshot store; None for a directory."""
        store = self.workspace_snapshot_store
        if not store or not store.startswith("s3://"):
            return None
        bucket, _, prefix = store.removeprefix("s3://").partition("/")
        return bucket, prefix

    @cached_property
    def snapshot_dir(self) -> Path:
        """Where local snapshots live (every host of a fleet must reach the same one); decided
        once per process, since the upgrade case below looks at the disk."""
        if self.workspace_snapshot_store and self.snapshot_s3 is None:
            return Path(self.workspace_snapshot_store)
        # Beside the root, not in it: the root holds one directory per workspace. A root that
        # already has the directory earlier versions kept inside it goes on using that one,
        # or every workspace asleep at the upgrade could not be woken.
        inside = self.workspace_root / "snapshots"
        return inside if inside.is_dir() else self.workspace_root.parent / "snapshots"

    @cached_property
    def isolation(self) -> Literal["bwrap", "none"]:
        """The local isolation in force: bwrap wherever it is installed unless told otherwise."""
        if self.workspace_local_isolation is not None:
            return self.workspace_local_isolation
        return "bwrap" if shutil.which("bwrap") else "none"
