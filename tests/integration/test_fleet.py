"""A fleet of two local hosts on one machine: real workers with their own host id and
WORKSPACE_ROOT over one Postgres, one Redis and one snapshot store every host reaches: a shared
directory, or an S3-compatible server (moto_server in its own process).

One test walks a workspace's whole life in the fleet: placed on a host, its actions run only
there (in order), the host dies (SIGKILL) and the next action rebuilds it on the other host from
its snapshot with a `workspace.moved` webhook, the dead host comes back and never touches it
again, and `hosts drain` moves it back without losing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from qai_jobs.client import WorkspaceClient
from qai_jobs.db import enqueue, hosts, ordering
from qai_jobs.db.session import engine_for
from tests.conftest import isolated, settings_for
from tests.integration.gateway_support import (
    Gateway,
    free_gateway_port,
    gateway_env,
    start_gateway,
)
from tests.integration.ops_support import Receiver, env_for, events_of, wait_until
from tests.support.hostns import host_namespaces
from tests.support.netns import stop_processes_under
from tests.support.procs import QAI, REPO, Proc, start_worker
from tests.support.s3server import s3_server

WAIT = 120  # hang guard only
HELLO = REPO / "examples" / "hello"
DEAD_SECONDS = 3.0
LINES = 5


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def files_named(root: Path, name: str) -> list[Path]:
    return [p for p in root.glob(f"*/**/{name}") if p.is_file()]


def log_name(host: str) -> str:
    """A log file of the worker's own: the session's log directory outlives a test, and a
    worker's start waits for " ready." in its log."""
    return f"{host}-{uuid.uuid4().hex[:6]}"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QAI, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=WAIT
    )


@pytest.fixture(params=["directory", "s3"])
def store_env(
    request: pytest.FixtureRequest, tmp_path: Path, log_dir: Path
) -> Iterator[dict[str, str]]:
    """The settings naming the fleet's snapshot store, the same for every host."""
    if request.param == "directory":
        yield {"WORKSPACE_SNAPSHOT_STORE": str(tmp_path / "store")}
        return
    with s3_server(log_dir) as server:
        yield server.env("fleet")


@pytest.fixture
def fleet_env(
    tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[dict[str, str]]:
    """A database of each test's own: hosts are rows, and one test's must not be another's."""
    with isolated(tmp_path_factory, base_env) as env:
        yield env


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=0)
    yield r
    r.close()


