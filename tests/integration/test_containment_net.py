"""Network containment of local sandboxes: real bwrap sandboxes in their own namespaces, real
pasta and dnsmasq, real listeners on the host, TCP probes from inside (bash /dev/tcp).

Each forbidden probe is paired with proof that the target really answers from the host, so a
probe cannot pass by aiming at nothing; and each policy is paired with a destination it lets
through (the npm registry, the one outside host this machine reaches).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.client import WorkspaceClient
from qai_jobs.errors import ActionFailed, PermanentError, ValidationFailed
from qai_jobs.providers.base import CreateSpec, Sandbox
from qai_jobs.providers.local import LocalProvider
from qai_jobs.providers.local import egress as local_egress
from tests.conformance.conftest import make_settings
from tests.conftest import settings_for
from tests.support.procs import QAI, Proc, start_worker

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "registry.npmjs.org"
WAIT = 120  # hang guard only
# One line per target: "<target> open|closed". A refused or rejected connect fails at once;
# the timeout only bounds a probe that would hang.
PROBE = r"""
for t in "$@"; do
  if timeout 3 bash -c "exec 3<>/dev/tcp/${t%:*}/${t##*:}" 2>/dev/null
  then echo "$t open"; else echo "$t closed"; fi
done
"""
SERVER = (
    "exec node -e \"require('http').createServer((q, r) => r.end(process.argv[1]))"
    ".listen(+process.argv[2], '::')\" {text} {port}"
)


class Net:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.made: list[tuple[LocalProvider, Sandbox]] = []

    def provider(self, **extra: Any) -> LocalProvider:
        extra.setdefault("workspace_local_isolation", "bwrap")
        return LocalProvider(make_settings(self.tmp, **extra))

    def sandbox(self, provider: LocalProvider, project: str = "p", **spec: Any) -> Sandbox:
        sb = provider.create(CreateSpec(project, uuid.uuid4().hex, 3000, **spec))
        self.made.append((provider, sb))
        return sb


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    helper = Net(tmp_path)
    try:
        yield helper
    finally:
        for provider, sb in helper.made:
            with contextlib.suppress(Exception):
                provider.destroy(sb)


def probe(provider: LocalProvider, sb: Sandbox, targets: list[str]) -> dict[str, bool]:
    result = provider.run(sb, ["bash", "-c", PROBE, "probe", *targets], timeout_s=120)
    assert result.exit_code == 0, result.stderr
    seen = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    return {target: seen[target] == "open" for target in targets}


def host_connects(target: str) -> bool:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError:
        return False
    return True


def host_addresses() -> list[str]:
    """Every address of this host but loopback, read from `ip -o addr` (v6 link-local ones
    need a scope, which a connect cannot name from the sandbox's side anyway)."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True)
    found = []
    for match in re.finditer(r"\sinet6?\s+([0-9a-f.:]+)/\d+", out.stdout):
        address = ipaddress.ip_address(match.group(1))
        if not address.is_loopback and not address.is_link_local:
            found.append(str(address))
    return found


@contextlib.contextmanager
def listener(host: str) -> Iterator[int]:
    """A TCP listener of the test's own on the host, accepting in the background (backlog)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as page:
            return str(page.read().decode())
    except OSError:
        return None


def serve(provider: LocalProvider, sb: Sandbox, text: str, port: int | None = None) -> int:
    """Start a dev server answering ``text``; the sandbox's own port unless told another."""
    own = provider.dev_port(sb, 3000)
    provider.start_process(sb, SERVER.format(text=shlex.quote(text), port=port or own))
    return own


def helpers(sb: Sandbox) -> dict[str, int | None]:
    """The pids of the namespace's helpers, if they run (white box: their pid files)."""
    found: dict[str, int | None] = {}
    for name in ("pasta", "dnsmasq"):
        try:
            pid = int((Path(sb.state["dir"]) / "net" / f"{name}.pid").read_text().split()[0])
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            found[name] = pid if state not in ("Z", "X") else None
        except (OSError, ValueError, IndexError):
            found[name] = None
    return found


# --- what a sandbox cannot reach ---------------------------------------------------------------


def test_the_hosts_services_listeners_and_addresses_are_unreachable(net: Net) -> None:
    provider = net.provider()
    sb = net.sandbox(provider)
    addresses = host_addresses()
    assert addresses, "this host has no address but loopback: nothing to prove"
    with listener("127.0.0.1") as loop_port, listener("::") as any_port:
        forbidden = [
            "127.0.0.1:5432",  # Postgres, trust auth
            "127.0.0.1:6379",  # Redis, no password
            f"127.0.0.1:{loop_port}",  # anything on the host's loopback (the API, Flower)
            f"127.0.0.1:{any_port}",
            *(f"{address}:{any_port}" for address in addresses),
        ]
        for target in forbidden:
            assert host_connects(target), f"{target} does not answer on the host: no proof"
        # The metadata address needs no listener: it is refused before it leaves.
        seen = probe(provider, sb, [*forbidden, "169.254.169.254:80", f"{REGISTRY}:443"])
    assert seen.pop(f"{REGISTRY}:443") is True  # the same probe does reach the internet
    assert [target for target, opened in seen.items() if opened] == []


def test_a_neighbours_dev_server_is_unreachable_by_any_address(net: Net) -> None:
    provider = net.provider()
    mine, neighbour = net.sandbox(provider, "mine"), net.sandbox(provider, "neighbour")
    port = serve(provider, neighbour, "neighbour")
    url = provider.preview_url(neighbour, port)
    assert wait_for(lambda: get(url) == "neighbour")  # the host reaches it
    targets = [f"{a}:{port}" for a in ["127.0.0.1", "::1", *host_addresses()]]
    assert not any(probe(provider, mine, targets).values())


def test_commands_reach_their_own_dev_server_and_the_host_its_preview(net: Net) -> None:
    provider = net.provider()
    sb = net.sandbox(provider)
    port = serve(provider, sb, "own")
    url = provider.preview_url(sb, port)
    assert url == f"http://127.0.0.1:{port}"
    assert wait_for(lambda: provider.port_ready(sb, port)) and get(url) == "own"
    for host in ("localhost", "127.0.0.1", "[::1]"):
        fetch = f"require('http').get('http://{host}:{port}/', r => r.pipe(process.stdout))"
        result = provider.run(sb, ["node", "-e", fetch], timeout_s=30)
        assert (result.exit_code, result.stdout) == (0, "own"), (host, result.stderr)


def test_a_port_squat_cannot_hijack_a_neighbours_preview(net: Net) -> None:
    provider = net.provider()
    victim, squatter = net.sandbox(provider, "victim"), net.sandbox(provider, "squatter")
    port = serve(provider, victim, "victim")
    url = provider.preview_url(victim, port)
    assert wait_for(lambda: get(url) == "victim")
    # The squatter listens on the victim's port number: inside its own namespace only.
    serve(provider, squatter, "squatter", port=port)
    time.sleep(1.0)
    assert get(url) == "victim"
    provider.sleep(victim)
    assert get(url) is None  # asleep: nobody answers, least of all the squatter
    provider.wake(victim)
    serve(provider, victim, "victim")
    assert wait_for(lambda: get(url) == "victim")


# --- egress policies ---------------------------------------------------------------------------


def npm_install(provider: LocalProvider, sb: Sandbox) -> subprocess.CompletedProcess[str]:
    # Without its cache (which would install offline) and without retries (each costs 10 s).
    script = (
        "rm -rf node_modules package-lock.json ~/.npm; "
        "npm install --no-audit --no-fund --fetch-retries=0 2>&1; echo; "
        "cat node_modules/is-number/package.json"
    )
    result = provider.run(sb, ["bash", "-c", script], timeout_s=300)
    return subprocess.CompletedProcess([], result.exit_code, result.stdout, result.stderr)


def test_npm_install_works_under_internet_and_fails_under_none(net: Net) -> None:
    provider = net.provider()
    sb = net.sandbox(provider)
    manifest = {"name": "t", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}
    provider.write_files(sb, [("package.json", json.dumps(manifest).encode())])
    port = serve(provider, sb, "still here")
    url = provider.preview_url(sb, port)
    assert wait_for(lambda: get(url) == "still here")

    installed = npm_install(provider, sb)
    assert '"version": "7.0.0"' in installed.stdout, installed.stdout[-2000:]

    provider.set_egress(sb, "none")
    refused = npm_install(provider, sb)
    assert "ENOTFOUND" in refused.stdout and REGISTRY in refused.stdout, refused.stdout[-2000:]
    assert '"version": "7.0.0"' not in refused.stdout
    assert not probe(provider, sb, ["203.0.113.80:443"])["203.0.113.80:443"]
    # Nothing goes out, yet the preview still comes in: the dev server kept running.
    assert get(url) == "still here"

    provider.set_egress(sb, "internet")
    assert '"version": "7.0.0"' in npm_install(provider, sb).stdout


def resolves(provider: LocalProvider, sb: Sandbox, name: str) -> bool:
    return provider.run(sb, ["getent", "hosts", name], timeout_s=30).exit_code == 0


def test_an_allow_list_admits_only_the_listed_hosts(net: Net) -> None:
    provider = net.provider()
    sb = net.sandbox(provider, egress=[REGISTRY])
    manifest = {"name": "t", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}
    provider.write_files(sb, [("package.json", json.dumps(manifest).encode())])
    assert '"version": "7.0.0"' in npm_install(provider, sb).stdout
    assert resolves(provider, sb, REGISTRY)
    for other in ("pypi.org", "deb.debian.org", "example.com"):
        assert not resolves(provider, sb, other), other
    # Still never the host, whatever was answered for an allowed name.
    assert not any(probe(provider, sb, ["127.0.0.1:5432", "169.254.169.254:80"]).values())
    # Nor the resolver's own upstream: a query that skips dnsmasq goes nowhere.
    query = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3);"
        "s.sendto(bytes.fromhex('123401000001000000000000047079706903636f6d0000010001'),"
        f"('{local_egress.DNS_FORWARD}', 53)); print(s.recv(512))"
    )
    bypass = provider.run(sb, ["python3", "-c", query], timeout_s=30)
    assert bypass.exit_code != 0 and "Error" in bypass.stderr, bypass

    # A CIDR admits its addresses without any name; the registry's name no longer resolves.
    registry_ip = socket.gethostbyname(REGISTRY)
    provider.set_egress(sb, [f"{registry_ip}/32"])
    assert probe(provider, sb, [f"{registry_ip}:443"])[f"{registry_ip}:443"]
    assert not resolves(provider, sb, REGISTRY)

    provider.set_egress(sb, ["pypi.org"])
    refused = npm_install(provider, sb)
    assert "ENOTFOUND" in refused.stdout and '"version": "7.0.0"' not in refused.stdout


