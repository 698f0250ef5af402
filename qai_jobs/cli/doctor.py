"""`qai-jobs doctor`: is everything this process needs configured and reachable?"""

from __future__ import annotations

from typing import Any

from qai_jobs.config import Settings


def _check(name: str, status: str, detail: str) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail}


def run_checks(settings: Settings) -> list[dict[str, Any]]:
    checks = [
        _check(
            "config",
            "ok",
            f"providers {','.join(settings.workspace_runtime)}; "
            f"webhook targets {len(settings.workspace_callback_url)}; "
            f"API token {'set' if settings.workspace_token else 'unset (loopback only)'}",
        ),
        _postgres(settings),
        _redis(settings),
        _sources(settings),
    ]
    if "local" in settings.workspace_runtime:
        iso = settings.isolation
        checks.append(
            _check(
                "local isolation",
                "ok" if iso == "bwrap" else "warn",
                "bubblewrap" if iso == "bwrap" else "none: workspaces are NOT isolated",
            )
        )
        checks.append(_local_network(settings))
        checks.append(_local_limits(settings))
    from qai_jobs.providers.credentials import check as cloud_checks

    checks.extend(_cloud(report) for report in cloud_checks(settings))
    return checks


def _sources(settings: Settings) -> dict[str, Any]:
    schemes = settings.workspace_repo_schemes
    shown = ", ".join(sorted(schemes))
    if "ssh" in schemes:
        shown += f" (ssh key {settings.workspace_repo_ssh_key})"
    # file sources read repositories on the worker host: for development and tests.
    return _check("repo sources", "warn" if "file" in schemes else "ok", shown)


def _local_network(settings: Settings) -> dict[str, Any]:
    from qai_jobs.providers.local.net import refusal

    if settings.isolation != "bwrap":
        return _check("local network", "warn", "none: sandboxes share the host's network")
    why = refusal(settings)
    if why is not None:
        return _check("local network", "fail", why)
    egress = settings.workspace_egress
    shown = egress if isinstance(egress, str) else f"allow-list of {len(egress)}"
    return _check("local network", "ok", f"a namespace per sandbox; default egress {shown}")


def _local_limits(settings: Settings) -> dict[str, Any]:
    from qai_jobs.providers.local import enforce

    found = enforce.in_force(settings)
    if not found.missing:
        status = "ok"
    elif settings.isolation != "bwrap" or settings.workspace_local_unlimited:
        status = "warn"
    else:
        status = "fail"
    allowed = " (WORKSPACE_LOCAL_UNLIMITED)" if found.missing and status == "warn" else ""
    return _check("local limits", status, found.line() + allowed)


def _cloud(report: dict[str, Any]) -> dict[str, Any]:
    """One line per cloud provider: SDK, credentials (never their values), reachability."""
    name = f"provider {report['provider']}"
    if not report["sdk_installed"]:
        return _check(name, "fail", f"SDK not installed: {report.get('hint', '')}")
    detail = f"SDK {report['sdk_version']}; credentials {report['credentials']}"
    if report["reachable"] is True:
        return _check(name, "ok", detail + "; reachable")
    if report["reachable"] is False:
        return _check(name, "fail", f"{detail}; {report.get('error')}: {report.get('message')}")
    status = "warn" if report["credentials"] != "set" else "ok"
    return _check(name, status, detail + "; not contacted")


def _postgres(settings: Settings) -> dict[str, Any]:
    import sqlalchemy as sa

    from qai_jobs.db.session import engine_for, server_and_schema

    try:
        version, head = server_and_schema(engine_for(settings.database_url))
    except sa.exc.ProgrammingError:
        return _check("postgres", "fail", "reachable, but not migrated: run `qai-jobs migrate`")
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        return _check("postgres", "fail", str(orig).splitlines()[0])
    return _check("postgres", "ok", f"server {version}, schema {head}")


def _redis(settings: Settings) -> dict[str, Any]:
    import redis

    try:
        info = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).info("server")
    except redis.RedisError as exc:
        return _check("redis", "fail", str(exc))
    return _check("redis", "ok", f"server {info.get('redis_version')}")
