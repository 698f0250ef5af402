"""Secrets the whole deployment shares through Postgres: the key that seals ``env`` values.

Every process (api, workers, beat, gateway, producers) reads the same row, whatever its working
directory or container. The first one to find the table empty writes it, atomically: an INSERT
that loses the race changes nothing, and everyone then reads the winner's value.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet

from qai_jobs.db.session import db_retry, engine_for
from qai_jobs.errors import ConfigurationError

log = logging.getLogger(__name__)

SEALING = "sealing"
# Where versions before the shared key kept one per working directory. Imported (only into an
# empty table) so that env values those versions sealed keep opening after the upgrade.
LEGACY_KEY_FILE = Path(".qai/secret.key")
MIN_LENGTH = 32  # the table's CHECK: never an empty or truncated key

_INSERT = sa.text(
    "INSERT INTO deployment_secrets (name, value) VALUES (:n, :v) ON CONFLICT (name) DO NOTHING"
)
_SELECT = sa.text("SELECT value FROM deployment_secrets WHERE name = :n")


def _legacy_key(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    # A racing older version could leave an empty file: never adopt that as the key.
    return value if len(value) >= MIN_LENGTH else None


@db_retry
def sealing_secret(database_url: str, legacy: Path | None = LEGACY_KEY_FILE) -> str:
    """The deployment's sealing secret, created if there is none yet."""
    imported = _legacy_key(legacy) if legacy is not None else None
    candidate = imported or Fernet.generate_key().decode()
    try:
        with engine_for(database_url).begin() as conn:
            inserted = conn.execute(_INSERT, {"n": SEALING, "v": candidate}).rowcount
            value = conn.execute(_SELECT, {"n": SEALING}).scalar_one_or_none()
    except sa.exc.ProgrammingError as exc:
        if "deployment_secrets" not in str(exc):
            raise
        raise ConfigurationError(
            "the database has no deployment_secrets table: run `qai-jobs migrate`, "
            "or set WORKSPACE_SECRET_KEY"
        ) from None
    if not value or len(value) < MIN_LENGTH:
        raise ConfigurationError("the deployment's sealing key in the database is empty")
    if inserted and imported:
        log.info("imported the sealing key from %s into the database", legacy)
    return str(value)
