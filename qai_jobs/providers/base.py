"""The provider protocol: the small set of sandbox operations every backend implements.

A provider is stateless between calls: everything it needs to find a sandbox again lives in
:class:`Sandbox` (persisted as JSON on the workspace row), because consecutive actions of one
project may run in different worker processes. Each provider maps its SDK's exceptions onto
``TransientError`` (retry), ``PermanentError`` (fail) and ``SandboxGone`` (recreate) in one place.

Paths given to a provider are relative POSIX paths already validated by ``schemas.check_path``;
``cwd`` is such a path too (or None for the workspace root). Commands are argv lists; a shell
command is ``["bash", "-lc", cmd]``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qai_jobs.cancel import Cancel
from qai_jobs.config import Settings
from qai_jobs.egress import Egress
from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.results import CommandResult


def safe_text(data: bytes) -> str:
    """Bytes a sandbox produced, as text any JSON column can hold: decoded as UTF-8 with
    invalid bytes and NUL replaced (Postgres' jsonb cannot store NUL)."""
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


class ReadBudget:
    """What a ``read`` may bring into the worker: each file up to WORKSPACE_MAX_FILE_BYTES, all
    together up to WORKSPACE_MAX_ACTION_BYTES. A sandbox decides its files' sizes, so they are
    checked before a byte is read (``sizes``, from a stat), and every read is bounded again
    (``cap`` + 1 bytes at most) in case a file grew since."""

    def __init__(self, settings: Settings, sizes: Mapping[str, int]) -> None:
        self.file = settings.workspace_max_file_bytes
        self.total = settings.workspace_max_action_bytes
        for path, size in sizes.items():
            self._check_file(path, size)
        if sum(sizes.values()) > self.total:
            raise self._too_much(sum(sizes.values()))
        self.left = self.total

    def cap(self) -> int:
        """The most the next file may hold (read one byte more to notice a bigger one)."""
        return min(self.file, self.left)

    def spend(self, path: str, size: int) -> None:
        self._check_file(path, size)
        if size > self.left:
            raise self._too_much(self.total - self.left + size)
        self.left -= size

    def _check_file(self, path: str, size: int) -> None:
        if size > self.file:
            raise PermanentError(
                f"{path!r} holds {size} bytes, over the limit of {self.file} a file",
                code=ErrorCode.FILE_TOO_LARGE,
            )

    def _too_much(self, total: int) -> PermanentError:
        return PermanentError(
            f"the files hold {total} bytes together, over the limit of {self.total} a read",
            code=ErrorCode.READ_TOO_LARGE,
        )


OutputCallback = Callable[[str, bytes], None]
"""Called with ("stdout"|"stderr", chunk) while a command runs, for live output."""


@dataclass
class Sandbox:
    """What qai-jobs remembers about one sandbox; JSON-serialisable through ``to_json``."""

    provider: str
    sandbox_id: str
    state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "sandbox_id": self.sandbox_id, "state": self.state}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sandbox:
        return cls(str(data["provider"]), str(data["sandbox_id"]), dict(data.get("state") or {}))


class SandboxStatus(enum.StrEnum):
    RUNNING = "running"
    SLEEPING = "sleeping"
    GONE = "gone"


@dataclass(frozen=True)
class CreateSpec:
    project_id: str
    workspace_id: str
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    # Create from this snapshot instead of an empty tree (wake / restore / recreate).
    snapshot_id: str | None = None
    # What the sandbox may reach (egress.py); None: WORKSPACE_EGRESS.
    egress: Egress | None = None


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool = False
    truncated: bool = False

    def to_json(self) -> CommandResult:
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration_ms": self.duration_ms,
            "timed_out": self.timed_out,
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class SleepOutcome:
    sandbox: Sandbox
    snapshot_id: str | None


