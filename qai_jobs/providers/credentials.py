"""``qai-jobs doctor`` support for the cloud providers: SDK, credentials, one cheap call.

Never prints a credential: only whether it is set. The reachability call is skipped without
credentials (it would only fail) and bounded, since a missing network can take a minute.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from qai_jobs.config import Settings
from qai_jobs.errors import QaiJobsError


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_modal(settings: Settings, *, reach: bool = True) -> dict[str, Any]:
    version = _version("modal")
    creds = bool(settings.modal_token_id and settings.modal_token_secret)
    report: dict[str, Any] = {
        "provider": "modal",
        "sdk_installed": version is not None,
        "sdk_version": version,
        "credentials": "set" if creds else "missing (MODAL_TOKEN_ID, MODAL_TOKEN_SECRET)",
        "app": settings.modal_app_name,
        "reachable": None,
    }
    if version is None:
        report["hint"] = "pip install 'qai-jobs[modal]'"
    elif creds and reach:
        from qai_jobs.providers.modal.provider import ModalProvider

        try:
            ModalProvider(settings)._app_obj()  # App.lookup: cheap, and proves the token
            report["reachable"] = True
        except QaiJobsError as exc:
            report.update(reachable=False, error=exc.code, message=exc.message[:300])
    return report


def check_e2b(settings: Settings, *, reach: bool = True) -> dict[str, Any]:
    version = _version("e2b")
    creds = settings.e2b_api_key is not None
    report: dict[str, Any] = {
        "provider": "e2b",
        "sdk_installed": version is not None,
        "sdk_version": version,
        "credentials": "set" if creds else "missing (E2B_API_KEY)",
        "template": settings.e2b_template or settings.workspace_image or "base",
        "reachable": None,
    }
    if version is None:
        report["hint"] = "pip install 'qai-jobs[e2b]'"
    elif creds and reach:
        from qai_jobs.providers.e2b.provider import E2BProvider

        try:
            E2BProvider(settings).list_sandboxes()  # one list call proves key and network
            report["reachable"] = True
        except QaiJobsError as exc:
            report.update(reachable=False, error=exc.code, message=exc.message[:300])
    return report


CHECKS = {"modal": check_modal, "e2b": check_e2b}


def check(settings: Settings, *, reach: bool = True) -> list[dict[str, Any]]:
    """One report per cloud provider named in WORKSPACE_RUNTIME (others have nothing to check)."""
    return [CHECKS[n](settings, reach=reach) for n in settings.workspace_runtime if n in CHECKS]
