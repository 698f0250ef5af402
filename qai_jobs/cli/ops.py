"""Operator commands: ``webhooks list|replay``, ``doctor`` and ``bench``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from qai_jobs.cli.common import (
    EXIT_FAILED,
    client_of,
    echo_json,
    fail,
    guarded,
    json_opt,
    settings_from,
)
from qai_jobs.constants import DELIVER_TASK
from qai_jobs.db import outbox


@click.group()
def webhooks() -> None:
    """Inspect and replay webhook deliveries."""


@webhooks.command(name="list")
@click.option("--dead", is_flag=True, help="Only events that exhausted their retries.")
@click.option("--project", default=None, help="Only this project's events.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option(
    "--before",
    default=None,
    metavar="CURSOR",
    help="The next page: the cursor the previous page printed (on stderr).",
)
@json_opt
@click.pass_context
@guarded
def list_(
    ctx: click.Context,
    dead: bool,
    project: str | None,
    limit: int,
    before: str | None,
    as_json: bool,
) -> None:
    """List recent webhook events and their delivery state, newest first."""
    rows = outbox.list_events(
        client_of(ctx).engine,
        dead=dead,
        project_id=project,
        limit=limit,
        before=_cursor(before) if before else None,
    )
    if len(rows) == limit:
        last = rows[-1]
        click.echo(f"next page: --before '{last['created_at'].isoformat()}|{last['id']}'", err=True)
    for row in rows:
        for key, value in row.items():
            if value is not None and not isinstance(value, str | int):
                row[key] = str(value)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['id']}  {r['type']:20} {r['status']:9} attempts={r['attempts']} "
            f"{r['project_id']} seq={r['sequence']} {r['last_error'] or ''}"
        )


def _cursor(value: str) -> tuple[datetime, str]:
    at, _, event_id = value.partition("|")
    try:
        return datetime.fromisoformat(at), event_id
    except ValueError:
        fail(f"--before: not a cursor this command printed: {value!r}")
        raise


@webhooks.command()
@click.argument("event_id", required=False)
@click.option("--dead", is_flag=True, help="Replay every dead event.")
@json_opt
@click.pass_context
@guarded
def replay(ctx: click.Context, event_id: str | None, dead: bool, as_json: bool) -> None:
    """Deliver EVENT_ID (or every dead event with --dead) again, with the same webhook-id."""
    if bool(event_id) == dead:
        fail("give an EVENT_ID or --dead")
    with client_of(ctx).engine.begin() as conn:
        ids = outbox.replay(conn, event_id=event_id, only_dead=dead)
    if event_id and not ids:
        fail(f"no webhook event {event_id}", EXIT_FAILED)
    from qai_jobs.celery_app import app

    for i in ids:
        app.send_task(DELIVER_TASK, kwargs={"event_id": i})
    if as_json:
        echo_json({"replayed": ids})
    else:
        click.echo(f"replaying {len(ids)} event(s)")


@click.command()
@json_opt
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the configuration, Postgres, Redis and provider credentials."""
    from qai_jobs.cli.doctor import run_checks

    settings = settings_from(ctx)
    checks = run_checks(settings)
    if as_json:
        echo_json(checks)
    else:
        for check in checks:
            mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[check["status"]]
            click.echo(f"[{mark}] {check['name']}: {check['detail']}")
    if any(c["status"] == "fail" for c in checks):
        raise SystemExit(EXIT_FAILED)


@click.command()
@click.option(
    "--actions", "n_actions", type=click.IntRange(1, 1_000_000), default=2000, show_default=True
)
@click.option(
    "--projects",
    "project_counts",
    default="50",
    show_default=True,
    help="Project count, or a comma list (1,10,100,1000,10000) for a curve in --docs.",
)
@click.option(
    "--runs", type=click.IntRange(1, 99), default=1, show_default=True, help="Medians of N runs."
)
@click.option(
    "--docs",
    "docs_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs"),
    show_default=True,
    help="Where a curve writes benchmarks.md and benchmarks.png.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Worker concurrency for both runs.",
)
@click.option(
    "--scenarios",
    default="pipeline",
    show_default=True,
    help="Comma list: pipeline (and any added by providers).",
)
@click.option(
    "--history",
    type=click.IntRange(1, 100_000_000),
    default=None,
    help="Load N actions of synthetic history into the bench database and time the "
    "operator queries against it (instead of the throughput run).",
)
@json_opt
@click.pass_context
@guarded
def bench(
    ctx: click.Context,
    n_actions: int,
    project_counts: str,
    runs: int,
    docs_dir: Path,
    concurrency: int,
    scenarios: str,
    history: int | None,
    as_json: bool,
) -> None:
    """Measure action throughput and latency on the fake provider beside plain Celery.

    Fails (exit 1) when the checker finds overlapping runs or out-of-order starts."""
    if history is not None:
        from qai_jobs.bench.history import format_history, run_history

        found = run_history(settings_from(ctx), history, lambda m: click.echo(m, err=True))
        if as_json:
            echo_json(found)
        else:
            click.echo(format_history(found))
        return
    from qai_jobs.bench.pipeline import violations
    from qai_jobs.bench.run import run_bench

    try:
        projects = [int(p) for p in project_counts.split(",")]
    except ValueError:
        raise click.BadParameter(
            "a number or a comma list of numbers", param_hint="--projects"
        ) from None
    if any(not 1 <= p <= 100_000 for p in projects):
        raise click.BadParameter("each count from 1 to 100000", param_hint="--projects")
    report = run_bench(
        settings_from(ctx),
        n_actions=n_actions,
        projects=projects,
        concurrency=concurrency,
        scenarios=scenarios.split(","),
        log=lambda m: click.echo(m, err=True),
        runs=runs,
        docs=docs_dir,
    )
    if as_json:
        echo_json(report)
    else:
        from qai_jobs.bench.run import format_report

        click.echo(format_report(report))
    if violations(report):
        fail("the checker found overlapping runs or out-of-order starts", EXIT_FAILED)


COMMANDS = [webhooks, doctor, bench]
