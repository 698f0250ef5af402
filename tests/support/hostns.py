"""Test "hosts" in network namespaces of their own (``ip netns``), so each has its own address
as separate machines would: a veth pair to the root namespace per host, ``10.N.i.2`` inside and
``10.N.i.1`` outside, with a default route out through it (pasta, in each sandbox, needs one).

Postgres, Redis and the other services a worker talks to listen on 127.0.0.1 of the root
namespace, which a namespace's own loopback is not: each is forwarded by a TcpProxy listening
on the host's root-side address. Workers run under ``nsenter --net`` (not ``ip netns exec``,
whose private mount namespace would hide the sandboxes' mounts from the host's next worker).
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from tests.support.tcpproxy import TcpProxy


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class HostNamespace:
    name: str
    address: str  # this host's own address (WORKSPACE_HOST_ADDRESS)
    outside: str  # the root namespace's end of its veth pair
    proxies: list[TcpProxy] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}", "--"]

    def reach(self, url: str) -> str:
        """``url`` (a service on the root namespace's loopback) as this host reaches it."""
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port, url
        proxy = TcpProxy("127.0.0.1", parts.port, listen=self.outside)
        self.proxies.append(proxy)
        netloc = parts.netloc.rsplit("@", 1)
        netloc[-1] = f"{self.outside}:{proxy.port}"
        return urlunsplit(parts._replace(netloc="@".join(netloc)))


@contextlib.contextmanager
def host_namespaces(count: int) -> Iterator[list[HostNamespace]]:
    """``count`` namespaces, taken down again however the block ends."""
    tag = uuid.uuid4().hex[:6]
    net = random.randrange(100, 250)  # two runs at once on one machine rarely pick the same
    made: list[HostNamespace] = []
    try:
        for i in range(1, count + 1):
            ns = HostNamespace(f"qai-{tag}-{i}", f"10.{net}.{i}.2", f"10.{net}.{i}.1")
            outer, inner = f"qv{tag}{i}", f"qp{tag}{i}"
            _ip("netns", "add", ns.name)
            made.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns.name)
            _ip("addr", "add", f"{ns.outside}/24", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", inner)
            _ip("-n", ns.name, "link", "set", inner, "up")
            _ip("-n", ns.name, "link", "set", "lo", "up")
            _ip("-n", ns.name, "route", "add", "default", "via", ns.outside)
        yield made
    finally:
        for ns in made:
            for proxy in ns.proxies:
                proxy.close()
            # Deleting the namespace deletes its end of the pair, and so the pair.
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "delete", ns.name)
