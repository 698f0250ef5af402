"""Host-side git for the local provider's repo sources: fetch into a private bare mirror.

Runs as the worker, outside the sandbox, so nothing the sandbox or the repository controls may
configure or execute anything here. The mirror lives in the workspace's private area (never
bound into the sandbox writable); git runs with an empty HOME and XDG_CONFIG_HOME of its own
(not the sandbox's home, where a planted ``.netrc`` or ``.config/git/attributes`` would be
read), no system or global config, hooks and fsmonitor off, and only the enabled transports
(``protocol.allow=never``). Credentials never reach argv: a URL's ``user:token@`` travels as an
``http.extraHeader`` in ``GIT_CONFIG_*`` environment variables. ``/workspace/.git`` is made by
git inside the sandbox (``checkout.py``); the host never runs git on it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qai_jobs.config import Settings
from qai_jobs.errors import ErrorCode, PermanentError, TransientError
from qai_jobs.providers.local.jail import SAFE_PATH
from qai_jobs.sources import Source, git_config_env, scrub

_TIMEOUT_S = 600
SYNC_REF = "refs/heads/qai-sync"  # the fetched commit, which the sandbox's checkout fetches
_BRANCH = re.compile(r"\tbranch '([^']+)' of ")
_SAFE_CONFIG = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.askPass", ""),
    ("credential.helper", ""),
    ("submodule.recurse", "false"),
    ("advice.detachedHead", "false"),
    ("protocol.allow", "never"),
)


@dataclass(frozen=True)
class Fetched:
    commit: str
    branch: str | None  # the remote branch ``ref`` named; None for a tag or a commit


def host_env(settings: Settings, source: Source, home: Path, git_dir: Path) -> dict[str, str]:
    """The whole environment of host-side git: nothing inherited from the worker."""
    config = list(_SAFE_CONFIG)
    config += [
        (f"protocol.{scheme}.allow", "always") for scheme in sorted(settings.workspace_repo_schemes)
    ]
    if source.auth_header:
        config.append(("http.extraHeader", source.auth_header))
    env = {
        "PATH": SAFE_PATH,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LANG": "C.UTF-8",
        "GIT_DIR": str(git_dir),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": ssh_command(settings, home),
    }
    return env | git_config_env(config)


def ssh_command(settings: Settings, home: Path) -> str:
    """ssh with the operator's key only: no agent, no ~/.ssh of the worker, no config file."""
    key = settings.workspace_repo_ssh_key
    if "ssh" not in settings.workspace_repo_schemes or key is None:
        return "false"
    known = settings.workspace_repo_ssh_known_hosts
    checking = "yes" if known else "accept-new"
    known = known or settings.workspace_root / ".ssh_known_hosts"
    parts = [
        "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
        "-o", f"StrictHostKeyChecking={checking}", "-o", f"UserKnownHostsFile={known}",
    ]  # fmt: skip
    return shlex.join(parts)


def fetch_mirror(settings: Settings, git_dir: Path, source: Source, ref: str) -> Fetched:
    """Fetch ``ref`` from the source into the private mirror; record it at SYNC_REF."""
    with tempfile.TemporaryDirectory(prefix="qai-git-home-") as home:
        env = host_env(settings, source, Path(home), git_dir)
        secret = source.auth_header or ""

        def git(*args: str) -> str:
            return _git(env, args, git_dir.parent, f"{ref!r} from {source.origin!r}", secret)

        if not (git_dir / "HEAD").exists():
            git_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            git("init", "-q", "--bare")
        known = git("for-each-ref", "--count=1", "--format=%(objectname)", SYNC_REF)
        # The first fetch is shallow; later ones bring the commits since the last, so the
        # sandbox can fast-forward (and tell a diverged history from a newer one).
        depth = [] if known else ["--depth", "1"]
        # "--" keeps a hostile url or ref from being read as an option.
        git(
            "fetch",
            "-q",
            *depth,
            "--no-tags",
            "--no-recurse-submodules",
            "--",
            source.fetch_url,
            ref,
        )
        commit = git("rev-parse", "--verify", "FETCH_HEAD^{commit}")
        git("update-ref", SYNC_REF, commit)
        head = (git_dir / "FETCH_HEAD").read_text(errors="replace")
    branch = _BRANCH.search(head)
    return Fetched(commit, branch[1] if branch else None)


def _git(env: dict[str, str], args: tuple[str, ...], cwd: Path, what: str, secret: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TransientError(f"git {args[0]} timed out after {_TIMEOUT_S} s") from None
    except FileNotFoundError:
        raise PermanentError(
            "git is not installed on the worker", code=ErrorCode.REPO_UNAVAILABLE
        ) from None
    if done.returncode != 0:
        tail = scrub(done.stderr.decode(errors="replace").strip()[-500:], secret)
        raise PermanentError(
            f"could not sync {scrub(what, secret)}: {tail}", code=ErrorCode.REPO_UNAVAILABLE
        )
    return done.stdout.decode(errors="replace").strip()
