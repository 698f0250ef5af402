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

from qai_jobs.errors import PermanentError, ProviderError, SandboxGone, TransientError
from qai_jobs.providers.modal.errors import redact


def map_e2b_error(
    exc: BaseException, sdk: Any, *, secrets: Sequence[str] = (), creating: bool = False
) -> ProviderError:
    text = redact(f"E2B: {type(exc).__name__}: {exc}", secrets)[:1000]
    if isinstance(exc, sdk.SandboxNotFoundException | sdk.SandboxNotRunningException):
        return SandboxGone(text)
    if isinstance(exc, sdk.SandboxUnreachableException):
        return TransientError(text, code="provider_unavailable")
    if isinstance(exc, sdk.RateLimitException):
        return TransientError(text, code="provider_rate_limited")
    if isinstance(exc, sdk.ServiceBusyException):
        return TransientError(text, code="provider_unavailable")
    if isinstance(exc, sdk.TimeoutException):
        return TransientError(text, code="provider_timeout")
    if isinstance(exc, sdk.AuthenticationException):
        return PermanentError(text, code="provider_auth")
    if isinstance(exc, sdk.InvalidArgumentException):
        return PermanentError(text, code="invalid_request")
    if isinstance(exc, sdk.NotEnoughSpaceException):
        return PermanentError(text, code="provider_no_space")
    if isinstance(exc, sdk.TemplateException):
        return PermanentError(text, code="template_incompatible")
    if isinstance(exc, sdk.GuestUnresponsiveException):
        return PermanentError(text, code="sandbox_unresponsive")
    if isinstance(exc, sdk.FileNotFoundException):
        return PermanentError(text, code="file_error")
    if isinstance(exc, sdk.SandboxException):
        status = exc.status_code or 0
        if status == 404 and creating:
            return PermanentError(text, code="template_not_found")
        if status == 404:
            return SandboxGone(text)
        if status in (401, 403):
            return PermanentError(text, code="provider_auth")
        if status == 429 or status >= 500:
            return TransientError(text, code="provider_unavailable")
        if status in (400, 422):
            return PermanentError(text, code="invalid_request")
        return PermanentError(text, code="provider_error")
    if isinstance(exc, httpx.TransportError | OSError | TimeoutError):
        return TransientError(text, code="provider_unavailable")
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        if code == 429 or code >= 500:
            return TransientError(text, code="provider_unavailable")
        return PermanentError(text, code="provider_error")
    if type(exc).__module__.startswith("connectrpc"):
        # An envd RPC failure the SDK could not classify: most likely the network.
        return TransientError(text, code="provider_unavailable")
    return PermanentError(text, code="provider_error")
