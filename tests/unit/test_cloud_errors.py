"""Error mapping tables: each SDK exception class -> our error class and code."""

from __future__ import annotations

import e2b
import httpx
import modal.exception as me
import pytest

from qai_jobs.errors import PermanentError, SandboxGone, TransientError
from qai_jobs.providers.e2b.errors import map_e2b_error
from qai_jobs.providers.modal.errors import map_modal_error

MODAL_TABLE = [
    (me.SandboxTerminatedError("terminated"), SandboxGone, "sandbox_gone"),
    (me.SandboxTimeoutError("timed out"), SandboxGone, "sandbox_gone"),
    (me.ConflictError("Sandbox already finished"), SandboxGone, "sandbox_gone"),
    (me.NotFoundError("Sandbox not found"), SandboxGone, "sandbox_gone"),
    (me.ResourceExhaustedError("quota"), TransientError, "provider_rate_limited"),
    (me.TimeoutError("snapshot timed out"), TransientError, "provider_timeout"),
    (me.ConnectionError("Could not connect"), TransientError, "provider_unavailable"),
    (me.ServiceError("unavailable"), TransientError, "provider_unavailable"),
    (me.InternalError("internal"), TransientError, "provider_unavailable"),
    (me.InternalFailure("retriable"), TransientError, "provider_unavailable"),
    (me.AuthError("Token missing"), PermanentError, "provider_auth"),
    (me.PermissionDeniedError("denied"), PermanentError, "provider_auth"),
    (me.ImageBuildError("build failed", "im-1"), PermanentError, "image_build_failed"),
    (me.AlreadyExistsError("name taken"), PermanentError, "conflict"),
    (me.InvalidError("bad workdir"), PermanentError, "invalid_request"),
    (me.SandboxFilesystemNotFoundError("nope"), PermanentError, "file_error"),
    (me.VersionError("old client"), PermanentError, "provider_error"),
    (OSError("connection reset"), TransientError, "provider_unavailable"),
]


@pytest.mark.parametrize(("exc", "cls", "code"), MODAL_TABLE, ids=lambda v: type(v).__name__)
def test_modal_mapping(exc: BaseException, cls: type, code: str) -> None:
    err = map_modal_error(exc, me)
    assert type(err) is cls and err.code == code
    assert err.retryable is (cls is TransientError)


E2B_TABLE = [
    (e2b.SandboxNotFoundException("Sandbox x not found"), SandboxGone, "sandbox_gone"),
    (e2b.SandboxNotRunningException("was not found"), SandboxGone, "sandbox_gone"),
    (e2b.SandboxUnreachableException("unknown"), TransientError, "provider_unavailable"),
    (e2b.RateLimitException("429"), TransientError, "provider_rate_limited"),
    (e2b.ServiceBusyException("503"), TransientError, "provider_unavailable"),
    (e2b.TimeoutException("deadline"), TransientError, "provider_timeout"),
    (e2b.AuthenticationException("401"), PermanentError, "provider_auth"),
    (e2b.InvalidArgumentException("bad"), PermanentError, "invalid_request"),
    (e2b.NotEnoughSpaceException("507"), PermanentError, "provider_no_space"),
    (e2b.TemplateException("envd too old"), PermanentError, "template_incompatible"),
    (e2b.GuestUnresponsiveException("hung"), PermanentError, "sandbox_unresponsive"),
    (e2b.SandboxException("500: boom", status_code=500), TransientError, "provider_unavailable"),
    (e2b.SandboxException("403: no", status_code=403), PermanentError, "provider_auth"),
    (e2b.SandboxException("400: bad", status_code=400), PermanentError, "invalid_request"),
    (httpx.ConnectError("refused"), TransientError, "provider_unavailable"),
    (httpx.ReadTimeout("slow"), TransientError, "provider_unavailable"),
]


@pytest.mark.parametrize(("exc", "cls", "code"), E2B_TABLE, ids=lambda v: type(v).__name__)
def test_e2b_mapping(exc: BaseException, cls: type, code: str) -> None:
    err = map_e2b_error(exc, e2b)
    assert type(err) is cls and err.code == code


def test_e2b_404_on_create_is_template_not_found() -> None:
    exc = e2b.SandboxException("404: template not found", status_code=404)
    assert map_e2b_error(exc, e2b, creating=True).code == "template_not_found"
    assert isinstance(map_e2b_error(exc, e2b), SandboxGone)


def test_secrets_never_reach_messages() -> None:
    err = map_modal_error(me.AuthError("bad token ak-SECRET123"), me, secrets=["ak-SECRET123"])
    assert "SECRET123" not in err.message
    err = map_e2b_error(e2b.AuthenticationException("key e2b_SECRET"), e2b, secrets=["e2b_SECRET"])
    assert "e2b_SECRET" not in err.message
