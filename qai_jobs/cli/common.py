"""What every command shares: exit codes, error mapping, settings, the client, output.

Exit codes: 0 success, 1 the action failed, 2 usage or configuration error. A user's mistake
gets one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from qai_jobs.client import ActionHandle, WorkspaceClient
from qai_jobs.config import Settings, load_settings
from qai_jobs.errors import (
    ActionFailed,
    ConfigurationError,
    Conflict,
    NotFound,
    QaiJobsError,
    ValidationFailed,
)

P = ParamSpec("P")
T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2


class UserError(click.ClickException):
    exit_code = EXIT_USAGE


def fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"qai-jobs: {message}", err=True)
    sys.exit(code)


def guarded(fn: Callable[P, T]) -> Callable[P, T]:
    """Map our errors to one line and an exit code; infrastructure errors say what is down."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        import redis
        import sqlalchemy as sa

        try:
            return fn(*args, **kwargs)
        except ActionFailed as exc:
            error = exc.error
            fail(
                f"action {exc.action_id} failed: {error.get('code')}: {error.get('message')}",
                EXIT_FAILED,
            )
        except (ConfigurationError, ValidationFailed) as exc:
            fail(exc.message, EXIT_USAGE)
        except (NotFound, Conflict) as exc:
            fail(exc.message, EXIT_FAILED)
        except QaiJobsError as exc:
            fail(f"{exc.code}: {exc.message}", EXIT_FAILED)
        except TimeoutError as exc:
            fail(str(exc), EXIT_FAILED)
        except sa.exc.OperationalError as exc:
            fail(
                f"cannot reach Postgres: {str(exc.orig).splitlines()[0] if exc.orig else exc}",
                EXIT_USAGE,
            )
        except redis.ConnectionError as exc:
            fail(f"cannot reach Redis: {exc}", EXIT_USAGE)
        raise AssertionError("unreachable")

    return wrapper


def settings_from(ctx: click.Context) -> Settings:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings()
        except ConfigurationError as exc:
            fail(exc.message, EXIT_USAGE)
        from qai_jobs.celery_app import configure

        configure(obj["settings"])
    settings: Settings = obj["settings"]
    return settings


def client_of(ctx: click.Context) -> WorkspaceClient:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "client" not in obj:
        obj["client"] = WorkspaceClient(settings_from(ctx))
    client: WorkspaceClient = obj["client"]
    return client


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


class ProgressPrinter:
    """An action's stages on stderr: one live line on a terminal, else one line per stage
    (and its final count), so logs of a CI run stay short."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.last: str | None = None
        self.stage: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled or event.get("type") != "progress":
            return
        stage = str(event.get("stage"))
        done, total = event.get("done"), event.get("total")
        line = f"{stage} {done}/{total}" if total else stage
        if line == self.last:
            return
        self.last = line
        if self.live:
            click.echo(f"\r\x1b[2K  … {line}", err=True, nl=False)
        elif stage != self.stage or (total and done == total):
            click.echo(f"  … {line}", err=True)
        self.stage = stage

    def close(self) -> None:
        if self.live and self.last is not None:
            click.echo("", err=True)


def wait(handle: ActionHandle[Any], timeout: float | None, quiet: bool = False) -> dict[str, Any]:
    progress = ProgressPrinter(not quiet)
    try:
        result: dict[str, Any] = handle.wait(timeout=timeout, on_event=progress)
        return result
    finally:
        progress.close()


json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
timeout_opt = click.option(
    "--timeout",
    "wait_timeout",
    type=float,
    default=600,
    show_default=True,
    help="Seconds to wait.",
)
