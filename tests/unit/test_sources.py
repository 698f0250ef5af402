"""The repository source policy (sources.py) and the host git environment it leads to."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from qai_jobs.config import load_settings
from qai_jobs.errors import ConfigurationError, ValidationFailed
from qai_jobs.providers.local.git import host_env
from qai_jobs.sources import SourcePolicy, classify, scrub, without_credentials
from qai_jobs.validation import PayloadLimits, validate_payload

ALL = SourcePolicy(frozenset({"https", "ssh", "file"}), (Path("/srv/qai/workspaces"),))
HTTPS = SourcePolicy()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://github.com/a/b.git", "https"),
        ("HTTPS://github.com/a/b.git", "https"),
        ("http://github.com/a/b.git", "http"),
        ("git://github.com/a/b.git", "git"),
        ("ssh://git@github.com/a/b.git", "ssh"),
        ("git@github.com:a/b.git", "ssh"),
        ("github.com:a/b.git", "ssh"),
        ("file:///srv/repo", "file"),
        ("/srv/repo", "file"),
        ("./repo", "file"),
        ("repo", "file"),
        ("ext::sh -c touch% /tmp/x", "ext::"),
        ("fd::17", "fd::"),
        ("https::https://github.com/a/b", "https::"),
    ],
)
def test_every_spelling_git_reads_is_classified(url: str, kind: str) -> None:
    assert classify(url) == kind


@pytest.mark.parametrize(
    "url",
    [
        "http://github.com/a/b.git",
        "git://github.com/a/b.git",
        "ssh://git@github.com/a/b.git",
        "git@github.com:a/b.git",
        "file:///srv/repo",
        "/srv/repo",
        "ext::sh -c id",
        "https::https://github.com/a/b",
        "-uhttps://github.com/a",
        "https://github.com/a b",
        "https://github.com/a\nb",
    ],
)
def test_the_default_policy_admits_only_https(url: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        HTTPS.check(url)
    assert info.value.field == "repo.url"


def test_https_credentials_leave_the_url_for_a_header() -> None:
    source = HTTPS.check("https://x-access-token:s3cr%40t@github.com:8443/a/b.git")
    assert source.fetch_url == source.origin == "https://github.com:8443/a/b.git"
    expected = base64.b64encode(b"x-access-token:s3cr@t").decode()
    assert source.auth_header == f"Authorization: Basic {expected}"
    assert "s3cr" not in repr(source)
    assert HTTPS.check("https://github.com/a/b").auth_header is None


def test_ssh_refuses_passwords_and_option_like_hosts() -> None:
    assert ALL.check("git@github.com:a/b.git").origin == "git@github.com:a/b.git"
    for url in ("ssh://u:pw@github.com/a", "ssh://-oProxyCommand=x/a", "-oProxy=x:a"):
        with pytest.raises(ValidationFailed):
            ALL.check(url)


def test_file_sources_never_point_into_the_service(tmp_path: Path) -> None:
    root = tmp_path / "workspaces"
    (root / "p-1" / "git").mkdir(parents=True)
    policy = SourcePolicy(frozenset({"file"}), (root.resolve(),))
    link = tmp_path / "link"
    link.symlink_to(root / "p-1")
    for url in (
        f"file://{root}",
        f"file://{root}/p-1/git",
        str(link),
        f"{tmp_path}/x/../workspaces",
    ):
        with pytest.raises(ValidationFailed, match="own directories"):
            policy.check(url)
    for url in ("file://example.com/srv/x", "relative/path", "file://relative"):
        with pytest.raises(ValidationFailed):
            policy.check(url)
    other = tmp_path / "elsewhere"
    assert policy.check(str(other)).fetch_url == f"file://{other.resolve()}"


def test_validation_applies_the_settings_policy(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, workspace_root=tmp_path / "ws")
    limits = PayloadLimits.from_settings(settings)
    with pytest.raises(ValidationFailed) as info:
        validate_payload("ensure", {"repo": {"url": str(tmp_path / "r")}}, limits)
    assert info.value.field == "repo.url"
    # A remote client's default limits leave the decision to the server.
    validate_payload("ensure", {"repo": {"url": str(tmp_path / "r")}}, PayloadLimits())
    with pytest.raises(ValidationFailed) as info:
        validate_payload("ensure", {"repo": {"url": "https://h/r", "ref": "-upload"}}, limits)
    assert info.value.field == "repo.ref"


def test_settings_refuse_unknown_schemes_and_ssh_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="WORKSPACE_REPO_SCHEMES"):
        load_settings(_env_file=None, workspace_repo_schemes="https,git")
    with pytest.raises(ConfigurationError, match="WORKSPACE_REPO_SSH_KEY"):
        load_settings(_env_file=None, workspace_repo_schemes="https,ssh")
    with pytest.raises(ConfigurationError, match="WORKSPACE_REPO_SSH_KEY"):
        load_settings(
            _env_file=None, workspace_repo_schemes="ssh", workspace_repo_ssh_key=tmp_path / "no"
        )
    key = tmp_path / "id_ed25519"
    key.write_text("key")
    settings = load_settings(
        _env_file=None, workspace_repo_schemes="ssh,https", workspace_repo_ssh_key=key
    )
    assert settings.workspace_repo_schemes == {"ssh", "https"}


def test_host_git_environment_is_private_and_allows_only_enabled_protocols(
    tmp_path: Path,
) -> None:
    key = tmp_path / "key"
    key.write_text("k")
    settings = load_settings(
        _env_file=None, workspace_repo_schemes="https,ssh", workspace_repo_ssh_key=key
    )
    source = HTTPS.check("https://user:tok3n@example.com/r.git")
    home = tmp_path / "home"
    env = host_env(settings, source, home, tmp_path / "git")
    assert env["HOME"] == str(home) and env["XDG_CONFIG_HOME"] == str(home / ".config")
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    config = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert config["protocol.allow"] == "never"
    allowed = {k for k, v in config.items() if k.startswith("protocol.") and v == "always"}
    assert allowed == {"protocol.https.allow", "protocol.ssh.allow"}
    assert config["http.extraHeader"] == source.auth_header
    ssh = env["GIT_SSH_COMMAND"]
    assert f"-i {key}" in ssh and "IdentitiesOnly=yes" in ssh and "-F /dev/null" in ssh
    assert "BatchMode=yes" in ssh and "IdentityAgent=none" in ssh
    assert "tok3n" not in " ".join(env.values())  # only base64'd, inside the header
    assert scrub("fatal: https://u:tok3n@h/r", "tok3n") == "fatal: https://***@h/r"


def test_origins_never_show_credentials() -> None:
    assert without_credentials("https://u:t0k@h.example/r.git") == "https://h.example/r.git"
    assert without_credentials("https://t0k@h.example:8443/r") == "https://h.example:8443/r"
    assert without_credentials("ssh://git@h.example/r") == "ssh://git@h.example/r"
    assert without_credentials("ssh://git:pw@h.example/r") == "ssh://h.example/r"
    assert without_credentials("git@h.example:r.git") == "git@h.example:r.git"
    assert without_credentials("/srv/repo") == "/srv/repo"
