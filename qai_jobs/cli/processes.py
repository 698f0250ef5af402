"""The long-running processes: ``migrate``, ``worker``, ``beat``, ``api``, ``flower``, ``up``."""

from __future__ import annotations

import ipaddress
import os
import sys

import click

from qai_jobs.cli.common import EXIT_USAGE, fail, guarded, settings_from
from qai_jobs.cli.supervise import GRACE_SECONDS
from qai_jobs.config import Settings
from qai_jobs.sealing import load_key


@click.command()
@click.pass_context
@guarded
def migrate(ctx: click.Context) -> None:
    """Create the database if it is missing, then upgrade it to the latest schema."""
    from qai_jobs.db.migrate import migrate as run_migrate

    settings = settings_from(ctx)
    created = run_migrate(settings.database_url)
    click.echo(("created the database; " if created else "") + "schema is up to date")


@click.command()
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
    guarded(load_key)(settings)
    from qai_jobs.celery_app import app

    argv = ["worker", f"--loglevel={loglevel}", f"--pool={pool}", "--events"]
    argv.append(f"--hostname={hostname or f'qai-{os.getpid()}@%h'}")
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _warn_isolation(settings: Settings) -> None:
    if "local" in settings.workspace_runtime and settings.isolation == "none":
        click.echo(
            "qai-jobs: warning: local workspaces run WITHOUT isolation (bubblewrap not installed "
            "or WORKSPACE_LOCAL_ISOLATION=none)",
            err=True,
        )


def _refuse_without_containment(settings: Settings) -> None:
    """A worker that would run local sandboxes without their own network, or without the
    limits it cannot enforce (unless allowed), does not start."""
    if "local" in settings.workspace_runtime:
        from qai_jobs.providers.local import enforce
        from qai_jobs.providers.local.net import refusal

        if (why := refusal(settings) or enforce.refusal(settings)) is not None:
            fail(why, EXIT_USAGE)


@click.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.pass_context
def beat(ctx: click.Context, loglevel: str) -> None:
    """Run Celery beat: idle sleep, recovery, webhook retries and the other sweeps."""
    guarded(load_key)(settings_from(ctx))
    from qai_jobs.celery_app import app

    # Every sweep takes a per-period lock, so beat needs no schedule file: the in-memory
    # scheduler lets several beat processes share a directory without clashing.
    app.start(["beat", f"--loglevel={loglevel}", "--scheduler=celery.beat:Scheduler"])


@click.command()
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
    if settings.workspace_token is None and not _loopback(host):
        fail(
            f"refusing to listen on {host} without WORKSPACE_TOKEN: "
            "set a token, or bind to 127.0.0.1",
            EXIT_USAGE,
        )
    from qai_jobs.api.serve import serve

    serve(settings, host, port, log_level, workers)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Default: the port in WORKSPACE_PREVIEW_DOMAIN, else 8080.",
)
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.pass_context
def gateway(ctx: click.Context, host: str, port: int | None, access_log: bool) -> None:
    """Serve previews at <preview id>.WORKSPACE_PREVIEW_DOMAIN (wakes sleeping workspaces)."""
    from qai_jobs.gateway.urls import domain_port

    settings = settings_from(ctx)
    if not settings.workspace_preview_domain:
        fail("WORKSPACE_PREVIEW_DOMAIN: set it to run the gateway (e.g. preview.localhost:8080)")
    from qai_jobs.gateway.serve import serve

    guarded(load_key)(settings)  # preview tokens are signed with a key derived from it
    serve(settings, host, port or domain_port(settings) or 8080, access_log)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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
    auth_flags = ("--basic-auth", "--basic_auth", "--auth")
    has_auth = os.environ.get("FLOWER_BASIC_AUTH", "").strip() or any(
        arg.startswith(auth_flags) for arg in flower_args
    )
    if not has_auth and not _loopback(address):
        # Flower shows every task's arguments and can revoke tasks and shut workers down.
        fail(
            f"refusing to serve Flower on {address} without FLOWER_BASIC_AUTH=user:password "
            "(or --auth): set it, or bind to 127.0.0.1",
            EXIT_USAGE,
        )
    from qai_jobs.celery_app import app

    app.start(["flower", f"--address={address}", f"--port={port}", *flower_args])


@click.command()
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
    """Migrate, then run worker + beat + api (+ gateway when WORKSPACE_PREVIEW_DOMAIN is set)
    in the foreground; Ctrl-C stops all."""
    from qai_jobs.cli.supervise import Supervisor
    from qai_jobs.db.migrate import migrate as run_migrate

    settings = settings_from(ctx)
    run_migrate(settings.database_url)
    exe = [sys.executable, "-m", "qai_jobs"]
    worker_cmd = [*exe, "worker"] + ([f"--concurrency={concurrency}"] if concurrency else [])
    commands = {
        "worker": worker_cmd,
        "beat": [*exe, "beat"],
        "api": [*exe, "api", "--host", host, "--port", str(port)],
    }
    started = f"worker, beat and api (http://{host}:{port})"
    if settings.workspace_preview_domain:  # previews get their stable URLs from the gateway
        commands["gateway"] = [*exe, "gateway", "--host", host]
        started = f"worker, beat, api (http://{host}:{port}) and the preview gateway"
    supervisor = Supervisor(commands, say=lambda line: click.echo(line, err=True), grace=grace)
    click.echo(f"qai-jobs up: {started} starting; Ctrl-C stops all", err=True)
    sys.exit(supervisor.run())


COMMANDS = [migrate, worker, beat, api, gateway, flower, up]
