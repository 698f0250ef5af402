"""Delta sync through the whole pipeline on the local provider: a producer sends only the files
that differ from the workspace's manifest, and the workspace still ends up exactly as the
producer's tree, even when a command changed synced files behind the manifest's back."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from qai_jobs.client import WorkspaceClient
from qai_jobs.errors import ActionFailed
from qai_jobs.providers.local.layout import Layout
from tests.conftest import settings_for
from tests.support.procs import REPO, Proc, start_worker

WAIT = 90  # hang guard only
QAI = [sys.executable, "-m", "qai_jobs"]


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, "WORKSPACE_RUNTIME": "local"}


@pytest.fixture(scope="module")
def lc(env: dict[str, str], log_dir: Path) -> Iterator[WorkspaceClient]:
    proc: Proc = start_worker(env, log_dir, concurrency=2, name="delta-sync")
    yield WorkspaceClient(settings_for(env))
    proc.stop()


@pytest.fixture
def project() -> str:
    return f"ds-{uuid.uuid4().hex[:10]}"


def tree(count: int) -> dict[str, str]:
    return {f"src/d{i % 7}/f{i:03d}.txt": f"file {i}\n" for i in range(count)}


def sync(lc: WorkspaceClient, project: str, files: dict[str, str], **kw: Any) -> dict[str, Any]:
    return lc.sync(project, files, timeout=WAIT, start_dev_server=False, **kw)


def actions(lc: WorkspaceClient, project: str) -> list[dict[str, Any]]:
    """The project's actions, oldest first, with the payloads the producer really sent."""
    with lc.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT kind, status, payload, error FROM actions WHERE project_id = :p ORDER BY seq"
            ),
            {"p": project},
        )
        return [r._asdict() for r in rows]


def contents(lc: WorkspaceClient, project: str, paths: list[str]) -> dict[str, str | None]:
    got = lc.read(project, paths=paths).wait(WAIT)
    found: dict[str, str | None] = {f["path"]: f["content"] for f in got["files"]}
    found.update({p: None for p in got["missing"]})
    return found


def test_only_changed_files_travel_and_removed_ones_are_deleted(
    lc: WorkspaceClient, project: str
) -> None:
    files = tree(120)
    cold = sync(lc, project, files)
    assert cold["created"] is True and cold["files_written"] == 120
    recorded = lc.get_manifest(project)
    assert recorded["manifest_seq"] is not None and len(recorded["files"]) == 120

    files["src/d0/f000.txt"] = "edited\n"
    files["src/new.txt"] = "new\n"
    del files["src/d1/f001.txt"]
    delta = sync(lc, project, files)
    assert delta["files_written"] == 2 and delta["files_unchanged"] == 118

    sent = actions(lc, project)[-1]["payload"]
    assert sorted(f["path"] for f in sent["files"]) == ["src/d0/f000.txt", "src/new.txt"]
    assert sent["delete"] == ["src/d1/f001.txt"]
    assert sent["manifest_base"] == recorded["manifest_seq"]
    assert contents(lc, project, ["src/d0/f000.txt", "src/new.txt", "src/d1/f001.txt"]) == {
        "src/d0/f000.txt": "edited\n",
        "src/new.txt": "new\n",
        "src/d1/f001.txt": None,
    }
    after = lc.get_manifest(project)
    assert len(after["files"]) == 120 and "src/d1/f001.txt" not in after["files"]
    assert after["manifest_seq"] > recorded["manifest_seq"]

    nothing = sync(lc, project, files)
    assert nothing["files_written"] == 0 and nothing["files_unchanged"] == 120
    assert not actions(lc, project)[-1]["payload"].get("files")


