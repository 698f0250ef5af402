"""Producer commands: ``ensure``, ``run``, ``read``, ``write`` and one per other kind."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import click

from qai_jobs.cli.common import (
    EXIT_FAILED,
    ProgressPrinter,
    client_of,
    echo_json,
    fail,
    guarded,
    json_opt,
    timeout_opt,
    wait,
)
from qai_jobs.sync import walk_tree


def _read_dir(directory: Path) -> list[dict[str, str]]:
    files = []
    for rel in walk_tree(directory):
        data = (directory / rel).read_bytes()
        try:
            files.append({"path": rel, "content": data.decode("utf-8"), "encoding": "utf-8"})
        except UnicodeDecodeError:
            files.append(
                {"path": rel, "content": base64.b64encode(data).decode(), "encoding": "base64"}
            )
    return files


@click.command()
@click.argument("project")
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Sync this directory's files (only those that changed; files deleted here since "
    "the last sync are deleted in the workspace).",
)
@click.option("--repo", help="Git repository URL to clone or fast-forward.")
@click.option("--ref", default=None, help="Git ref (with --repo; default main).")
@click.option("--dev-command", help="Dev server command; {port} is filled in.")
@click.option("--install-command", help="Install command (default: from the lock file).")
@click.option("--port", type=click.IntRange(1, 65535), help="Dev server port inside the sandbox.")
@click.option("--no-dev-server", is_flag=True, help="Do not start a dev server.")
@click.option(
    "--keep-missing",
    is_flag=True,
    help="With --dir: keep files synced earlier that the directory no longer has.",
)
@click.option("--no-wait", is_flag=True, help="Print the action id and return at once.")
@timeout_opt
@json_opt
@click.pass_context
@guarded
def ensure(
    ctx: click.Context,
    project: str,
    directory: Path | None,
    repo: str | None,
    ref: str | None,
    dev_command: str | None,
    install_command: str | None,
    port: int | None,
    no_dev_server: bool,
    keep_missing: bool,
    no_wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Provision or reuse PROJECT's workspace, sync files, install, start the dev server."""
    if ref and not repo:
        fail("--ref needs --repo")
    payload: dict[str, Any] = {
        "dev_command": dev_command,
        "install_command": install_command,
        "port": port,
        "start_dev_server": False if no_dev_server else None,
    }
    if repo:
        payload["repo"] = {"url": repo, "ref": ref or "main"}
    client = client_of(ctx)
    if directory is not None and not no_wait:
        # Only what differs from the workspace's manifest goes, and files deleted from the
        # directory since the last sync are deleted in the workspace too.
        click.echo(f"ensure {project}: syncing {directory}", err=True)
        progress = ProgressPrinter(not as_json)
        try:
            result = client.sync(
                project,
                _read_dir(directory),
                delete_missing=not keep_missing,
                timeout=wait_timeout,
                on_event=progress,
                **{k: v for k, v in payload.items() if v is not None},
            )
        finally:
            progress.close()
    else:
        if directory is not None:
            payload["files"] = _read_dir(directory)
        handle = client.ensure(project, **payload)
        if no_wait:
            click.echo(handle.id)
            return
        click.echo(f"ensure {project}: action {handle.id}", err=True)
        result = wait(handle, wait_timeout, quiet=as_json)
    if as_json:
        echo_json(result)
    else:
        click.echo(result.get("preview_url") or "(no preview URL)")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("project")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--cwd", help="Working directory inside the workspace.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=300,
    show_default=True,
    help="Command timeout in seconds.",
)
@click.pass_context
@guarded
def run(
    ctx: click.Context, project: str, cmd: tuple[str, ...], cwd: str | None, timeout_s: float
) -> None:
    """Run CMD in PROJECT's workspace: `qai-jobs run PROJECT -- npm test`.

    Prints the output as it is produced and exits with the command's exit code.
    """
    import shlex

    script = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    handle = client_of(ctx).command(project, script, cwd=cwd, timeout_s=timeout_s)
    printed = {"stdout": 0, "stderr": 0}
    live = {"ok": True}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") != "output" or not live["ok"]:
            return
        stream = str(event.get("stream"))
        if event.get("offset") != printed.get(stream):
            live["ok"] = False  # joined late: print everything from the result instead
            return
        data = str(event.get("data", ""))
        (sys.stdout if stream == "stdout" else sys.stderr).write(data)
        (sys.stdout if stream == "stdout" else sys.stderr).flush()
        printed[stream] += len(data)

    result = handle.wait(timeout=timeout_s + 600, on_event=on_event)
    # Whatever the live stream did not show (it joined late, or lost a message).
    for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        out.write(str(result.get(stream, ""))[printed[stream] :])
        out.flush()
    if result.get("timed_out"):
        click.echo(f"qai-jobs: command timed out after {timeout_s:g}s", err=True)
    if result.get("truncated"):
        click.echo("qai-jobs: output was truncated", err=True)
    code = int(result.get("exit_code", 1))
    sys.exit(code if 0 <= code <= 255 else EXIT_FAILED)