def test_a_workspace_lives_on_one_host_moves_when_it_dies_and_drains_back(
    fleet_env: dict[str, str],
    log_dir: Path,
    tmp_path: Path,
    receiver: Receiver,
    store_env: dict[str, str],
) -> None:
    env = {
        **fleet_env,
        **env_for(receiver.url("/flaky")),
        **store_env,
        "WORKSPACE_RUNTIME": "local",
        "WORKSPACE_HOST_DEAD_SECONDS": str(DEAD_SECONDS),
    }
    roots = {h: tmp_path / h for h in ("host-a", "host-b")}

    def host_env(host: str) -> dict[str, str]:
        return {**env, "WORKSPACE_HOST_ID": host, "WORKSPACE_ROOT": str(roots[host])}

    procs: dict[str, Proc] = {}
    try:
        for host in roots:
            procs[host] = start_worker(host_env(host), log_dir, concurrency=2, name=log_name(host))
            assert f".host.{host}" in procs[host].log()  # it consumes its host's queue
        lc = WorkspaceClient(settings_for(env))
        project = f"fl-{uuid.uuid4().hex[:10]}"
        files = {p.name: p.read_text() for p in HELLO.iterdir() if p.is_file()}
        url = lc.ensure(project, files=files, dev_command="node server.js --port {port}").wait(
            WAIT
        )["preview_url"]
        owner = lc.get_workspace(project)["host_id"]
        assert owner in roots
        other = next(h for h in roots if h != owner)
        assert answers(url)

        # Its actions run only on its host, in order, whichever worker takes the message.
        handles = [lc.command(project, f"echo line-{i} >> log.txt") for i in range(LINES)]
        for h in handles:
            h.wait(WAIT)
        [log] = files_named(roots[owner], "log.txt")
        assert log.read_text().split() == [f"line-{i}" for i in range(LINES)]
        assert files_named(roots[other], "log.txt") == []

        listed = json.loads(cli(env, "hosts", "--json").stdout)
        by_id = {h["host_id"]: h for h in listed}
        assert set(by_id) == set(roots) and all(h["alive"] for h in listed)
        assert by_id[owner]["workspaces"] == 1 and by_id[other]["workspaces"] == 0
        api_hosts = lc.list_hosts()
        assert {h["host_id"] for h in api_hosts} == set(roots)

        snapshot_id = lc.snapshot(project).wait(WAIT)["snapshot_id"]
        after = lc.command(project, "echo after-snapshot > lost.txt")
        after.wait(WAIT)

        # The owning host dies; its dev server lives on (as on a host cut off the network).
        procs[owner].kill()
        died = time.monotonic()
        out = lc.command(project, "cat log.txt; ls").wait(WAIT)
        ran = time.monotonic() - died
        moved_url = lc.get_workspace(project)["preview_url"]
        wait_until(lambda: answers(moved_url), WAIT, "the moved dev server")
        serving = time.monotonic() - died
        print(f"\nhost death -> action done on {other}: {ran:.2f} s; serving: {serving:.2f} s")
        assert out["stdout"].split()[:LINES] == [f"line-{i}" for i in range(LINES)]
        assert "lost.txt" not in out["stdout"]
        assert lc.get_workspace(project)["host_id"] == other
        assert files_named(roots[other], "log.txt")

        def moved() -> list[dict[str, Any]]:
            events = events_of(receiver, project)
            return [e for e in events if e["type"] == "workspace.moved"]

        [event] = wait_until(moved, 30, "the workspace.moved webhook")
        assert event["data"]["from_host"] == owner
        assert event["data"]["to_host"] == other
        assert event["data"]["snapshot_id"] == snapshot_id
        assert [x["action_id"] for x in event["data"]["lost"]] == [str(after.id)]

        # The dead host comes back: it stops what it still ran of the workspace and never
        # writes to it again.
        before = log.stat().st_mtime_ns
        procs[owner] = start_worker(host_env(owner), log_dir, concurrency=2, name=log_name(owner))
        wait_until(lambda: not answers(url), 30, "the old host to stop its dev server")
        for _ in range(3):
            lc.command(project, "echo again >> log.txt").wait(WAIT)
        assert log.stat().st_mtime_ns == before
        assert lc.get_workspace(project)["host_id"] == other

        # Drain the new host: everything moves back, nothing lost (the command-made file too).
        lc.command(project, "echo kept > kept.txt").wait(WAIT)
        drained = cli(env, "hosts", "drain", other, "--json")
        assert drained.returncode == 0, drained.stderr
        assert json.loads(drained.stdout)["moved"] == {project: owner}
        back = lc.command(project, "cat kept.txt; wc -l < log.txt").wait(WAIT)
        assert back["stdout"].split() == ["kept", str(LINES + 3)]
        assert lc.get_workspace(project)["host_id"] == owner
        events = wait_until(lambda: moved()[1:], 30, "the drain's workspace.moved webhook")
        assert events[0]["data"]["from_host"] == other and events[0]["data"]["lost"] == []
        assert answers(lc.get_workspace(project)["preview_url"])
        lc.destroy(project).wait(WAIT)
        if secret := store_env.get("AWS_SECRET_ACCESS_KEY"):
            assert not [p for p in log_dir.glob("*.log") if secret in p.read_text(errors="replace")]
    finally:
        for proc in procs.values():
            if proc.popen.poll() is None:
                proc.stop()


def test_a_drain_attempt_between_the_sleep_and_the_hand_over_moves_it_all_the_same(
    fleet_env: dict[str, str],
) -> None:
    """`hosts drain`'s race, replayed: a drain message lands after the drain's sleep settled and
    before its hand-over (in the walk-through: a message the dead host found in its queue when
    it came back, forwarded there while it still looked alive). The lease grant places the
    sleeping workspace off the draining host first; the hand-over reports where it went."""
    engine = engine_for(fleet_env["DATABASE_URL"])
    project = f"fl-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        for host in ("host-a", "host-b"):
            hosts.report(conn, host, "127.0.0.1", 2, fresh=True)
        enqueue.enqueue(conn, action_id=uuid.uuid4(), project_id=project, kind="sleep", payload={})
        # Its sleep ran on host-b and settled: the lease is free.
        conn.execute(
            sa.text("UPDATE actions SET status = 'succeeded' WHERE project_id = :p"),
            {"p": project},
        )
        conn.execute(
            sa.text(
                "UPDATE workspaces SET host_id = 'host-b', provider = 'local', status = 'sleeping'"
                " WHERE project_id = :p"
            ),
            {"p": project},
        )
        assert hosts.set_draining(conn, "host-b", True)
    with engine.begin() as conn:  # the late drain attempt, on the host that came back
        got = ordering.acquire(conn, project, "late", 1.5, host_dead_seconds=DEAD_SECONDS)
        assert got is not None
        holder = hosts.claim(conn, project, "host-a", DEAD_SECONDS, True, seen=got.workspace)
        assert holder.moved_from == "host-b"
        ordering.release(conn, got.lease)
    with engine.begin() as conn:
        assert hosts.hand_over(conn, project, "host-b", DEAD_SECONDS) == "host-a"


