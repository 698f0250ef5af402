"""Fleet commands: ``hosts [--json]`` lists the worker hosts, ``hosts drain HOST`` empties one."""

from __future__ import annotations

import click

from qai_jobs.cli import common
from qai_jobs.cli.common import client_of, echo_json, fail, guarded, json_opt, settings_from
from qai_jobs.db import hosts as hosts_db
from qai_jobs.errors import ActionFailed


@click.group(invoke_without_command=True)
@json_opt
@click.pass_context
@guarded
def hosts(ctx: click.Context, as_json: bool) -> None:
    """List the worker hosts: alive, last seen, and how many workspaces each holds."""
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_from(ctx)
    with client_of(ctx).engine.connect() as conn:
        rows = hosts_db.list_hosts(conn, settings.workspace_host_dead_seconds)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        state = "alive" if r["alive"] else "DEAD"
        if r["draining"]:
            state += ",draining"
        click.echo(
            f"{r['host_id']:24} {r['address']:15} {state:16} workspaces={r['workspaces']} "
            f"last_seen={r['last_seen_at']}"
        )


@hosts.command()
@click.argument("host")
@click.option("--timeout", "wait_timeout", type=float, default=600, show_default=True)
@json_opt
@click.pass_context
@guarded
def drain(ctx: click.Context, host: str, wait_timeout: float, as_json: bool) -> None:
    """Move HOST's workspaces to other hosts through fresh snapshots, losing nothing.

    Each is put to sleep on HOST (its sleep snapshot holds everything), then handed to the
    least loaded other live host, where its next action wakes it. HOST takes no new workspace
    until its workers restart.
    """
    settings = settings_from(ctx)
    client = client_of(ctx)
    dead = settings.workspace_host_dead_seconds
    with client.engine.begin() as conn:
        if not hosts_db.set_draining(conn, host, True):
            fail(f"no host {host!r}")
        if hosts_db.least_loaded(conn, dead, exclude=host) is None:
            fail("no other live host to move the workspaces to")
        held = hosts_db.on_host(conn, host)
    handles = [client.sleep(p) for p, status in held if status != "sleeping"]
    failed: dict[str, str] = {}
    for handle, (project, _) in zip(handles, [h for h in held if h[1] != "sleeping"], strict=True):
        try:
            handle.wait(timeout=wait_timeout)
        except ActionFailed as exc:
            failed[project] = str(exc.error.get("message", exc))
    moved: dict[str, str] = {}
    for project, _ in held:
        with client.engine.begin() as conn:
            target = hosts_db.hand_over(conn, project, host, dead)
        if target is not None:
            moved[project] = target
        elif project not in failed:
            failed[project] = "busy or awake again; run the drain again"
    if as_json:
        echo_json({"host_id": host, "moved": moved, "failed": failed})
    else:
        for project, target in moved.items():
            click.echo(f"{project} -> {target}")
        for project, why in failed.items():
            click.echo(f"{project}: not moved ({why})", err=True)
    if failed:
        raise SystemExit(common.EXIT_FAILED)


COMMANDS = [hosts]