@click.command()
@click.argument("project")
@click.argument("path")
@timeout_opt
@click.pass_context
@guarded
def read(ctx: click.Context, project: str, path: str, wait_timeout: float) -> None:
    """Print the file PATH of PROJECT's workspace."""
    result = wait(client_of(ctx).read(project, [path]), wait_timeout, quiet=True)
    if result["missing"]:
        fail(f"{path}: no such file in {project}", EXIT_FAILED)
    entry = result["files"][0]
    if entry["encoding"] == "base64":
        sys.stdout.buffer.write(base64.b64decode(entry["content"]))
    else:
        sys.stdout.write(entry["content"])
    sys.stdout.flush()


@click.command()
@click.argument("project")
@click.argument("path")
@click.option(
    "--from",
    "source",
    type=click.File("rb"),
    default="-",
    help="Read the content from FILE (default stdin).",
)
@timeout_opt
@json_opt
@click.pass_context
@guarded
def write(
    ctx: click.Context, project: str, path: str, source: Any, wait_timeout: float, as_json: bool
) -> None:
    """Write PATH in PROJECT's workspace from --from FILE or stdin."""
    data: bytes = source.read()
    try:
        entry = {"path": path, "content": data.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        entry = {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}
    result = wait(client_of(ctx).write(project, files=[entry]), wait_timeout, quiet=True)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{path}: {'written' if result['files_written'] else 'unchanged'}")


def simple(kind: str, help_text: str, show: str | None) -> click.Command:
    @click.command(name=kind, help=help_text)
    @click.argument("project")
    @timeout_opt
    @json_opt
    @click.pass_context
    @guarded
    def command(ctx: click.Context, project: str, wait_timeout: float, as_json: bool) -> None:
        result = wait(client_of(ctx).enqueue(project, kind), wait_timeout, quiet=as_json)
        if as_json:
            echo_json(result)
        elif show is not None:
            value = result.get(show)
            click.echo(value if value is not None else "")
        else:
            click.echo(f"{kind}: done")

    return command


@click.command()
@click.argument("project")
@click.argument("snapshot_id")
@timeout_opt
@json_opt
@click.pass_context
@guarded
def restore(
    ctx: click.Context, project: str, snapshot_id: str, wait_timeout: float, as_json: bool
) -> None:
    """Restore PROJECT's workspace to SNAPSHOT_ID."""
    result = wait(client_of(ctx).restore(project, snapshot_id), wait_timeout, quiet=as_json)
    if as_json:
        echo_json(result)
    else:
        click.echo(result.get("preview_url") or "restored")


COMMANDS = [
    ensure,
    run,
    read,
    write,
    restore,
    simple(
        "preview",
        "Check PROJECT's dev server (restarting it if dead) and print its URL.",
        "preview_url",
    ),
    simple("logs", "Print the recent output of PROJECT's dev server.", "text"),
    simple(
        "sleep", "Put PROJECT's workspace to sleep (prints the snapshot id, if any).", "snapshot_id"
    ),
    simple("wake", "Wake PROJECT's workspace and print its preview URL.", "preview_url"),
    simple("snapshot", "Snapshot PROJECT's workspace and print the snapshot id.", "snapshot_id"),
    simple("destroy", "Destroy PROJECT's workspace.", None),
]
