"""Modal SDK exceptions -> qai-jobs errors: the one table the modal adapter consults.

``exc_mod`` is ``modal.exception`` (passed in, so this module imports no SDK). Clause order
matters: ``ConflictError`` subclasses ``InvalidError``, the sandbox timeout/termination errors
subclass the generic ``TimeoutError``, and ``modal.exception.TimeoutError`` /
``ConnectionError`` are not Python's built-ins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qai_jobs.errors import ErrorCode, PermanentError, ProviderError, SandboxGone, TransientError


def redact(message: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def map_modal_error(
    exc: BaseException, exc_mod: Any, *, secrets: Sequence[str] = ()
) -> ProviderError:
    m = exc_mod
    text = redact(f"Modal: {type(exc).__name__}: {exc}", secrets)[:1000]
    # The sandbox itself ended (timed out, terminated, finished): recreate, don't retry.
    if isinstance(exc, m.SandboxTerminatedError | m.SandboxTimeoutError):
        return SandboxGone(text)
    if isinstance(exc, m.ConflictError):  # before InvalidError: "Sandbox already finished"
        return SandboxGone(text)
    if isinstance(exc, m.NotFoundError):  # the adapter confirms with a poll when it can
        return SandboxGone(text)
    if isinstance(exc, m.ResourceExhaustedError):
        return TransientError(text, code=ErrorCode.PROVIDER_RATE_LIMITED)
    if isinstance(exc, m.TimeoutError):
        return TransientError(text, code=ErrorCode.PROVIDER_TIMEOUT)
    if isinstance(exc, m.ConnectionError | m.ServiceError | m.InternalError | m.InternalFailure):
        return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
    if isinstance(exc, m.AuthError | m.PermissionDeniedError):
        return PermanentError(text, code=ErrorCode.PROVIDER_AUTH)
    if isinstance(exc, m.ImageBuildError):
        return PermanentError(text, code=ErrorCode.IMAGE_BUILD_FAILED)
    if isinstance(exc, m.AlreadyExistsError):
        return PermanentError(text, code=ErrorCode.CONFLICT)
    if isinstance(exc, m.InvalidError):
        return PermanentError(text, code=ErrorCode.INVALID_REQUEST)
    if isinstance(exc, m.SandboxFilesystemError):
        return PermanentError(text, code=ErrorCode.FILE_ERROR)
    if isinstance(exc, m.Error):
        return PermanentError(text, code=ErrorCode.PROVIDER_ERROR)
    # Raw socket trouble below the SDK.
    if isinstance(exc, OSError | TimeoutError):
        return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
    return PermanentError(text, code=ErrorCode.PROVIDER_ERROR)
