"""The models and the migrations describe the same schema; `migrate` creates a missing DB."""

from __future__ import annotations

import json
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


def test_0010_backfills_the_file_record_from_history_and_goes_back_down() -> None:
    from alembic import command
    from qai_jobs.db.migrate import alembic_config, create_database_if_missing, upgrade

    url = services.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/qai_mig_{uuid.uuid4().hex[:8]}"
    create_database_if_missing(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        upgrade(url, "0009")
        payloads = [  # (seq, kind, files): a destroy forgets what came before it
            (1, "ensure", [{"path": "gone.txt", "content": "before destroy"}]),
            (2, "destroy", None),
            (
                3,
                "ensure",
                [
                    {"path": "a.txt", "content": "old"},
                    {"path": "b.bin", "content": "AAE=", "encoding": "base64"},
                ],
            ),
            (4, "write", [{"path": "a.txt", "content": "new"}]),
        ]
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO workspaces (project_id, id) VALUES ('p', gen_random_uuid())")
            )
            for seq, kind, files in payloads:
                conn.execute(
                    sa.text(
                        "INSERT INTO actions (id, project_id, seq, kind, payload, status) "
                        "VALUES (gen_random_uuid(), 'p', :seq, :kind, CAST(:payload AS jsonb), 'succeeded')"
                    ),
                    {
                        "seq": seq,
                        "kind": kind,
                        "payload": json.dumps({"files": files} if files else {}),
                    },
                )
            for path in ("a.txt", "b.bin", "gone.txt", "made-by-a-command.txt"):
                conn.execute(
                    sa.text("INSERT INTO workspace_files VALUES ('p', :path, 'x')"), {"path": path}
                )
        upgrade(url, "0010")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT f.path, b.content FROM workspace_files f "
                    "LEFT JOIN file_blobs b ON b.sha256 = f.content_sha256 ORDER BY f.path"
                )
            ).all()
        assert [(r.path, r.content and bytes(r.content)) for r in rows] == [
            ("a.txt", b"new"),
            ("b.bin", b"\x00\x01"),
            ("gone.txt", None),  # written before the destroy: not this workspace's
            ("made-by-a-command.txt", None),  # no payload says: a rebuild reports it
        ]
        command.downgrade(alembic_config(url), "0009")
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            columns = {c["name"] for c in sa.inspect(conn).get_columns("workspace_files")}
        assert "file_blobs" not in tables and "workspace_deletions" not in tables
        assert columns == {"project_id", "path", "sha256"}
        upgrade(url, "head")  # and up again
    finally:
        engine.dispose()
        services.drop_database(url)


def test_0011_adds_the_pending_turn_and_goes_back_down() -> None:
    from alembic import command
    from qai_jobs.db.migrate import alembic_config, create_database_if_missing, upgrade

    url = services.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/qai_mig_{uuid.uuid4().hex[:8]}"
    create_database_if_missing(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def turn_columns() -> set[str]:
        with engine.connect() as conn:
            names = {c["name"] for c in sa.inspect(conn).get_columns("workspaces")}
        return names & {"turn", "turn_expires_at"}

    try:
        upgrade(url, "0011")
        assert turn_columns() == {"turn", "turn_expires_at"}
        command.downgrade(alembic_config(url), "0010")
        assert turn_columns() == set()
        upgrade(url, "head")  # and up again
        assert turn_columns() == {"turn", "turn_expires_at"}
    finally:
        engine.dispose()
        services.drop_database(url)
