"""How qai-jobs talks to the Modal SDK: lazy import, credentials, handles, error mapping.

The SDK is imported lazily (``_sdk``); tests hand a fake module in through ``sdk=``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

from qai_jobs.config import Settings
from qai_jobs.errors import (
    ConfigurationError,
    ErrorCode,
    PermanentError,
    QaiJobsError,
    SandboxGone,
    TransientError,
)
from qai_jobs.providers import scripts as remote
from qai_jobs.providers.base import Sandbox
from qai_jobs.providers.modal.errors import map_modal_error
from qai_jobs.providers.shell import ShellProvider

STDIN_CHUNK = 1024 * 1024  # the SDK refuses more than 2 MiB buffered before a drain


def _sdk() -> Any:
    """The ``modal`` module (tests replace this function with one returning a fake)."""
    try:
        import modal
    except ImportError as exc:
        raise ConfigurationError(
            "the modal provider needs the Modal SDK: pip install 'qai-jobs[modal]'"
        ) from exc
    return modal


class ModalSdk(ShellProvider):
    """The Modal SDK seen from qai-jobs: credentials, handles, errors mapped, scripts run."""

    name: ClassVar[str] = "modal"

    def __init__(self, settings: Settings, *, sdk: Any = None) -> None:
        super().__init__(settings)
        # The SDK module; None = import the real one on first use (tests pass a fake).
        self._sdk_module = sdk
        self._client: Any = None
        self._app: Any = None

    # -- SDK plumbing ------------------------------------------------------------------------
    def _sdk(self) -> Any:
        return self._sdk_module if self._sdk_module is not None else _sdk()

    def _secrets(self) -> list[str]:
        s = self.settings
        return [v.get_secret_value() for v in (s.modal_token_id, s.modal_token_secret) if v]

    @contextlib.contextmanager
    def _guard(self, handle: Any = None, sandbox_id: str | None = None) -> Iterator[None]:
        """Map every SDK error to ours; confirm "not found" with a poll before calling it gone."""
        try:
            yield
        except QaiJobsError:
            raise
        except Exception as exc:
            err = map_modal_error(exc, self._sdk().exception, secrets=self._secrets())
            if isinstance(err, SandboxGone) and handle is not None:
                # A transport hiccup inside a filesystem call is rewritten to NotFoundError by
                # the SDK: only a sandbox that reports an exit code is really gone.
                try:
                    still_running = handle.poll() is None
                except Exception:
                    still_running = True
                if still_running:
                    err = TransientError(f"the Modal sandbox did not answer: {err.message}")
            if sandbox_id is not None and isinstance(err, SandboxGone):
                self._forget(sandbox_id)
            raise err from exc

    def _client_obj(self) -> Any:
        with self._lock:
            if (
                self._client is None
                and self.settings.modal_token_id
                and self.settings.modal_token_secret
            ):
                with self._guard():
                    self._client = self._sdk().Client.from_credentials(
                        self.settings.modal_token_id.get_secret_value(),
                        self.settings.modal_token_secret.get_secret_value(),
                    )
            return self._client

    def _app_obj(self) -> Any:
        client = self._client_obj()
        with self._lock:
            if self._app is None:
                with self._guard():
                    self._app = self._sdk().App.lookup(
                        self.settings.modal_app_name, create_if_missing=True, client=client
                    )
            return self._app

    def _handle(self, sb: Sandbox) -> Any:
        handle = self._cached(sb.sandbox_id)
        if handle is not None:
            return handle
        if sb.state.get("sleeping"):
            raise PermanentError(
                "the workspace is asleep: wake it first", code=ErrorCode.SANDBOX_SLEEPING
            )
        with self._guard(sandbox_id=sb.sandbox_id):
            handle = self._sdk().Sandbox.from_id(sb.sandbox_id, client=self._client_obj())
        self._remember(sb.sandbox_id, handle)
        return handle

    def _exec(
        self,
        sb: Sandbox,
        script: str,
        *,
        timeout_s: float | None = 120,
        stdin: bytes | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run a bash script of ours; bytes out, so file names and contents survive unmangled."""
        handle = self._handle(sb)
        with self._guard(handle, sb.sandbox_id):
            proc = handle.exec(
                "bash",
                "-c",
                script,
                workdir=remote.WORKDIR,
                text=False,
                timeout=None if timeout_s is None else math.ceil(timeout_s),
            )
            if stdin is not None:
                for i in range(0, len(stdin), STDIN_CHUNK):
                    proc.stdin.write(stdin[i : i + STDIN_CHUNK])
                    proc.stdin.drain()
                proc.stdin.write_eof()
                proc.stdin.drain()
            # Bounded: what a helper prints depends on the tree, which the sandbox controls.
            out = remote.Collected(remote.SCRIPT_OUTPUT_MAX)
            err = remote.Collected(remote.SCRIPT_OUTPUT_MAX)
            for chunk in proc.stdout:
                out.add(bytes(chunk))
            for chunk in proc.stderr:
                err.add(bytes(chunk))
            code = proc.wait()
        if code == -1:
            raise TransientError("a qai-jobs helper command timed out in the Modal sandbox")
        if out.over:
            raise PermanentError(
                f"a qai-jobs helper printed over {remote.SCRIPT_OUTPUT_MAX} bytes in the sandbox",
                code=ErrorCode.PROVIDER_ERROR,
            )
        return int(code), out.data(), err.data()

    def script(
        self, sb: Sandbox, script: str, *, timeout_s: float = 120
    ) -> tuple[int, bytes, bytes]:
        return self._exec(sb, script, timeout_s=timeout_s)

    def _asleep(self, sb: Sandbox) -> bool:
        return bool(sb.state.get("sleeping"))
