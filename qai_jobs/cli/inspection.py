"""Inspection commands: ``status``, ``actions``, ``action``, ``cancel``."""

from __future__ import annotations

import json

import click

from qai_jobs.cli.common import client_of, echo_json, guarded, json_opt


@click.command()
@click.argument("project", required=False)
@json_opt
@click.pass_context
@guarded
def status(ctx: click.Context, project: str | None, as_json: bool) -> None:
    """Show PROJECT's workspace, or every workspace and the queue."""
    client = client_of(ctx)
    if project:
        ws = client.get_workspace(project)
        if as_json:
            echo_json(ws)
        else:
            for key in (
                "project_id",
                "status",
                "provider",
                "sandbox_id",
                "preview_url",
                "pending_actions",
                "last_activity_at",
                "last_snapshot_id",
            ):
                click.echo(f"{key:18} {ws.get(key) if ws.get(key) is not None else '-'}")
        return
    from qai_jobs.db.stats import summary

    stats = summary(client.engine)
    if as_json:
        echo_json(stats)
        return
    click.echo(f"workspaces: {stats['workspaces_by_status'] or '{}'}")
    click.echo(f"actions:    {stats['actions_by_status'] or '{}'}")
    age = stats["oldest_queued_age_seconds"]
    click.echo(
        f"queue:      {stats['queued']} queued, {stats['running']} running"
        + (f", oldest queued {age:.1f}s" if age is not None else "")
    )
    click.echo(f"webhooks:   {stats['webhooks_by_status'] or '{}'}")
    d = stats["webhook_deliveries"]
    click.echo(f"deliveries: {d['ok']} ok, {d['retried']} retried, {d['dead']} dead")


@click.command()
@click.argument("project")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_opt
@click.pass_context
@guarded
def actions(ctx: click.Context, project: str, limit: int, as_json: bool) -> None:
    """List PROJECT's most recent actions, oldest first."""
    rows = client_of(ctx).list_actions(project, limit=limit)
    if as_json:
        echo_json(rows)
        return
    for a in rows:
        code = (a["error"] or {}).get("code", "")
        click.echo(
            f"{a['id']}  {a['kind']:8} {a['status']:9} attempts={a['attempts']} "
            f"{a['created_at']} {code}"
        )


@click.command()
@click.argument("action_id")
@json_opt
@click.pass_context
@guarded
def action(ctx: click.Context, action_id: str, as_json: bool) -> None:
    """Show one action."""
    row = client_of(ctx).get_action(action_id)
    if as_json:
        echo_json(row)
        return
    for key, value in row.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        click.echo(f"{key:16} {shown if shown is not None else '-'}")


@click.command()
@click.argument("action_id")
@json_opt
@click.pass_context
@guarded
def cancel(ctx: click.Context, action_id: str, as_json: bool) -> None:
    """Cancel a queued action (a running one is not interrupted)."""
    row = client_of(ctx).cancel(action_id)
    if as_json:
        echo_json(row)
    else:
        click.echo(f"{action_id}: cancelled")


COMMANDS = [status, actions, action, cancel]
