"""The models and the migrations describe the same schema; `migrate` creates a missing DB."""

from __future__ import annotations

import subprocess
import sys
import uuid

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from qai_jobs.db.models import Base
from tests.support import services


def test_models_match_migrations(service_urls: dict[str, str]) -> None:
    engine = sa.create_engine(service_urls["DATABASE_URL"], poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_migrate_creates_the_database_then_is_idempotent(base_env: dict[str, str]) -> None:
    url = services.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/qai_mig_{uuid.uuid4().hex[:8]}"
    env = {**base_env, "DATABASE_URL": url}
    try:
        first = subprocess.run(
            [sys.executable, "-m", "qai_jobs", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.returncode == 0, first.stderr
        assert "created the database" in first.stdout
        again = subprocess.run(
            [sys.executable, "-m", "qai_jobs", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0 and "created" not in again.stdout
    finally:
        services.drop_database(url)