def test_a_command_that_changed_a_synced_file_is_caught_and_the_tree_wins(
    lc: WorkspaceClient, project: str
) -> None:
    files = {"a.txt": "mine\n", "b.txt": "bee\n"}
    sync(lc, project, files)
    lc.command(project, "echo tampered > a.txt; echo made > made.txt").wait(WAIT)
    files["b.txt"] = "bee 2\n"
    result = sync(lc, project, files)
    # The delta (b.txt only) was refused before writing; the full tree went next.
    kinds = [(a["kind"], a["status"]) for a in actions(lc, project)]
    assert kinds[-2:] == [("ensure", "failed"), ("ensure", "succeeded")]
    stale = actions(lc, project)[-2]
    assert stale["error"]["code"] == "manifest_stale" and "a.txt" in stale["error"]["message"]
    assert result["files_written"] == 2  # a.txt back to the tree's content, and b.txt
    assert contents(lc, project, ["a.txt", "b.txt", "made.txt"]) == {
        "a.txt": "mine\n",
        "b.txt": "bee 2\n",
        "made.txt": "made\n",  # the sandbox's own files are never touched
    }


def test_a_command_that_left_synced_files_alone_keeps_the_delta(
    lc: WorkspaceClient, project: str
) -> None:
    files = tree(30)
    sync(lc, project, files)
    lc.command(project, "echo hi > other.txt").wait(WAIT)
    files["src/d2/f002.txt"] = "edited\n"
    result = sync(lc, project, files)
    assert result["files_written"] == 1 and result["files_unchanged"] == 29
    assert [a["status"] for a in actions(lc, project)][-1] == "succeeded"
    assert actions(lc, project)[-1]["payload"]["manifest_base"] is not None


def test_a_delta_against_an_old_manifest_changes_nothing(lc: WorkspaceClient, project: str) -> None:
    sync(lc, project, {"a.txt": "one\n"})
    old = lc.get_manifest(project)["manifest_seq"]
    lc.write(project, files={"b.txt": "two\n"}).wait(WAIT)  # another producer moved it on
    with pytest.raises(ActionFailed) as info:
        lc.ensure(
            project, files={"a.txt": "late\n"}, manifest_base=old, start_dev_server=False
        ).wait(WAIT)
    assert info.value.code == "manifest_stale"
    assert contents(lc, project, ["a.txt"]) == {"a.txt": "one\n"}


def test_destroy_forgets_the_manifest(lc: WorkspaceClient, project: str) -> None:
    sync(lc, project, {"a.txt": "one\n"})
    lc.destroy(project).wait(WAIT)
    assert lc.get_manifest(project) == {"project_id": project, "manifest_seq": None, "files": {}}
    again = sync(lc, project, {"a.txt": "one\n"})
    assert again["created"] is True and again["files_written"] == 1


def test_cli_ensure_dir_sends_only_what_changed(
    lc: WorkspaceClient, env: dict[str, str], project: str, tmp_path: Path
) -> None:
    for i in range(20):
        (tmp_path / f"f{i}.txt").write_text(f"{i}\n")

    def ensure(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*QAI, "ensure", project, "--dir", str(tmp_path), "--no-dev-server", "--json", *extra],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert ensure().returncode == 0
    (tmp_path / "f3.txt").write_text("three\n")
    (tmp_path / "f4.txt").unlink()
    out = ensure()
    assert out.returncode == 0, out.stderr
    sent = actions(lc, project)[-1]["payload"]
    assert [f["path"] for f in sent["files"]] == ["f3.txt"] and sent["delete"] == ["f4.txt"]
    assert contents(lc, project, ["f3.txt", "f4.txt"]) == {"f3.txt": "three\n", "f4.txt": None}
    (tmp_path / "f5.txt").unlink()
    assert ensure("--keep-missing").returncode == 0
    assert contents(lc, project, ["f5.txt"]) == {"f5.txt": "5\n"}


def host_tree(lc: WorkspaceClient, env: dict[str, str], project: str) -> Path:
    sandbox_id = lc.get_workspace(project)["sandbox_id"]
    return Layout(Path(env["WORKSPACE_ROOT"]) / sandbox_id).tree


