"""The console script ``qai-jobs``: processes (this module) and producer/inspection commands.

Exit codes: 0 success, 1 the action failed, 2 usage or configuration error. A user's mistake
gets one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from .config import Settings, load_settings
from .errors import (
    ActionFailed,
    ConfigurationError,
    Conflict,
    NotFound,
    QaiJobsError,
    ValidationFailed,
)
from .supervise import GRACE_SECONDS

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
        from .celery_app import configure

        configure(obj["settings"])
    settings: Settings = obj["settings"]
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="qai-jobs")
def main() -> None:
    """qai-jobs: durable, ordered workspace actions for AI coding-agent sandboxes.

    Configuration comes from the environment and a .env file (see README).
    """


# --- processes -------------------------------------------------------------------------------


@main.command()
@click.pass_context
@guarded
def migrate(ctx: click.Context) -> None:
    """Create the database if it is missing, then upgrade it to the latest schema."""
    from .db.migrate import migrate as run_migrate

    settings = settings_from(ctx)
    created = run_migrate(settings.database_url)
    click.echo(("created the database; " if created else "") + "schema is up to date")


@main.command()
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes (default: CPU count).",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--hostname", "-n", default=None, help="Worker node name (default: qai@%h plus pid).")
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
)
@click.pass_context
def worker(
    ctx: click.Context, concurrency: int | None, loglevel: str, hostname: str | None, pool: str
) -> None:
    """Run a Celery worker that executes workspace actions."""
    settings = settings_from(ctx)
    _warn_isolation(settings)
    _refuse_without_containment(settings)
    from .celery_app import app

    argv = ["worker", f"--loglevel={loglevel}", f"--pool={pool}", "--events"]
    argv.append(f"--hostname={hostname or f'qai-{os.getpid()}@%h'}")
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)


def _warn_isolation(settings: Settings) -> None:
    if "local" in settings.workspace_runtime and settings.isolation == "none":
        click.echo(
            "qai-jobs: warning: local workspaces run WITHOUT isolation (bubblewrap not installed "
            "or WORKSPACE_LOCAL_ISOLATION=none)",
            err=True,
        )


def _refuse_without_containment(settings: Settings) -> None:
    """A worker that would run local sandboxes without their own network does not start."""
    if "local" in settings.workspace_runtime:
        from .providers.local_net import refusal

        if (why := refusal(settings)) is not None:
            fail(why, EXIT_USAGE)


@main.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.pass_context
def beat(ctx: click.Context, loglevel: str) -> None:
    """Run Celery beat: idle sleep, recovery, webhook retries and the other sweeps."""
    settings_from(ctx)
    from .celery_app import app

    # Every sweep takes a per-period lock, so beat needs no schedule file: the in-memory
    # scheduler lets several beat processes share a directory without clashing.
    app.start(["beat", f"--loglevel={loglevel}", "--scheduler=celery.beat:Scheduler"])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes sharing the port (each with its own connections).",
)
@click.pass_context
def api(ctx: click.Context, host: str, port: int, log_level: str, workers: int) -> None:
    """Serve the HTTP API (FastAPI on uvicorn)."""
    settings = settings_from(ctx)
    if settings.workspace_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        fail(
            f"refusing to listen on {host} without WORKSPACE_TOKEN: "
            "set a token, or bind to 127.0.0.1",
            EXIT_USAGE,
        )
    from .api_serve import serve

    serve(settings, host, port, log_level, workers)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=click.IntRange(1, 65535))
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def flower(ctx: click.Context, address: str, port: int, flower_args: tuple[str, ...]) -> None:
    """Run Flower to monitor workers and tasks (Flower's own flags pass through).

    Basic auth comes from FLOWER_BASIC_AUTH=user:password when set (Flower reads every
    FLOWER_* variable itself; it is not put on the command line, where `ps` would show it).
    Flower's REST API answers only with auth or FLOWER_UNAUTHENTICATED_API=true.
    """
    settings_from(ctx)
    from .celery_app import app

    app.start(["flower", f"--address={address}", f"--port={port}", *flower_args])


@main.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=None)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--grace",
    default=GRACE_SECONDS,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help=(
        "Seconds a stop waits for running actions; then they are killed, and re-run on the "
        "next start (a command fails with worker_lost instead)."
    ),
)
@click.pass_context
@guarded
def up(ctx: click.Context, concurrency: int | None, host: str, port: int, grace: float) -> None:
    """Migrate, then run worker + beat + api in the foreground; Ctrl-C stops all."""
    from .db.migrate import migrate as run_migrate
    from .supervise import Supervisor

    settings = settings_from(ctx)
    run_migrate(settings.database_url)
    exe = [sys.executable, "-m", "qai_jobs"]
    worker_cmd = [*exe, "worker"] + ([f"--concurrency={concurrency}"] if concurrency else [])
    commands = {
        "worker": worker_cmd,
        "beat": [*exe, "beat"],
        "api": [*exe, "api", "--host", host, "--port", str(port)],
    }
    supervisor = Supervisor(commands, say=lambda line: click.echo(line, err=True), grace=grace)
    click.echo(
        f"qai-jobs up: worker, beat and api (http://{host}:{port}) starting; Ctrl-C stops all",
        err=True,
    )
    sys.exit(supervisor.run())


# Producer and inspection commands live beside this module to keep each file readable.
from . import cli_producer  # noqa: E402

cli_producer.register(main)


if __name__ == "__main__":  # pragma: no cover
    main()
