"""The network namespace of one local sandbox, and the two helpers that serve it.

Every command and the dev server of a workspace run in one persistent network namespace, so a
command reaches its own dev server on localhost while nothing of the host's loopback (Postgres,
Redis, the API, other workspaces' servers) exists in there. Under ``<sandbox>/net/``:

- ``ns``: the namespace, kept alive by a bind mount of its nsfs file (``unshare --net=FILE``),
  under the sandbox's own directory rather than /run/netns, so several installations on one
  machine never share a name. Processes enter it with ``nsenter --net=FILE`` before bwrap;
- pasta (Debian ``passt``): the user-mode stack. Outbound traffic leaves through the host's
  own sockets, with no route into the host: ``--no-map-gw`` keeps the gateway address from
  meaning the host's loopback, and ``-T none -U none`` forwards no namespace port to the host.
  Inbound, exactly one port: WORKSPACE_HOST_ADDRESS:<port> on the host to the dev server's
  <port> inside, so no workspace can answer on another's preview port;
- dnsmasq (Debian ``dnsmasq-base``): the namespace's resolver on 127.0.0.1, the only process
  the rules let talk to pasta's DNS forwarder;
- nftables rules inside (egress.py), loaded before any sandboxed process can exist.

Both helpers daemonize, so they outlive the worker like dev servers do; ``up`` notices when a
worker or host restart took any part away and rebuilds it, ``down`` (sleep, destroy) removes it
all. Helpers are found by pid file and recognised by their command line, never by name alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import grp
import http.client
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from qai_jobs.config import Settings
from qai_jobs.egress import INTERNET, Egress, Network
from qai_jobs.errors import ErrorCode, PermanentError, TransientError
from qai_jobs.proctab import START, STATE, stat_fields
from qai_jobs.providers.local import egress as egress_rules
from qai_jobs.providers.local.jail import SAFE_PATH

TOOLS = ("unshare", "nsenter", "pasta", "nft", "dnsmasq", "ip")
PACKAGES = {"pasta": "passt", "nft": "nftables", "dnsmasq": "dnsmasq-base", "ip": "iproute2"}
DNS_USER = "nobody"
_HELPER_ENV = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
_MNT_DETACH = 2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetConfig:
    """What one namespace is built from: the forwarded port and the policy (egress.py)."""

    port: int
    host_address: str
    egress: Egress


class SandboxNet:
    def __init__(self, base: Path) -> None:
        self.dir = base / "net"
        self.ns = self.dir / "ns"
        self.resolv = self.dir / "resolv.conf"
        self.dns_conf = self.dir / "dnsmasq.conf"
        self._pasta_pid = self.dir / "pasta.pid"
        self._dns_pid = self.dir / "dnsmasq.pid"

    # -- state -------------------------------------------------------------------------------
    def mounted(self) -> bool:
        """Whether ``ns`` still holds a namespace: a host restart leaves a plain empty file."""
        try:
            return os.stat(self.ns).st_dev != os.stat(self.dir).st_dev
        except OSError:
            return False

    def _pasta(self) -> int | None:
        return _helper(self._pasta_pid, str(self.ns))

    def _dnsmasq(self) -> int | None:
        return _helper(self._dns_pid, str(self.dns_conf))

    def healthy(self) -> bool:
        return self.mounted() and self._pasta() is not None and self._dnsmasq() is not None

    # -- lifecycle ---------------------------------------------------------------------------
    def up(self, cfg: NetConfig) -> bool:
        """Make the namespace and both helpers run; True when the namespace had to be made
        anew (processes still running in a lost one can no longer be reached: stop them)."""
        if self.healthy():
            return False
        with self._locked():
            if self.healthy():
                return False
            made = not self.mounted()
            if made:
                self._stop_helpers()
                self._unmount()
                self.ns.touch(mode=0o600)
                _run(["unshare", f"--net={self.ns}", "true"], "create the network namespace")
            # pasta takes longest to start: it starts first, and the rest happens meanwhile
            # (nothing sandboxed can run in the namespace before ``up`` returns).
            pasta = self._launch_pasta(cfg) if self._pasta() is None else None
            try:
                if made:
                    self._reserve_port(cfg.port)
                    self._load_rules(cfg.egress)
                self.resolv.write_text("nameserver 127.0.0.1\noptions edns0\n")
                if self._dnsmasq() is None:
                    self._start_dnsmasq(cfg.egress)
            finally:
                if pasta is not None:
                    _finish(pasta, f"start pasta for port {cfg.port}")
            if pasta is not None:
                _started(self._pasta, "pasta")
            return made

    def apply(self, egress: Egress) -> None:
        """Change the policy of a live namespace: the rules first, in one transaction, then a
        resolver that answers by the new policy. A namespace that is down gets it at ``up``."""
        with self._locked():
            if not self.mounted():
                return
            self._load_rules(egress)
            self._stop(self._dnsmasq(), wait=True)  # it holds the resolver's port
            self._start_dnsmasq(egress)

    def down(self) -> None:
        """Stop both helpers and release the namespace (it ends with its last process)."""
        if not self.dir.is_dir():
            return
        with self._locked():
            self._stop_helpers()
            self._unmount()
            with contextlib.suppress(FileNotFoundError):
                self.ns.unlink()

    # -- parts -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _enter(self) -> list[str]:
        return ["nsenter", f"--net={self.ns}", "--"]

    def _load_rules(self, egress: Egress) -> None:
        rules = egress_rules.ruleset(egress, _host_networks(), pwd.getpwnam(DNS_USER).pw_uid)
        _run([*self._enter(), "nft", "-f", "-"], "load the egress rules", stdin=rules)

    def _reserve_port(self, port: int) -> None:
        """Keep the dev server's port out of the namespace's automatic source ports.

        A new namespace hands out connect()'s source ports from Linux's default 32768-60999,
        which holds the preview ports (41000-41999 by default). While nothing listens on the
        port, a connect to it (pasta splicing a readiness probe or a visitor in from the host,
        a command's curl) can be given the port itself as its source: TCP then connects to
        itself, and the socket's TIME_WAIT holds the port for 60 s without SO_REUSEADDR, so
        the next dev server fails to listen (EADDRINUSE) though the previous one is long
        gone. A reserved port is never picked as a source port and can still be bound.
        """
        script = 'echo "$1" > /proc/sys/net/ipv4/ip_local_reserved_ports'
        try:
            _run([*self._enter(), "sh", "-c", script, "sh", str(port)], "reserve the port")
        except TransientError as exc:
            # Not worth refusing the sandbox for (a read-only /proc/sys in a container):
            # without it the rare collision above is possible again, nothing else changes.
            log.warning("%s: a dev server may find port %d in use for a minute", exc, port)

    def _launch_pasta(self, cfg: NetConfig) -> subprocess.Popen[bytes]:
        self._pasta_pid.unlink(missing_ok=True)
        _wait_port_free(cfg.host_address, cfg.port)  # a pasta just killed may still hold it
        forward = f"{cfg.host_address}/{cfg.port}:{cfg.port}"
        return _launch(
            [
                "pasta", "--quiet", "--runas", "0", "--pid", str(self._pasta_pid),
                "--netns", str(self.ns), "--config-net", "--no-map-gw",
                "--dns-forward", egress_rules.DNS_FORWARD,
                "-t", forward, "-u", "none", "-T", "none", "-U", "none",
            ],
            f"start pasta for port {cfg.port}",
        )  # fmt: skip

    def _start_dnsmasq(self, egress: Egress) -> None:
        self._dns_pid.unlink(missing_ok=True)
        group = grp.getgrgid(pwd.getpwnam(DNS_USER).pw_gid).gr_name
        conf = egress_rules.dnsmasq_conf(
            egress,
            pid_file=str(self._dns_pid),
            log_file=str(self.dir / "dnsmasq.log"),
            user=DNS_USER,
            group=group,
        )
        self.dns_conf.write_text(conf)
        _run([*self._enter(), "dnsmasq", f"--conf-file={self.dns_conf}"], "start dnsmasq")
        _started(self._dnsmasq, "dnsmasq")

    def _stop_helpers(self) -> None:
        # Neither keeps state worth a clean exit. pasta's exit takes tens of milliseconds (its
        # tap device is unregistered): not waited for here, but before its port is bound again.
        self._stop(self._dnsmasq(), wait=False)
        self._stop(self._pasta(), wait=False)

    @staticmethod
    def _stop(pid: int | None, *, wait: bool, grace: float = 2.0) -> None:
        if pid is None:
            return
        started = stat_fields(pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while wait and started is not None and time.monotonic() < deadline:
            now = stat_fields(pid)
            if now is None or now[STATE] in ("Z", "X") or now[START] != started[START]:
                return  # exited (or gone, and the pid already reused)
            time.sleep(0.002)

    def _unmount(self) -> None:
        if self.mounted():
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.umount2(str(self.ns).encode(), _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                raise TransientError(f"cannot release the network namespace: {os.strerror(err)}")


def _helper(pid_file: Path, marker: str) -> int | None:
    """The helper's pid if it still runs and its command line names ``marker``: a pid file
    outlives its process, and the pid may have been reused."""
    try:
        pid = int(pid_file.read_text().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except (OSError, ValueError, IndexError):
        return None
    fields = stat_fields(pid)
    if fields is None or fields[STATE] in ("Z", "X") or marker.encode() not in cmdline:
        return None
    return pid


def _started(find: Callable[[], int | None], name: str, timeout: float = 2.0) -> None:
    """Wait for a daemonized helper's pid file to name it: its launcher may exit first."""
    deadline = time.monotonic() + timeout
    while find() is None:
        if time.monotonic() > deadline:
            raise TransientError(f"{name} started but does not run")
        time.sleep(0.005)


def _wait_port_free(address: str, port: int, timeout: float = 3.0) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
                return
            except OSError:
                pass
        time.sleep(0.005)
    # Still taken: pasta says by whom it cannot bind, and the action is retried.


def _launch(argv: Sequence[str], what: str, *, stdin: bool = False) -> subprocess.Popen[bytes]:
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_HELPER_ENV,
            start_new_session=True,  # helpers must not get the worker's Ctrl-C
        )
    except OSError as exc:
        raise TransientError(f"cannot {what}: {exc}") from None
    return proc


