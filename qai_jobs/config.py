"""Settings: one object, read from the environment (and ``.env``), built at the entry point.

The worker host's group (local sandboxes, the fleet, the snapshot store) is declared in
``host_settings``; ``Settings`` holds it and everything else, and is what callers import.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from qai_jobs.egress import INTERNET, Egress, parse_egress
from qai_jobs.errors import ConfigurationError
from qai_jobs.host_settings import HostSettings, check_name
from qai_jobs.sources import parse_schemes

KNOWN_PROVIDERS = ("local", "modal", "e2b", "fake")
# Spellings of this machine that one deployment's processes may use for the same database.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/qai_jobs"


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(HostSettings):
    """Every knob (README "Configuration"). Field names are the lower-cased variable names.

    WORKSPACE_ROOT, WORKSPACE_LOCAL_*, WORKSPACE_HOST_*, WORKSPACE_SNAPSHOT_STORE and
    WORKSPACE_S3_ENDPOINT_URL come from :class:`HostSettings`, with what is derived from them
    (``isolation``, ``snapshot_dir``, ``snapshot_s3``).
    """

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
    # What sandboxed code may reach (egress.py).
    workspace_egress: Annotated[Egress, NoDecode] = INTERNET
    # Which repositories an ensure may fetch (sources.py): https by default; ssh only with the
    # operator's key (never the worker's own ~/.ssh), file for development and tests.
    workspace_repo_schemes: Annotated[frozenset[str], NoDecode] = frozenset({"https"})
    workspace_repo_ssh_key: Path | None = Field(default=None, validate_default=True)
    # known_hosts for ssh sources; unset: hosts are trusted on first use, remembered in
    # WORKSPACE_ROOT/.ssh_known_hosts.
    workspace_repo_ssh_known_hosts: Path | None = None
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
    # Not in the contract's table, but needed by anyone tuning retries.
    workspace_retry_base_seconds: PositiveFloat = 1.0
    workspace_retry_max_seconds: PositiveFloat = 300.0
    workspace_secret_key: SecretStr | None = None  # the contract's: seals env values at rest
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
    # command gets its own timeout plus the margin; an ensure, wake, restore or preview (which
    # may install and start the dev server) gets the base plus the install and dev server
    # timeouts (worker/attempt.py).
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
        if value is None:
            return value
        # Checked here, not at the first delivery: a secret that does not decode would fail
        # every delivery after its row was claimed, and the events would retry forever.
        # As the Standard Webhooks library reads it (surrounding whitespace and missing padding
        # are fine), but strictly: a character outside the alphabet, which the library would
        # silently drop, would sign with another key than the receiver's.
        raw = value.get_secret_value().strip()
        body = raw.removeprefix("whsec_")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except ValueError:  # binascii.Error
            key = b""
        if body == raw or not key:
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

    @field_validator("workspace_deployment_id")
    @classmethod
    def _deployment_id(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

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
