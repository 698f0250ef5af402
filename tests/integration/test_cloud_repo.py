"""A private ``repo`` on Modal and E2B (over the SDK fakes, through a real worker): the token
in ``https://user:token@host/...`` fetches the checkout, and is then nowhere to be found.

git runs inside the sandbox; the server is a real smart-HTTP git server behind TLS and basic
auth. ``origin`` names the URL without credentials, the checkout's config does not hold them,
no file of the sandbox, no SDK call's argv, no worker log line, no action or workspace row and
no error message does either.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from qai_jobs.errors import ActionFailed
from tests.integration.cloud_support import Cloud, cloud
from tests.support.git_https import GitHttps
from tests.support.scan import files_holding

__all__ = ["cloud"]  # the fixture
WAIT = 90
USER = "deploy-bot"
# The sandbox's git must trust the test server's self-signed certificate.
TRUST = {"GIT_SSL_NO_VERIFY": "true"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitHttps]:
    srv = GitHttps(tmp_path, USER, "tok-" + secrets.token_hex(12))
    yield srv
    srv.close()


def _rows_holding(database_url: str, needle: str) -> dict[str, int]:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {
                table: conn.execute(
                    sa.text(f"SELECT count(*) FROM {table} t WHERE t::text LIKE :s"),
                    {"s": f"%{needle}%"},
                ).scalar_one()
                for table in ("actions", "workspaces")
            }
    finally:
        engine.dispose()


def _git_trace(tmp: Path) -> tuple[dict[str, str], Path]:
    """GIT_TRACE: git writes every command line it runs, its own and its helpers'
    (``git remote-https origin <url>``), which other sandboxed processes could read."""
    log = tmp / "git-trace.log"
    return {"GIT_TRACE": str(log)}, log


def test_the_token_fetches_the_checkout_and_is_then_nowhere(
    cloud: Cloud, server: GitHttps, tmp_path: Path
) -> None:
    token = server.password
    path_env, argv_log = _git_trace(tmp_path)
    head = server.repo("app.git", {"README.md": "private\n"})
    project = f"repo-{uuid.uuid4().hex[:8]}"
    url = server.url("app.git", user=USER, password=token)
    try:
        ensured = cloud.client.ensure(
            project,
            repo={"url": url, "ref": "main"},
            env={**TRUST, **path_env},
            start_dev_server=False,
            network={"egress": "internet"},
        ).wait(WAIT)
        assert server.authorizations, "the server never saw the credentials"
        argvs = argv_log.read_text()
        assert "remote-https" in argvs, argvs  # the trace saw git's command lines...
        assert token not in argvs and USER not in argvs  # ...never the credentials
        ran = cloud.client.command(
            project,
            cmd="git remote get-url origin; git rev-parse HEAD; git status --porcelain; "
            "cat .git/config; cat README.md",
        ).wait(WAIT)
        lines = ran["stdout"].splitlines()
        assert lines[0] == server.url("app.git")  # origin, without the credentials
        assert lines[1] == head
        assert "private" in lines[-1]
        assert token not in ran["stdout"] + ran["stderr"] and USER not in ran["stdout"]
        # A second ensure fetches again with them (the workspace row keeps them sealed).
        again = cloud.client.ensure(
            project, repo={"url": url, "ref": "main"}, start_dev_server=False
        ).wait(WAIT)
        assert again["sandbox_id"] == ensured["sandbox_id"]

        assert files_holding(cloud.fake_dir, token.encode()) == []  # sandboxes and journal
        assert token not in cloud.worker.log()
        assert _rows_holding(cloud.env["DATABASE_URL"], token) == {"actions": 0, "workspaces": 0}
    finally:
        cloud.client.destroy(project).wait(WAIT)


def test_wrong_credentials_fail_without_showing_them(cloud: Cloud, server: GitHttps) -> None:
    server.repo("app.git", {"README.md": "private\n"})
    wrong = "wrong-" + secrets.token_hex(8)
    project = f"repo-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(ActionFailed) as failed:
            cloud.client.ensure(
                project,
                repo={"url": server.url("app.git", user=USER, password=wrong), "ref": "main"},
                env=TRUST,
                start_dev_server=False,
            ).wait(WAIT)
        assert failed.value.code == "repo_unavailable", failed.value
        message = str(failed.value)
        assert server.url("app.git") in message  # says which repository
        assert wrong not in message
        tried = [base64.b64decode(a.split()[-1]).decode() for a in server.authorizations]
        assert f"{USER}:{wrong}" in tried  # the helper did hand them to git
        assert wrong not in cloud.worker.log()
        assert _rows_holding(cloud.env["DATABASE_URL"], wrong) == {"actions": 0, "workspaces": 0}
    finally:
        cloud.client.destroy(project).wait(WAIT)