def _run(argv: Sequence[str], what: str, stdin: str | None = None) -> None:
    _finish(_launch(argv, what, stdin=stdin is not None), what, stdin)


def _finish(proc: subprocess.Popen[bytes], what: str, stdin: str | None = None) -> None:
    """Wait for a launched helper command (a daemon's launcher exits once it is set up)."""
    try:
        _, err = proc.communicate(stdin.encode() if stdin is not None else None, timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TransientError(f"cannot {what}: no answer in 30 s") from None
    if proc.returncode != 0:
        # pasta repeats each line as a complaint about the missing syslog: keep the message.
        lines = [
            line
            for line in err.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("Failed to send")
        ]
        detail = "; ".join(lines)[-500:] or f"exit code {proc.returncode}"
        raise TransientError(f"cannot {what}: {detail}")


def _host_networks() -> list[Network]:
    try:
        return egress_rules.host_networks()
    except RuntimeError as exc:
        raise TransientError(str(exc)) from None


@functools.cache
def unsupported() -> str | None:
    """Why this host cannot give sandboxes a network namespace, or None: the tools must be
    installed and a namespace must really be creatable (root, or CAP_SYS_ADMIN+CAP_NET_ADMIN)."""
    missing = [tool for tool in TOOLS if shutil.which(tool, path=SAFE_PATH) is None]
    if missing:
        names = ", ".join(PACKAGES.get(tool, "util-linux") for tool in missing)
        return f"{', '.join(missing)} not installed (Debian: {names})"
    try:
        pwd.getpwnam(DNS_USER)
    except KeyError:
        return f"no user {DNS_USER!r} for the sandboxes' resolver to run as"
    try:
        _run(["unshare", "--net", "true"], "create a network namespace")
    except TransientError as exc:
        return f"{exc} (needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    return None


# -- what the local provider asks of this module ------------------------------------------------
def refusal(settings: Settings) -> str | None:
    """The one line with which the local provider refuses to start: bwrap isolation was asked
    for (or is the default) but the sandboxes could not get a network of their own."""
    if settings.isolation != "bwrap":
        return None
    why = unsupported()
    if why is None:
        return None
    return (
        f"local sandboxes cannot get a network namespace: {why}; "
        "install them, or set WORKSPACE_LOCAL_ISOLATION=none to run without isolation"
    )


def check_egress(settings: Settings, egress: Egress | None) -> Egress:
    """The policy a sandbox gets (the configured default for None); without isolation nothing
    is filtered, so only ``internet`` can be honoured there."""
    chosen = settings.workspace_egress if egress is None else egress
    if settings.isolation != "bwrap" and chosen != INTERNET:
        raise PermanentError(
            "egress policies other than 'internet' need WORKSPACE_LOCAL_ISOLATION=bwrap",
            code=ErrorCode.UNSUPPORTED_NETWORK_POLICY,
        )
    return chosen


def net_config(settings: Settings, meta: dict[str, object]) -> NetConfig:
    egress = meta.get("egress")
    chosen = egress if isinstance(egress, str | list) else settings.workspace_egress
    return NetConfig(int(str(meta["port"])), settings.workspace_host_address, chosen)


def preview_host(settings: Settings) -> str:
    address = settings.workspace_host_address
    return f"[{address}]" if ":" in address else address


def answers_http(host: str, port: int) -> bool:
    """Whether something answers HTTP at host:port (any status counts)."""
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return True
