"""One exception root for qai-jobs; every error a user can see is a subclass of it.

Errors carry a stable ``code`` (what clients branch on) and know whether retrying could help.
Driver and SDK exceptions are wrapped into these at the boundary (providers, db, api) so that
nothing above the boundary has to know which library raised.
"""

from __future__ import annotations

from typing import Any


class QaiJobsError(Exception):
    """qai-jobs failed."""

    code = "internal_error"
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
        """The ``error`` object stored on a failed action (CONTRACT section 3)."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class ConfigurationError(QaiJobsError):
    """The configuration is invalid."""

    code = "configuration_error"


class ValidationFailed(QaiJobsError):
    """The request is invalid."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, errors: list[Any] | None = None):
        super().__init__(message)
        self.field = field
        self.errors = errors or []


class PayloadTooLarge(ValidationFailed):
    """The request is too large."""

    code = "payload_too_large"


class NotFound(QaiJobsError):
    """Not found."""

    code = "not_found"


class Conflict(QaiJobsError):
    """The request conflicts with the current state."""

    code = "conflict"


class ActionFailed(QaiJobsError):
    """The action failed."""

    code = "action_failed"

    def __init__(self, action_id: str, error: dict[str, Any]):
        super().__init__(f"action {action_id} failed: {error.get('code')}: {error.get('message')}")
        self.action_id = action_id
        self.error = error
        self.code = str(error.get("code", self.code))
        self.retryable = bool(error.get("retryable", False))


class ProviderError(QaiJobsError):
    """The sandbox provider failed."""

    code = "provider_error"


class TransientError(ProviderError):
    """The provider failed in a way that may pass: the action is retried with backoff."""

    code = "provider_unavailable"
    retryable = True


class PermanentError(ProviderError):
    """The provider refused the request: retrying cannot help."""

    code = "provider_error"


class SandboxGone(PermanentError):
    """The sandbox no longer exists at the provider."""

    code = "sandbox_gone"


class WorkerLost(QaiJobsError):
    """The worker running this action stopped before it finished."""

    code = "worker_lost"


class LeaseLost(QaiJobsError):
    """This worker no longer holds the project's lease; a newer holder owns its state."""

    code = "lease_lost"
    retryable = True


# Error codes of the actions (CONTRACT 3, issue texts); kept here so every layer spells them alike.
DEV_SERVER_TIMEOUT = "dev_server_timeout"
INSTALL_FAILED = "install_failed"
REPO_UNAVAILABLE = "repo_unavailable"
PATH_OUTSIDE_WORKSPACE = "path_outside_workspace"
SNAPSHOT_NOT_FOUND = "snapshot_not_found"
MANIFEST_STALE = "manifest_stale"  # a delta sync refused before writing: send the full tree
UNSUPPORTED_NETWORK_POLICY = "unsupported_network_policy"
INVALID_PAYLOAD = "invalid_payload"
CANCELLED = "cancelled"
