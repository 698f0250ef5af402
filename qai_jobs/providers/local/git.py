"""Host-side git for the local provider's repo sources.

Runs as the worker, outside the sandbox, so nothing the sandbox or the repository controls may
execute: the git directory lives in the workspace's private area (sandboxed code cannot plant a
hook, an fsmonitor or a filter in its config), hooks point at /dev/null, system and global
config are ignored, and the ``ext::`` transport is off.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from qai_jobs.errors import ErrorCode, PermanentError, TransientError
from qai_jobs.providers.local.jail import SAFE_PATH
from qai_jobs.providers.repo_auth import split_credentials

_TIMEOUT_S = 600
_SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "protocol.ext.allow=never",
    "submodule.recurse=false",
    "advice.detachedHead=false",
)


def git_sync(tree: Path, git_dir: Path, home: Path, url: str, ref: str) -> str:
    """Clone on first call, then fetch + hard reset to ``url``'s ``ref``; return HEAD."""
    # The URL's credentials reach git through a helper's environment: never its argv (the
    # host's `ps`) nor the git directory's config.
    auth = split_credentials(url)
    env = {
        **auth.env(),
        "PATH": SAFE_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_DIR": str(git_dir),
        "GIT_WORK_TREE": str(tree),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    base = ["git"]
    for item in _SAFE_CONFIG:
        base += ["-c", item]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                [*base, *args],
                env=env,
                cwd=tree,
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
            tail = auth.scrub(done.stderr.decode(errors="replace").strip()[-500:])
            raise PermanentError(
                f"could not sync {ref!r} from {auth.url!r}: {tail}",
                code=ErrorCode.REPO_UNAVAILABLE,
            )
        return done.stdout.decode(errors="replace").strip()

    if not (git_dir / "HEAD").exists():
        git("init", "-q")
    # "--" keeps a hostile url or ref from being read as an option.
    git("config", "remote.origin.url", auth.url)
    git("fetch", "-q", "--depth", "1", "--no-tags", "--no-recurse-submodules", "--", auth.url, ref)
    git("reset", "-q", "--hard", "FETCH_HEAD")
    return git("rev-parse", "HEAD")
