"""How qai-jobs talks to the E2B SDK: lazy import, credentials, handles, error mapping.

The SDK is imported lazily (``_sdk``); tests hand a fake module in through ``sdk=``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from qai_jobs.config import Settings
from qai_jobs.errors import (
    ConfigurationError,
    ErrorCode,
    PermanentError,
    QaiJobsError,
    SandboxGone,
)
from qai_jobs.providers import scripts as remote
from qai_jobs.providers.base import Sandbox
from qai_jobs.providers.e2b.errors import map_e2b_error
from qai_jobs.providers.shell import ShellProvider

DEFAULT_TEMPLATE = "base"
TOUCH_EVERY_S = 60.0


def _sdk() -> Any:
    """The ``e2b`` module (tests replace this function with one returning a fake)."""
    try:
        import e2b
    except ImportError as exc:
        raise ConfigurationError(
            "the e2b provider needs the E2B SDK: pip install 'qai-jobs[e2b]'"
        ) from exc
    return e2b


class E2BSdk(ShellProvider):
    """The E2B SDK seen from qai-jobs: credentials, handles, errors mapped, scripts run."""

    name: ClassVar[str] = "e2b"

    def __init__(self, settings: Settings, *, sdk: Any = None) -> None:
        super().__init__(settings)
        # The SDK module; None = import the real one on first use (tests pass a fake).
        self._sdk_module = sdk

    # -- SDK plumbing ------------------------------------------------------------------------
    def _sdk(self) -> Any:
        return self._sdk_module if self._sdk_module is not None else _sdk()

    def _opts(self) -> dict[str, Any]:
        key = self.settings.e2b_api_key
        return {"api_key": key.get_secret_value()} if key else {}

    def _template(self) -> str:
        return self.settings.e2b_template or self.settings.workspace_image or DEFAULT_TEMPLATE

    def _lifetime(self) -> int:
        # A backstop behind our idle sweep; 1 h is the longest every plan accepts.
        return int(min(max(self.settings.inactivity_seconds * 2, 600), 3600))

    @contextlib.contextmanager
    def _guard(self, sandbox_id: str | None = None, *, creating: bool = False) -> Iterator[None]:
        try:
            yield
        except QaiJobsError:
            raise
        except Exception as exc:
            secrets = list(self._opts().values())
            err = map_e2b_error(exc, self._sdk(), secrets=secrets, creating=creating)
            if sandbox_id is not None and isinstance(err, SandboxGone):
                self._forget(sandbox_id)
            raise err from exc

    def _handle(self, sb: Sandbox) -> Any:
        now = time.monotonic()
        # The cache holds (handle, when its lifetime was last extended).
        cached = self._cached(sb.sandbox_id)
        if cached is None:
            # connect() would resume a paused sandbox: only wake may do that.
            with self._guard(sb.sandbox_id):
                info = self._sdk().Sandbox.get_info(sb.sandbox_id, **self._opts())
            if str(getattr(info.state, "value", info.state)) == "paused":
                raise PermanentError(
                    "the workspace is asleep: wake it first", code=ErrorCode.SANDBOX_SLEEPING
                )
            with self._guard(sb.sandbox_id):
                handle = self._sdk().Sandbox.connect(
                    sb.sandbox_id, timeout=self._lifetime(), **self._opts()
                )
            self._keep(sb.sandbox_id, handle)
            return handle
        handle, touched = cached
        if now - touched > TOUCH_EVERY_S:
            # Activity extends the lifetime (throttled: one API call a minute at most).
            with self._guard(sb.sandbox_id):
                handle.set_timeout(self._lifetime())
            self._keep(sb.sandbox_id, handle)
        return handle

    def _keep(self, sandbox_id: str, handle: Any) -> None:
        self._remember(sandbox_id, (handle, time.monotonic()))

    def _sh(
        self,
        sb: Sandbox,
        script: str,
        *,
        timeout_s: float = 120,
        envs: Mapping[str, str] | None = None,
        cwd: str = remote.WORKDIR,
        user: str | None = None,
        out: remote.Collected | None = None,
        err: remote.Collected | None = None,
    ) -> tuple[int, str, str]:
        """Run a script; a non-zero exit is a result here (the SDK raises it as an exception).

        The SDK keeps no copy of the output (``retain_output=False``): ``out`` and ``err``
        keep what they may, a helper's at most SCRIPT_OUTPUT_MAX."""
        handle = self._handle(sb)
        sdk = self._sdk()
        out = out or remote.Collected(remote.SCRIPT_OUTPUT_MAX)
        err = err or remote.Collected(remote.SCRIPT_OUTPUT_MAX)
        kwargs: dict[str, Any] = {
            "cwd": cwd,
            "envs": dict(envs or {}),
            "timeout": timeout_s,
            "on_stdout": out.add_text,
            "on_stderr": err.add_text,
            "retain_output": False,
        }
        if user:
            kwargs["user"] = user
        with self._guard(sb.sandbox_id):
            try:
                res = handle.commands.run(script, **kwargs)
            except sdk.CommandExitException as exc:
                return int(exc.exit_code), out.text(), err.text()
        return int(res.exit_code), out.text(), err.text()

    def script(
        self, sb: Sandbox, script: str, *, timeout_s: float = 120
    ) -> tuple[int, bytes, bytes]:
        out = remote.Collected(remote.SCRIPT_OUTPUT_MAX)
        code, _, _ = self._sh(sb, script, timeout_s=timeout_s, out=out)
        if out.over:
            raise PermanentError(
                f"a qai-jobs helper printed over {remote.SCRIPT_OUTPUT_MAX} bytes in the sandbox",
                code=ErrorCode.PROVIDER_ERROR,
            )
        return code, out.data(), b""
