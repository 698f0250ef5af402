"""One exception root for qai-jobs; every error a user can see is a subclass of it.

Errors carry a stable ``code`` (what clients branch on) and know whether retrying could help.
Driver and SDK exceptions are wrapped into these at the boundary (providers, db, api) so that
nothing above the boundary has to know which library raised.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.StrEnum):
    """Every ``error.code`` an action, the API or a client can report: what callers branch on."""

    # the request
    INVALID_REQUEST = "invalid_request"
    INVALID_PAYLOAD = "invalid_payload"  # a message recorded by the worker failed validation
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHORIZED = "unauthorized"
    BAD_SIGNATURE = "bad_signature"
    CONFIGURATION_ERROR = "configuration_error"
    # the pipeline
    INTERNAL_ERROR = "internal_error"
    ACTION_FAILED = "action_failed"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    LEASE_LOST = "lease_lost"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    API_UNAVAILABLE = "api_unavailable"
    UNHEALTHY = "unhealthy"
    UNSUPPORTED_NETWORK_POLICY = "unsupported_network_policy"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    DATABASE_UNAVAILABLE = "database_unavailable"
    INFRASTRUCTURE_UNAVAILABLE = "infrastructure_unavailable"
    RESULT_REJECTED = "result_rejected"
    REDIS_UNAVAILABLE = "redis_unavailable"
    # the workspace
    MANIFEST_STALE = "manifest_stale"  # a delta sync refused before writing: send the full tree
    INSTALL_FAILED = "install_failed"
    DEV_SERVER_TIMEOUT = "dev_server_timeout"
    REPO_UNAVAILABLE = "repo_unavailable"
    SNAPSHOT_NOT_FOUND = "snapshot_not_found"
    # a rebuilt sandbox could not be given what the file record says (not retryable: the
    # record will not heal itself; an ensure with the full tree does)
    HISTORY_INCOMPLETE = "history_incomplete"
    TEMPLATE_NOT_FOUND = "template_not_found"
    PATH_OUTSIDE_WORKSPACE = "path_outside_workspace"
    INVALID_PATH = "invalid_path"
    NOT_A_FILE = "not_a_file"
    FILE_TOO_LARGE = "file_too_large"  # a read file over WORKSPACE_MAX_FILE_BYTES
    READ_TOO_LARGE = "read_too_large"  # a read's files together over WORKSPACE_MAX_ACTION_BYTES
    FILESYSTEM_ERROR = "filesystem_error"
    FILE_ERROR = "file_error"
    INVALID_ENV = "invalid_env"
    INVALID_CWD = "invalid_cwd"
    EXEC_FAILED = "exec_failed"
    PORT_NOT_EXPOSED = "port_not_exposed"
    # the provider
    PROVIDER_ERROR = "provider_error"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    PROVIDER_RATE_LIMITED = "provider_rate_limited"
    PROVIDER_TIMEOUT = "provider_timeout"
    PROVIDER_AUTH = "provider_auth"
    PROVIDER_NO_SPACE = "provider_no_space"
    SANDBOX_GONE = "sandbox_gone"
    SANDBOX_NOT_FOUND = "sandbox_not_found"  # adopt: unknown, or another project's
    SANDBOX_SLEEPING = "sandbox_sleeping"
    SANDBOX_UNRESPONSIVE = "sandbox_unresponsive"
    TEMPLATE_INCOMPATIBLE = "template_incompatible"
    IMAGE_BUILD_FAILED = "image_build_failed"


class QaiJobsError(Exception):
    """qai-jobs failed."""

    code: str = ErrorCode.INTERNAL_ERROR
    retryable = False

    def __init__(self, message: str | None = None, *, code: str | None = None, **details: Any):
        super().__init__(message or (self.__doc__ or "").strip())
        if code is not None:
            self.code = code
        self.details = details

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object stored on a failed action: ``{code, message, retryable}``."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class ConfigurationError(QaiJobsError):
    """The configuration is invalid."""

    code = ErrorCode.CONFIGURATION_ERROR


class ValidationFailed(QaiJobsError, ValueError):
    """The request is invalid."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, *, field: str | None = None, errors: list[Any] | None = None):
        super().__init__(message)
        self.field = field
        self.errors = errors or []


class PayloadTooLarge(ValidationFailed):
    """The request is too large."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class NotFound(QaiJobsError):
    """Not found."""

    code = ErrorCode.NOT_FOUND


class Conflict(QaiJobsError):
    """The request conflicts with the current state."""

    code = ErrorCode.CONFLICT


class Unauthorized(QaiJobsError):
    """The API refused the bearer token."""

    code = ErrorCode.UNAUTHORIZED


class ApiUnavailable(QaiJobsError):
    """The API kept failing after every retry."""

    code: str = ErrorCode.API_UNAVAILABLE
    retryable = True


class ActionFailed(QaiJobsError):
    """The action failed."""

    code: str = ErrorCode.ACTION_FAILED

    def __init__(self, action_id: str, error: dict[str, Any]):
        super().__init__(f"action {action_id} failed: {error.get('code')}: {error.get('message')}")
        self.action_id = action_id
        self.error = error
        self.code = str(error.get("code", self.code))
        self.retryable = bool(error.get("retryable", False))


class ProviderError(QaiJobsError):
    """The sandbox provider failed."""

    code = ErrorCode.PROVIDER_ERROR


class TransientError(ProviderError):
    """The provider failed in a way that may pass: the action is retried with backoff."""

    code = ErrorCode.PROVIDER_UNAVAILABLE
    retryable = True


class PermanentError(ProviderError):
    """The provider refused the request: retrying cannot help."""

    code = ErrorCode.PROVIDER_ERROR


class SandboxGone(PermanentError):
    """The sandbox no longer exists at the provider."""

    code = ErrorCode.SANDBOX_GONE


class SandboxNotFound(PermanentError):
    """Adopt named a sandbox this project does not own (another project's, say): nothing is
    changed, and the answer does not say whether it exists at all."""

    code = ErrorCode.SANDBOX_NOT_FOUND


def not_owned(sandbox_id: str, project_id: str) -> SandboxNotFound:
    return SandboxNotFound(f"no sandbox {sandbox_id!r} belongs to project {project_id!r}")


class WorkerLost(QaiJobsError):
    """the worker running this action stopped before it finished"""

    code = ErrorCode.WORKER_LOST


class DeadlineExceeded(QaiJobsError):
    """The action ran past its deadline and was stopped."""

    code = ErrorCode.DEADLINE_EXCEEDED


class LeaseLost(QaiJobsError):
    """This worker no longer holds the project's lease; a newer holder owns its state."""

    code = ErrorCode.LEASE_LOST
    retryable = True