def test_hosts_in_their_own_network_namespaces_serve_previews_from_their_address(
    fleet_env: dict[str, str], log_dir: Path, tmp_path: Path, receiver: Receiver
) -> None:
    """Each host a network namespace with its own address, the snapshots in S3: the gateway
    reaches a workspace's dev server at its host's address, and at the other's once it moved."""
    port = free_gateway_port()
    with s3_server(log_dir) as s3, host_namespaces(2) as spaces:
        env = gateway_env(
            {
                **fleet_env,
                **env_for(receiver.url("/flaky")),
                **s3.env("netns"),
                "WORKSPACE_HOST_DEAD_SECONDS": str(DEAD_SECONDS),
            },
            port,
        )
        hosts = {f"host-{i}": ns for i, ns in enumerate(spaces)}

        def host_env(host: str) -> dict[str, str]:
            ns = hosts[host]
            reached = {
                key: ns.reach(env[key])
                for key in (
                    "DATABASE_URL",
                    "REDIS_URL",
                    "WORKSPACE_CALLBACK_URL",
                    "WORKSPACE_S3_ENDPOINT_URL",
                )
            }
            return {
                **env,
                **reached,
                "WORKSPACE_HOST_ID": host,
                "WORKSPACE_HOST_ADDRESS": ns.address,
                "WORKSPACE_ROOT": str(tmp_path / host),
            }

        procs: dict[str, Proc] = {}
        gateway: Gateway | None = None
        try:
            for host, ns in hosts.items():
                procs[host] = start_worker(
                    host_env(host), log_dir, name=log_name(host), prefix=ns.prefix
                )
                netns = os.readlink(f"/proc/{procs[host].pid}/ns/net")
                assert netns != os.readlink("/proc/self/ns/net")
            gateway = start_gateway(env, log_dir, port)
            lc = WorkspaceClient(settings_for(env))
            project = f"ns-{uuid.uuid4().hex[:10]}"
            files = {p.name: p.read_text() for p in HELLO.iterdir() if p.is_file()}
            url = lc.ensure(project, files=files).wait(WAIT)["preview_url"]
            workspace = lc.get_workspace(project)
            owner = workspace["host_id"]
            other = next(h for h in hosts if h != owner)
            listed = {h["host_id"]: h["address"] for h in lc.list_hosts()}
            assert listed == {h: ns.address for h, ns in hosts.items()}
            upstream = urlsplit(workspace["upstream_url"])
            assert upstream.hostname == hosts[owner].address
            assert answers(workspace["upstream_url"])  # from outside its namespace
            page = gateway.get(url)
            assert page.status_code == 200 and "Hello from qai-jobs" in page.text
            lc.command(project, "echo kept > kept.txt").wait(WAIT)
            lc.snapshot(project).wait(WAIT)

            # The host dies whole, its dev server too: whatever serves next is the other's.
            procs[owner].kill()
            died = time.monotonic()
            stop_processes_under(tmp_path / owner)
            sent = time.monotonic() - died
            out = lc.command(project, "cat kept.txt").wait(WAIT)
            ran = time.monotonic() - died
            wait_until(lambda: gateway.get(url).status_code == 200, WAIT, "the moved app")
            serving = time.monotonic() - died
            print(f"\nnetns: death -> sent {sent:.2f}, done {ran:.2f}, serving {serving:.2f} s")
            assert out["stdout"].split() == ["kept"]
            moved = lc.get_workspace(project)
            assert moved["host_id"] == other and moved["preview_url"] == url
            assert urlsplit(moved["upstream_url"]).hostname == hosts[other].address
            assert "Hello from qai-jobs" in gateway.get(url).text
            lc.destroy(project).wait(WAIT)
        finally:
            for proc in procs.values():
                if proc.popen.poll() is None:
                    proc.stop()
            if gateway is not None:
                gateway.proc.stop()
            for host in hosts:
                stop_processes_under(tmp_path / host)