def test_without_isolation_only_internet_can_be_honoured(net: Net) -> None:
    provider = net.provider(workspace_local_isolation="none")
    sb = net.sandbox(provider)
    provider.set_egress(sb, "internet")
    with pytest.raises(PermanentError) as info:
        provider.set_egress(sb, "none")
    assert info.value.code == "unsupported_network_policy"
    with pytest.raises(PermanentError) as created:
        net.sandbox(provider, egress=[REGISTRY])
    assert created.value.code == "unsupported_network_policy"


# --- lifecycle ---------------------------------------------------------------------------------


def test_sleep_takes_the_network_down_and_wake_brings_it_back(net: Net) -> None:
    provider = net.provider()
    sb = net.sandbox(provider)
    port = serve(provider, sb, "awake")
    url = provider.preview_url(sb, port)
    assert wait_for(lambda: get(url) == "awake")
    pids = helpers(sb)
    assert all(pids.values()), pids

    provider.sleep(sb)
    assert not (Path(sb.state["dir"]) / "net" / "ns").exists()
    # Both are killed; pasta's exit takes a moment (the kernel unregisters its tap device).
    assert wait_for(lambda: helpers(sb) == {"pasta": None, "dnsmasq": None}, 2)
    assert wait_for(lambda: not host_connects(f"127.0.0.1:{port}"), 2)  # the port is free

    provider.wake(sb)
    serve(provider, sb, "woken")
    assert wait_for(lambda: get(url) == "woken")
    assert not probe(provider, sb, ["127.0.0.1:5432"])["127.0.0.1:5432"]


