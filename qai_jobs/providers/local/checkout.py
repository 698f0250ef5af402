"""Make ``/workspace`` a real git checkout of the fetched commit, with git run in the sandbox.

``/workspace/.git`` belongs to the sandbox: its hooks and config are whatever sandboxed code
wrote, so only git inside the jail ever touches it. The host's private mirror (git.py) is bound
read-only for this one command and fetched from like any remote; ``origin`` names the source's
URL without credentials. A later sync fast-forwards: local commits that diverge, or local
changes the update would overwrite, fail the ensure instead of being thrown away.
"""

from __future__ import annotations

from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.providers.base import ExecResult
from qai_jobs.providers.local.git import SYNC_REF, Fetched
from qai_jobs.sources import Source

SOURCE_MOUNT = "/run/qai/source"
IDENTITY = ("qai", "qai@workspace.invalid")  # for `git commit` where none is configured
TIMEOUT_S = 600
_REFUSED = 3  # the script's exit code for a refusal it explains on stderr

SCRIPT = r"""
set -u
fail() { echo "$*" >&2; exit 3; }
fetch() {
  git -c protocol.file.allow=always fetch -q --no-tags "$@" "$QAI_SOURCE" "+$QAI_SYNC_REF:$track"
}
git init -q . || fail "cannot initialise /workspace/.git"
if git remote get-url origin >/dev/null 2>&1; then git remote set-url origin "$QAI_ORIGIN"
else git remote add origin "$QAI_ORIGIN"; fi
track="refs/remotes/origin/${QAI_BRANCH:-qai-fetched}"
head=$(git rev-parse -q --verify 'HEAD^{commit}' 2>/dev/null || true)
if [ -z "$head" ]; then
  fetch --depth 1 || exit 1
  git config --get user.email >/dev/null || git config user.email "$QAI_EMAIL"
  git config --get user.name >/dev/null || git config user.name "$QAI_NAME"
  if [ -n "$QAI_BRANCH" ]; then
    git checkout -q -f -B "$QAI_BRANCH" "$QAI_COMMIT" || exit 1
    git branch -q --set-upstream-to="origin/$QAI_BRANCH" || exit 1
  else
    git checkout -q -f --detach "$QAI_COMMIT" || exit 1
  fi
elif [ "$head" != "$QAI_COMMIT" ]; then
  fetch || exit 1
  git merge-base --is-ancestor "$head" "$QAI_COMMIT" ||
    fail "the workspace has commits that are not in $QAI_REF ($head); push or reset them first"
  git merge -q --ff-only "$QAI_COMMIT" 2>&1 >/dev/null | tail -n 20 >&2
  [ "$(git rev-parse HEAD)" = "$QAI_COMMIT" ] ||
    fail "local changes in the workspace would be overwritten by $QAI_REF; commit or discard them"
fi
git rev-parse HEAD
"""


def checkout_env(source: Source, fetched: Fetched, ref: str, mirror: str) -> dict[str, str]:
    """The script's environment: no credentials (the sandbox fetches from the mirror)."""
    return {
        "QAI_SOURCE": "file://" + mirror,
        "QAI_SYNC_REF": SYNC_REF,
        "QAI_COMMIT": fetched.commit,
        "QAI_BRANCH": fetched.branch or "",
        "QAI_REF": ref,
        "QAI_ORIGIN": source.origin,
        "QAI_NAME": IDENTITY[0],
        "QAI_EMAIL": IDENTITY[1],
        "GIT_TERMINAL_PROMPT": "0",
    }


def checked_out(result: ExecResult, fetched: Fetched, ref: str) -> str:
    """The checkout's HEAD, or why the workspace could not move to the fetched commit."""
    lines = result.stdout.strip().splitlines()
    if result.exit_code == 0 and lines and lines[-1] == fetched.commit:
        return fetched.commit
    why = result.stderr.strip()[-500:] or f"exit code {result.exit_code}"
    if result.timed_out:
        why = f"timed out after {TIMEOUT_S} s"
    prefix = "" if result.exit_code == _REFUSED else f"could not check out {ref!r}: "
    raise PermanentError(prefix + why, code=ErrorCode.REPO_UNAVAILABLE)
