"""The install step: run the package manager when the manifest or lock file changed."""

from __future__ import annotations

from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.providers.base import Sandbox
from qai_jobs.runner.context import ActionContext
from qai_jobs.sync import INSTALL_INPUTS, install_command_for, install_fingerprint


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def install(ctx: ActionContext, sb: Sandbox, command: str | None) -> bool:
    """Run the install when the manifest or lock file changed since the last good install.

    Two states of the inputs count as installed: as they were when the install ran (what the
    producer sent) and as the install left them. An install without a lock file writes one
    (``npm install`` writes package-lock.json), and one may rewrite a lock file it was sent;
    either way the next ensure with the very same files must find nothing to do, whether the
    producer sends its version again or not. A change by anyone else installs again."""
    provider = ctx.provider
    present = provider.hashes(sb, list(INSTALL_INPUTS))
    fingerprint = install_fingerprint(present)
    command = command or ctx.ws.install_command or ctx.settings.workspace_install_command
    command = command or install_command_for(list(present))
    if fingerprint is None or command is None or fingerprint in installed(ctx.ws.install_hash):
        return False
    ctx.progress("installing", None, None)
    result = provider.run(
        sb,
        ["bash", "-lc", command],
        env=ctx.env(),
        timeout_s=ctx.settings.workspace_install_timeout_seconds,
        cancel=ctx.cancel,
    )
    if result.exit_code != 0:
        ctx.ws.install_hash = None
        output = _tail(result.stdout + "\n" + result.stderr)
        reason = "timed out" if result.timed_out else f"exited with {result.exit_code}"
        raise PermanentError(
            f"install ({command}) {reason}:\n{output}", code=ErrorCode.INSTALL_FAILED
        )
    after = install_fingerprint(provider.hashes(sb, list(INSTALL_INPUTS))) or fingerprint
    ctx.ws.install_hash = fingerprint if after == fingerprint else f"{fingerprint} {after}"
    return True


def installed(install_hash: str | None) -> set[str]:
    """The fingerprints the last good install stands for (see :func:`install`)."""
    return set(install_hash.split()) if install_hash else set()