def test_files_lost_behind_our_back_are_caught_by_the_next_delta(
    lc: WorkspaceClient, env: dict[str, str], project: str
) -> None:
    files = tree(20)
    sync(lc, project, files)
    # No action of ours did this (a crash between wake and settle, a provider losing files):
    # nothing in the actions table says so, only the sandbox does.
    (host_tree(lc, env, project) / "src/d3/f003.txt").unlink()
    (host_tree(lc, env, project) / "src/d4/f004.txt").write_text("rewritten\n")
    files["src/d5/f005.txt"] = "edited\n"
    result = sync(lc, project, files)
    assert result["files_written"] == 3
    assert contents(lc, project, ["src/d3/f003.txt", "src/d4/f004.txt", "src/d5/f005.txt"]) == {
        "src/d3/f003.txt": "file 3\n",
        "src/d4/f004.txt": "file 4\n",
        "src/d5/f005.txt": "edited\n",
    }


def test_an_install_that_rewrites_a_synced_lock_file_settles_in_one_round(
    lc: WorkspaceClient, project: str
) -> None:
    files = {"package.json": '{"name": "x"}\n', "package-lock.json": "L1\n"}
    install = "echo L2 > package-lock.json"
    first = sync(lc, project, files, install_command=install)
    assert first["installed"] is True
    # The install left L2 and the manifest says so: the producer's L1 is sent, not trusted.
    second = sync(lc, project, files, install_command=install)
    assert second["files_written"] == 1
    assert actions(lc, project)[-1]["status"] == "succeeded"
    assert contents(lc, project, ["package-lock.json"]) == {"package-lock.json": "L1\n"}
    third = sync(lc, project, files, install_command=install)
    assert third["files_written"] == 0 and third["installed"] is False


def test_dot_slash_paths_and_a_file_turning_into_a_directory(
    lc: WorkspaceClient, project: str
) -> None:
    sync(lc, project, {"./a.txt": "a\n", "lib": "a file\n"})
    assert sync(lc, project, {"./a.txt": "a\n", "lib": "a file\n"})["files_written"] == 0
    sync(lc, project, {"a.txt": "a\n", "lib/index.js": "now a directory\n"})
    assert contents(lc, project, ["a.txt", "lib/index.js"]) == {
        "a.txt": "a\n",
        "lib/index.js": "now a directory\n",
    }
    sync(lc, project, {"a.txt": "a\n", "lib": "a file again\n"})
    assert contents(lc, project, ["lib"]) == {"lib": "a file again\n"}
    # Four syncs and two reads, none refused: the deltas applied the deletions first.
    assert [(a["kind"], a["status"]) for a in actions(lc, project)] == [
        ("ensure", "succeeded"),
        ("ensure", "succeeded"),
        ("ensure", "succeeded"),
        ("read", "succeeded"),
        ("ensure", "succeeded"),
        ("read", "succeeded"),
    ]


def test_a_refused_delta_leaves_the_settings_alone(lc: WorkspaceClient, project: str) -> None:
    sync(lc, project, {"a.txt": "one\n"})
    lc.command(project, "echo tampered > a.txt").wait(WAIT)
    seq = lc.get_manifest(project)["manifest_seq"]
    with pytest.raises(ActionFailed) as info:
        lc.ensure(
            project,
            files={"b.txt": "b\n"},
            manifest_base=seq,
            dev_command="node other.js",
            start_dev_server=False,
        ).wait(WAIT)
    assert info.value.code == "manifest_stale"
    with lc.engine.connect() as conn:
        dev = conn.execute(
            sa.text("SELECT dev_command, status FROM workspaces WHERE project_id = :p"),
            {"p": project},
        ).one()
    assert dev.dev_command is None and dev.status == "ready"
    assert contents(lc, project, ["b.txt"]) == {"b.txt": None}


def test_a_recreated_workspace_does_not_bring_back_a_destroyed_ones_files(
    lc: WorkspaceClient, env: dict[str, str], project: str
) -> None:
    sync(lc, project, {"old.txt": "old\n"})
    lc.snapshot(project).wait(WAIT)
    lc.destroy(project).wait(WAIT)
    sync(lc, project, {"new.txt": "new\n"})
    from tests.support.netns import lose_sandbox

    base = Path(env["WORKSPACE_ROOT"]) / lc.get_workspace(project)["sandbox_id"]
    lose_sandbox(base)  # the sandbox is lost behind our back
    assert contents(lc, project, ["old.txt", "new.txt"]) == {"old.txt": None, "new.txt": "new\n"}
