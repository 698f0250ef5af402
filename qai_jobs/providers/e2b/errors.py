"""E2B SDK exceptions -> qai-jobs errors: the one table the e2b adapter consults.

``sdk`` is the ``e2b`` module (passed in, so this module imports no SDK). Clause order
matters: ``SandboxNotRunningException`` / ``SandboxUnreachableException`` subclass
``TimeoutException``; ``AuthenticationException`` and ``ServiceBusyException`` are not
``SandboxException``s; control-plane network failures arrive as raw ``httpx`` errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from qai_jobs.errors import ErrorCode, PermanentError, ProviderError, SandboxGone, TransientError
from qai_jobs.providers.modal.errors import redact


def map_e2b_error(
    exc: BaseException, sdk: Any, *, secrets: Sequence[str] = (), creating: bool = False
) -> ProviderError:
    text = redact(f"E2B: {type(exc).__name__}: {exc}", secrets)[:1000]
    if isinstance(exc, sdk.SandboxNotFoundException | sdk.SandboxNotRunningException):
        return SandboxGone(text)
    if isinstance(exc, sdk.SandboxUnreachableException):
        return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
    if isinstance(exc, sdk.RateLimitException):
        return TransientError(text, code=ErrorCode.PROVIDER_RATE_LIMITED)
    if isinstance(exc, sdk.ServiceBusyException):
        return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
    if isinstance(exc, sdk.TimeoutException):
        return TransientError(text, code=ErrorCode.PROVIDER_TIMEOUT)
    if isinstance(exc, sdk.AuthenticationException):
        return PermanentError(text, code=ErrorCode.PROVIDER_AUTH)
    if isinstance(exc, sdk.InvalidArgumentException):
        return PermanentError(text, code=ErrorCode.INVALID_REQUEST)
    if isinstance(exc, sdk.NotEnoughSpaceException):
        return PermanentError(text, code=ErrorCode.PROVIDER_NO_SPACE)
    if isinstance(exc, sdk.TemplateException):
        return PermanentError(text, code=ErrorCode.TEMPLATE_INCOMPATIBLE)
    if isinstance(exc, sdk.GuestUnresponsiveException):
        return PermanentError(text, code=ErrorCode.SANDBOX_UNRESPONSIVE)
    if isinstance(exc, sdk.FileNotFoundException):
        return PermanentError(text, code=ErrorCode.FILE_ERROR)
    if isinstance(exc, sdk.SandboxException):
        status = exc.status_code or 0
        if status == 404 and creating:
            return PermanentError(text, code=ErrorCode.TEMPLATE_NOT_FOUND)
        if status == 404:
            return SandboxGone(text)
        if status in (401, 403):
            return PermanentError(text, code=ErrorCode.PROVIDER_AUTH)
        if status == 429 or status >= 500:
            return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
        if status in (400, 422):
            return PermanentError(text, code=ErrorCode.INVALID_REQUEST)
        return PermanentError(text, code=ErrorCode.PROVIDER_ERROR)
    if isinstance(exc, httpx.TransportError | OSError | TimeoutError):
        return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        if code == 429 or code >= 500:
            return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
        return PermanentError(text, code=ErrorCode.PROVIDER_ERROR)
    if type(exc).__module__.startswith("connectrpc"):
        # An envd RPC failure the SDK could not classify: most likely the network.
        return TransientError(text, code=ErrorCode.PROVIDER_UNAVAILABLE)
    return PermanentError(text, code=ErrorCode.PROVIDER_ERROR)
