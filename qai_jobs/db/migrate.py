"""`qai-jobs migrate`: create the database if it is missing, then upgrade to head."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from sqlalchemy.engine import make_url

from alembic import command

# alembic/ sits at the top of the repository, beside the package.
ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["url"] = url
    return cfg


def create_database_if_missing(url: str) -> bool:
    """Create the database named in ``url``; True if it had to be created."""
    target = make_url(url)
    name = target.database
    if not name:
        raise ValueError("DATABASE_URL names no database")
    admin = sa.create_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            try:
                conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
            except sa.exc.ProgrammingError as exc:
                if "already exists" not in str(exc):
                    raise
                return False
            return True
    finally:
        admin.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def migrate(url: str) -> bool:
    from qai_jobs.db.secrets import sealing_secret

    created = create_database_if_missing(url)
    upgrade(url)
    # The deployment's sealing key, before any process needs it (a no-op once written).
    sealing_secret(url)
    return created