def test_probes_while_nothing_listens_leave_the_port_to_the_next_dev_server(net: Net) -> None:
    provider = net.provider()
    sb = net.sandbox(provider)
    port = provider.dev_port(sb, 3000)
    assert not provider.port_ready(sb, port)  # brings the namespace up; nothing listens yet
    # Every probe pasta splices in connects to the port from a source port of the namespace's
    # own range, which holds the dev port. Narrowed to start at it (the range's parity comes
    # first), an unreserved port is nearly every probe's source: it connects to itself, and
    # its TIME_WAIT keeps the dev server from listening (the timed-out server's case, rarer).
    ns = Path(sb.state["dir"]) / "net" / "ns"
    narrow = f'echo "{port} {port + 8}" > /proc/sys/net/ipv4/ip_local_port_range'
    subprocess.run(["nsenter", f"--net={ns}", "--", "sh", "-c", narrow], check=True)
    for _ in range(40):
        assert not provider.port_ready(sb, port)
    record = provider.start_process(sb, SERVER.format(text="listening", port=port))
    assert wait_for(lambda: provider.port_ready(sb, port), 10), provider.read_log(sb, record, 20)
    assert get(provider.preview_url(sb, port)) == "listening"


def test_helpers_outlive_the_process_that_started_them(net: Net, tmp_path: Path) -> None:
    provider = net.provider()
    sb = net.sandbox(provider)
    port = provider.dev_port(sb, 3000)
    child = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from qai_jobs.providers.base import Sandbox
        from qai_jobs.providers.local import LocalProvider
        from tests.conformance.conftest import make_settings
        p = LocalProvider(make_settings(Path({str(tmp_path)!r}), workspace_local_isolation="bwrap"))
        sb = Sandbox.from_json(json.loads(sys.argv[1]))
        p.start_process(sb, {SERVER.format(text="detached", port=port)!r})
        """
    )
    subprocess.run(
        [sys.executable, "-c", child, json.dumps(sb.to_json())], cwd=REPO, check=True, timeout=60
    )
    assert wait_for(lambda: get(provider.preview_url(sb, port)) == "detached")
    assert all(helpers(sb).values())


def test_killed_helpers_and_a_lost_namespace_are_repaired(net: Net) -> None:
    provider = net.provider()
    sb = net.sandbox(provider)
    port = serve(provider, sb, "v1")
    url = provider.preview_url(sb, port)
    assert wait_for(lambda: get(url) == "v1")

    # A killed pasta takes the forward with it; the next look at the preview brings it back,
    # to the same dev server, which lives on in the namespace.
    pasta = helpers(sb)["pasta"]
    assert pasta is not None
    os.kill(pasta, signal.SIGKILL)
    assert wait_for(lambda: get(url) is None, 5)
    assert wait_for(lambda: provider.port_ready(sb, port)) and get(url) == "v1"
    assert helpers(sb)["pasta"] not in (None, pasta)

    # A host restart: every process gone, the namespace's mount with them (the file stays).
    dnsmasq = helpers(sb)["dnsmasq"]
    provider._stop_all(provider._layout(sb))
    for pid in (helpers(sb)["pasta"], dnsmasq):
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    ns = Path(sb.state["dir"]) / "net" / "ns"
    subprocess.run(["umount", "--lazy", str(ns)], check=True)
    assert ns.exists()
    result = provider.run(sb, ["bash", "-c", "getent hosts registry.npmjs.org >/dev/null"])
    assert result.exit_code == 0, result.stderr
    assert not probe(provider, sb, ["127.0.0.1:5432"])["127.0.0.1:5432"]  # rules came back
    serve(provider, sb, "v2")
    assert wait_for(lambda: get(url) == "v2")


def test_the_worker_refuses_to_start_when_it_cannot_isolate(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """Without the right to make namespaces (here: root without CAP_SYS_ADMIN and
    CAP_NET_ADMIN) a worker set to isolate says why in one line and exits with the
    configuration code; told to run without isolation, it starts."""
    env = {**isolated_env, "WORKSPACE_RUNTIME": "local", "WORKSPACE_ROOT": str(tmp_path)}
    unprivileged = ["setpriv", "--bounding-set=-sys_admin,-net_admin", "--", *QAI, "worker"]
    proc = subprocess.run(
        unprivileged,
        env={**env, "WORKSPACE_LOCAL_ISOLATION": "bwrap"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "network namespace" in lines[0], lines
    assert "WORKSPACE_LOCAL_ISOLATION=none" in lines[0]

    opted_out = Proc(
        [*unprivileged, "--concurrency=1"],
        {**env, "WORKSPACE_LOCAL_ISOLATION": "none"},
        tmp_path / "worker.log",
        cwd=tmp_path,
    )
    try:
        opted_out.wait_for_log(" ready.", timeout=60)
    finally:
        opted_out.stop()


# --- through the pipeline ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lc(isolated_env: dict[str, str], log_dir: Path) -> Iterator[WorkspaceClient]:
    env = {**isolated_env, "WORKSPACE_RUNTIME": "local", "WORKSPACE_LOCAL_ISOLATION": "bwrap"}
    worker = start_worker(env, log_dir, concurrency=2, name="containment")
    client = WorkspaceClient(settings_for(env))
    yield client
    client.engine.dispose()
    worker.stop()


def test_policy_changes_apply_in_order_through_the_pipeline(lc: WorkspaceClient) -> None:
    project = f"net-{uuid.uuid4().hex[:8]}"
    hello = {p.name: p.read_text() for p in (REPO / "examples" / "hello").iterdir()}
    with pytest.raises(ValidationFailed) as refused:
        lc.ensure(project, files=hello, network={"egress": ["registry..npmjs.org"]})
    assert refused.value.field == "network.egress" and lc.list_actions(project) == []

    first = lc.ensure(project, files=hello, network={"egress": "none"}).wait(WAIT)
    assert get(first["preview_url"]) is not None  # nothing goes out, the preview comes in
    reach = f"getent hosts {REGISTRY} >/dev/null && echo reached-registry; "
    pypi = "getent hosts pypi.org >/dev/null && echo reached-pypi; true"
    # Enqueued back to back: each command runs under the policy of the ensure before it.
    handles = [
        lc.command(project, reach + pypi),
        lc.ensure(project, files=hello, network={"egress": "internet"}),
        lc.command(project, reach + pypi),
        lc.ensure(project, files=hello, network={"egress": ["pypi.org"]}),
        lc.command(project, reach + pypi),
        lc.ensure(project, files=hello),  # no network field: the policy stays
        lc.command(project, reach + pypi),
    ]
    out = [handle.wait(WAIT).get("stdout", "") for handle in handles]
    assert out[0] == "" and out[2] == "reached-registry\nreached-pypi\n"
    assert out[4] == "reached-pypi\n" and out[6] == "reached-pypi\n"

    package = json.dumps({"name": "t", "version": "1.0.0", "dependencies": {"is-number": "7"}})
    with pytest.raises(ActionFailed) as failed:
        lc.ensure(
            project,
            files={**hello, "package.json": package},
            install_command="npm install --fetch-retries=0",
            network={"egress": "none"},
        ).wait(WAIT)
    assert failed.value.error["code"] == "install_failed"
    assert "ENOTFOUND" in failed.value.error["message"]
    lc.destroy(project).wait(WAIT)
