"""Settings: one object, read from the environment (and ``.env``), built at the entry point."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shutil
import socket
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from qai_jobs.egress import INTERNET, Egress, parse_egress
from qai_jobs.errors import ConfigurationError
from qai_jobs.sources import parse_schemes

KNOWN_PROVIDERS = ("local", "modal", "e2b", "fake")
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# S3 bucket names (the DNS-compatible rules), and the key prefix's parts: never '.' or '..',
# which some S3-compatible servers resolve like a path.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_PART = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
# Spellings of this machine that one deployment's processes may use for the same database.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/qai_jobs"


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob (README "Configuration"). Field names are the lower-cased variable names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = "redis://localhost:6379/0"
    workspace_runtime: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["local"])
    workspace_token: SecretStr | None = None
    workspace_callback_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    workspace_webhook_secret: SecretStr | None = None
    # Checks inbound provider hooks (/api/workspaces/events) in each provider's own format: for
    # E2B the signature secret given when registering the webhook, else a Standard Webhooks
    # whsec_ secret. Unset: WORKSPACE_WEBHOOK_SECRET, with a warning.
    workspace_provider_hook_secret: SecretStr | None = None
    workspace_dev_command: str = "npm run dev -- --hostname 0.0.0.0 --port {port}"
    workspace_install_command: str | None = None
    workspace_preview_port: Annotated[int, Field(ge=1, le=65535)] = 3000
    workspace_inactivity_minutes: PositiveFloat = 20
    workspace_image: str | None = None
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
    # What sandboxed code may reach (egress.py), and where this host's previews are reached.
    workspace_egress: Annotated[Egress, NoDecode] = INTERNET
    # Which repositories an ensure may fetch (sources.py): https by default; ssh only with the
    # operator's key (never the worker's own ~/.ssh), file for development and tests.
    workspace_repo_schemes: Annotated[frozenset[str], NoDecode] = frozenset({"https"})
    workspace_repo_ssh_key: Path | None = Field(default=None, validate_default=True)
    # known_hosts for ssh sources; unset: hosts are trusted on first use, remembered in
    # WORKSPACE_ROOT/.ssh_known_hosts.
    workspace_repo_ssh_known_hosts: Path | None = None
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
    workspace_max_attempts: PositiveInt = 5
    # Which deployment's sandboxes these are, on cloud accounts several deployments share
    # (staging and production): sandboxes are tagged with it and the orphan sweeps touch only
    # their own. Unset: derived from DATABASE_URL (see ``deployment_id``).
    workspace_deployment_id: str | None = None
    # The Celery queue producers send to and workers consume; `qai-jobs bench` uses its own.
    workspace_queue: str = Field(default="celery", min_length=1)
    # How a producer sends an enqueue's message after the commit: background (a thread of the
    # process sends it, the enqueue returns at the commit) or inline (before returning).
    workspace_enqueue_send: Literal["background", "inline"] = "background"
    workspace_heartbeat_seconds: PositiveFloat = 10
    workspace_sweep_seconds: PositiveFloat = 60
    workspace_events_heartbeat_seconds: PositiveFloat = 15  # SSE comment lines on idle streams
    workspace_webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0]
    )
    # Not in the contract's table, but needed by anyone tuning retries or secrets at rest.
    workspace_retry_base_seconds: PositiveFloat = 1.0
    workspace_retry_max_seconds: PositiveFloat = 300.0
    workspace_secret_key: SecretStr | None = None
    workspace_max_file_bytes: PositiveInt = 10 * 1024 * 1024
    workspace_max_action_bytes: PositiveInt = 100 * 1024 * 1024
    workspace_max_files: PositiveInt = 10_000
    workspace_max_output_bytes: PositiveInt = 1024 * 1024
    # Files a sandbox made bigger than this (a sparse 50 GB file costs it nothing) are neither
    # hashed nor kept in local snapshots: like build output, they are left where they are.
    workspace_snapshot_max_file_bytes: PositiveInt = 1024 * 1024 * 1024
    workspace_max_timeout_s: PositiveFloat = 3600
    workspace_action_retention_days: PositiveFloat = 30
    workspace_dev_server_timeout_seconds: PositiveFloat = 120
    workspace_install_timeout_seconds: PositiveFloat = 1800
    # How long an action may hold its project before it is stopped (deadline_exceeded): a
    # command gets its own timeout plus the margin; an ensure (or a wake, which may install
    # and start the dev server) gets the base plus the install and dev server timeouts.
    workspace_action_deadline_seconds: PositiveFloat = 900
    # One drain's share of a worker slot: then the project goes to the back of the queue.
    workspace_drain_budget_seconds: PositiveFloat = 30
    workspace_deadline_margin_seconds: PositiveFloat = 60
    modal_token_id: SecretStr | None = None
    modal_token_secret: SecretStr | None = None
    modal_app_name: str = "qai-workspaces"
    e2b_api_key: SecretStr | None = None
    e2b_template: str | None = None
    # The preview gateway: one stable URL per workspace at <preview id>.<domain>.
    workspace_preview_domain: str | None = None
    workspace_preview_scheme: Literal["http", "https"] = "http"
    workspace_preview_auth: Literal["public", "token"] = "public"
    workspace_gateway_wake_seconds: PositiveFloat = 30
    workspace_gateway_activity_seconds: PositiveFloat = 5
    workspace_gateway_route_seconds: PositiveFloat = 1
    # auto: HAProxy serves running previews when installed; aiohttp: the Python side alone.
    workspace_gateway_data_plane: Literal["auto", "haproxy", "aiohttp"] = "auto"

    @field_validator("workspace_preview_domain")
    @classmethod
    def _preview_domain(cls, value: str | None) -> str | None:
        from qai_jobs.gateway.urls import check_domain

        return check_domain(value) if value else None

    @field_validator(
        "workspace_runtime",
        "workspace_callback_url",
        "workspace_webhook_retry_schedule",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("workspace_runtime")
    @classmethod
    def _known_runtimes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one provider")
        unknown = [name for name in value if name not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(
                f"unknown provider {unknown[0]!r}; choose from {', '.join(KNOWN_PROVIDERS)}"
            )
        return value

    @field_validator("workspace_callback_url")
    @classmethod
    def _callback_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError("each URL must start with http:// or https://")
        return value

    @field_validator("workspace_webhook_retry_schedule")
    @classmethod
    def _schedule_positive(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("delays must be zero or more seconds")
        return value

    @field_validator("workspace_webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must look like whsec_<base64>")
        return value

    @field_validator("workspace_secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would seal everything under a key anyone can guess.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (e.g. `openssl rand -base64 32`), or unset")
        return value

    @field_validator("workspace_egress", mode="before")
    @classmethod
    def _egress(cls, value: object) -> object:
        return parse_egress(value)

    @field_validator("workspace_repo_schemes", mode="before")
    @classmethod
    def _repo_schemes(cls, value: object) -> object:
        return parse_schemes(value)

    @field_validator("workspace_repo_ssh_key")
    @classmethod
    def _ssh_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "ssh" not in info.data.get("workspace_repo_schemes", ()):
            return value
        if value is None:
            raise ValueError("required when WORKSPACE_REPO_SCHEMES includes ssh (a key file)")
        value = value.expanduser().resolve()
        if not value.is_file():
            raise ValueError("names no readable key file")
        return value

    @field_validator("workspace_deployment_id", "workspace_host_id")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _DEPLOYMENT_ID.match(value):
            raise ValueError(
                "1 to 63 letters, digits, '.', '_' or '-', starting with one of the first two"
            )
        return value

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

    @property
    def snapshot_s3(self) -> tuple[str, str] | None:
        """Bucket and key prefix of an s3:// snapshot store; None for a directory."""
        store = self.workspace_snapshot_store
        if not store or not store.startswith("s3://"):
            return None
        bucket, _, prefix = store.removeprefix("s3://").partition("/")
        return bucket, prefix

    @property
    def snapshot_dir(self) -> Path:
        """Where local snapshots live (every host of a fleet must reach the same one)."""
        if self.workspace_snapshot_store and self.snapshot_s3 is None:
            return Path(self.workspace_snapshot_store)
        return self.workspace_root / "snapshots"

    @field_validator("workspace_host_address")
    @classmethod
    def _host_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError("must be an IP address of this host") from None

    @field_validator("database_url")
    @classmethod
    def _psycopg3(cls, value: str) -> str:
        # `postgresql://` means psycopg 3 here, not SQLAlchemy's default psycopg2.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @cached_property
    def isolation(self) -> Literal["bwrap", "none"]:
        """The local isolation in force: bwrap wherever it is installed unless told otherwise."""
        if self.workspace_local_isolation is not None:
            return self.workspace_local_isolation
        return "bwrap" if shutil.which("bwrap") else "none"

    @cached_property
    def deployment_id(self) -> str:
        """WORKSPACE_DEPLOYMENT_ID, or one derived from the database this deployment keeps its
        truth in (host, port and name: not the credentials, which rotate): every process of a
        deployment shares that database, and two deployments never do. A copy of the database
        restored elsewhere is another deployment."""
        if self.workspace_deployment_id:
            return self.workspace_deployment_id
        url = make_url(self.database_url)
        host = str(url.host or url.query.get("host") or "localhost").lower()
        host = "localhost" if host in _LOOPBACK else host
        where = f"{host}:{url.port or 5432}/{url.database or ''}"
        return "db-" + hashlib.sha256(where.encode()).hexdigest()[:16]

    @property
    def inactivity_seconds(self) -> float:
        return self.workspace_inactivity_minutes * 60

    @property
    def tracked_max_file_bytes(self) -> int:
        """The largest file hashed and snapshotted: never below what a producer may send, whose
        files must always be recognised and kept."""
        return max(self.workspace_snapshot_max_file_bytes, self.workspace_max_file_bytes)

    @property
    def lease_seconds(self) -> float:
        """Three missed heartbeats mark a worker lost."""
        return self.workspace_heartbeat_seconds * 3


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning a validation error into one line that names the variable.

    The offending value is never echoed: it may be a secret.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(f"{name}: {message}") from None