class Provider(abc.ABC):
    """One sandbox backend. Implementations: local, modal, e2b, fake."""

    name: ClassVar[str]
    # Seconds between looks at a starting dev server's port: during its first 2 s, then after.
    # Each look is two sandbox commands on a cloud provider, a loopback connect on local.
    port_poll_seconds: ClassVar[tuple[float, float]] = (0.1, 0.5)
    # Whether a sandbox's processes live through sleep and wake (E2B's pause keeps its memory):
    # then a woken workspace's dev server is the one it had, not one to start again.
    keeps_processes_asleep: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- lifecycle ---------------------------------------------------------------------------
    @abc.abstractmethod
    def create(self, spec: CreateSpec) -> Sandbox:
        """Provision a new sandbox (from ``spec.snapshot_id`` when given)."""

    @abc.abstractmethod
    def adopt(self, sandbox_id: str, spec: CreateSpec) -> Sandbox:
        """Take over an existing sandbox by its provider id; SandboxGone if it does not exist."""

    @abc.abstractmethod
    def status(self, sb: Sandbox) -> SandboxStatus:
        """What the provider says of the sandbox now (reconciliation before every action)."""

    @abc.abstractmethod
    def sleep(self, sb: Sandbox) -> SleepOutcome:
        """Stop every process and release compute; files must survive until wake."""

    @abc.abstractmethod
    def wake(self, sb: Sandbox) -> Sandbox:
        """Bring a sleeping sandbox back (files restored from its sleep snapshot if needed)."""

    @abc.abstractmethod
    def snapshot(self, sb: Sandbox) -> str:
        """Record the workspace tree; the returned id is accepted by restore and create."""

    @abc.abstractmethod
    def restore(self, sb: Sandbox, snapshot_id: str) -> Sandbox:
        """Make the tree exactly the snapshot's.

        PermanentError(code=ErrorCode.SNAPSHOT_NOT_FOUND) if the id is unknown.
        """

    @abc.abstractmethod
    def destroy(self, sb: Sandbox) -> None:
        """Stop everything and free the sandbox; a sandbox already gone is not an error."""

    def needs_recycle(self, sb: Sandbox) -> bool:
        """Whether the sandbox nears a lifetime cap and should move to a fresh one."""
        return False

    def recycle(self, sb: Sandbox) -> Sandbox:
        """Move the workspace to a fresh sandbox (processes must be restarted)."""
        return sb

    # -- files -------------------------------------------------------------------------------
    @abc.abstractmethod
    def write_files(self, sb: Sandbox, files: Sequence[tuple[str, bytes]]) -> None:
        """Write files (creating parent directories), never following a symlink out."""

    @abc.abstractmethod
    def delete_files(self, sb: Sandbox, paths: Sequence[str]) -> list[str]:
        """Delete files; return the ones that existed."""

    @abc.abstractmethod
    def read_files(self, sb: Sandbox, paths: Sequence[str]) -> dict[str, bytes | None]:
        """Read files; None for a missing one. Within a :class:`ReadBudget`: file_too_large or
        read_too_large before anything is read."""

    @abc.abstractmethod
    def hashes(self, sb: Sandbox, paths: Sequence[str] | None = None) -> dict[str, str]:
        """sha256 of the given files that exist, or of the whole tree minus ignored paths.

        A file over ``settings.tracked_max_file_bytes`` counts as absent either way: it cannot
        be one a producer sent, and hashing it is not worth its cost."""

    # -- processes ---------------------------------------------------------------------------
    @abc.abstractmethod
    def run(
        self,
        sb: Sandbox,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 300,
        on_output: OutputCallback | None = None,
        cancel: Cancel | None = None,
    ) -> ExecResult:
        """Run to completion (killing the whole process group on timeout).

        When ``cancel`` fires, the command's whole process tree is stopped at once and the
        cancel's reason is raised instead of a result.
        """

    @abc.abstractmethod
    def start_process(
        self, sb: Sandbox, command: str, *, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Start a long-lived shell command (the dev server) that outlives this call.

        Returns a JSON-serialisable record (pid, start time, log location) kept in Postgres.
        """

    @abc.abstractmethod
    def process_alive(self, sb: Sandbox, proc: Mapping[str, Any]) -> bool: ...

    @abc.abstractmethod
    def stop_process(self, sb: Sandbox, proc: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def read_log(self, sb: Sandbox, proc: Mapping[str, Any], tail: int) -> str:
        """The last ``tail`` lines the process wrote (stdout and stderr together)."""

    # -- network -----------------------------------------------------------------------------
    def set_egress(self, sb: Sandbox, egress: Egress) -> None:
        """Apply the egress policy to a running sandbox, before the ensure that set it goes on;
        PermanentError(code="unsupported_network_policy") when the provider cannot express it.
        The default keeps the provider's network as it is."""
        return None

    def dev_port(self, sb: Sandbox, requested: int) -> int:
        """The port the dev server listens on inside the sandbox (local allocates its own)."""
        return requested

    @abc.abstractmethod
    def preview_url(self, sb: Sandbox, port: int) -> str: ...

    @abc.abstractmethod
    def port_ready(self, sb: Sandbox, port: int) -> bool:
        """Whether something answers HTTP on the port (any status counts)."""

    # -- source ------------------------------------------------------------------------------
    def git_sync(self, sb: Sandbox, url: str, ref: str) -> str:
        """Clone or fast-forward the workspace to ``url``'s ``ref``; return the HEAD commit.

        The default runs git inside the sandbox; providers whose sandbox cannot see the URL
        (local paths under bwrap) override it.
        """
        from qai_jobs.errors import PermanentError
        from qai_jobs.sources import SourcePolicy, git_config_env, scrub

        source = SourcePolicy.from_settings(self.settings).check(url)
        script = (
            "set -e; if [ ! -d .git ]; then git init -q . ; fi; "
            'git remote add origin "$QAI_REPO_ORIGIN" 2>/dev/null || '
            'git remote set-url origin "$QAI_REPO_ORIGIN"; '
            'git fetch -q --depth 1 -- "$QAI_REPO_URL" "$QAI_REPO_REF"; '
            "git reset -q --hard FETCH_HEAD; git rev-parse HEAD"
        )
        env = {
            "QAI_REPO_URL": source.fetch_url,  # no credentials: not on git's argv either
            "QAI_REPO_ORIGIN": source.origin,
            "QAI_REPO_REF": ref,
            "GIT_TERMINAL_PROMPT": "0",
        }
        if source.auth_header:
            env |= git_config_env([("http.extraHeader", source.auth_header)])
        result = self.run(sb, ["bash", "-lc", script], env=env, timeout_s=600)
        if result.exit_code != 0:
            tail = scrub(result.stderr.strip()[-500:], source.auth_header or "")
            raise PermanentError(
                f"could not fetch {ref!r} from {source.origin!r}: {tail}",
                code=ErrorCode.REPO_UNAVAILABLE,
            )
        return result.stdout.strip().splitlines()[-1]
