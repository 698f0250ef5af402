"""An egress policy as the local sandbox's namespace enforces it: an nftables ruleset, and the
configuration of the dnsmasq that is the namespace's only resolver.

The ruleset filters what leaves the namespace (its output hook): sandboxed code has no
CAP_NET_ADMIN, so it can neither change the rules nor route around them. Three address groups:

- ``never``: blocked under every policy, allow-lists included: loopback, link-local (the cloud
  metadata address), IPv4-mapped IPv6, and this host's own addresses and directly connected
  subnets (the user-mode stack would otherwise connect to them from the host's side);
- ``private``: what ``internet`` leaves out besides: RFC 1918, CGNAT, unique-local, multicast,
  reserved and NAT64 ranges. Listed here explicitly, because Python's ``is_private`` also
  calls documentation ranges private, and on some hosts the package registries live there;
- an allow-list's CIDRs (explicit, so they may open a private range) and the addresses dnsmasq
  learns while answering for an allowed domain (public ones only: a name must not open the LAN).

A rejected packet is answered at once (host unreachable), so a forbidden connect fails fast
instead of hanging until the client's timeout.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Sequence

from qai_jobs.egress import INTERNET, NONE, Egress, Network, allow_list

TABLE = "qai"
# Where the namespace's dnsmasq sends its queries: pasta answers this address itself and
# relays to the host's resolver (--dns-forward). Link-local, so it is in ``never`` for
# everything but dnsmasq's own user.
DNS_FORWARD = "169.254.1.53"

_nets = ipaddress.ip_network
NEVER: tuple[Network, ...] = (
    _nets("0.0.0.0/8"),
    _nets("127.0.0.0/8"),
    _nets("169.254.0.0/16"),
    _nets("::/127"),  # unspecified and loopback
    _nets("::ffff:0:0/96"),
    _nets("fe80::/10"),
)
PRIVATE: tuple[Network, ...] = (
    _nets("10.0.0.0/8"),
    _nets("100.64.0.0/10"),
    _nets("172.16.0.0/12"),
    _nets("192.0.0.0/24"),
    _nets("192.168.0.0/16"),
    _nets("198.18.0.0/15"),
    _nets("224.0.0.0/4"),
    _nets("240.0.0.0/4"),
    _nets("64:ff9b::/96"),
    _nets("64:ff9b:1::/48"),
    _nets("100::/64"),
    _nets("fc00::/7"),
    _nets("fec0::/10"),
    _nets("ff00::/8"),
)
REJECT = "reject with icmpx type host-unreachable"


def host_networks() -> list[Network]:
    """Every address of this host and the subnet it is on (``ip -j addr``, all interfaces)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, check=True, timeout=10
        ).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise RuntimeError(f"cannot list this host's addresses: {exc}") from None
    found: list[Network] = []
    for link in links:
        for addr in link.get("addr_info", []):
            local, prefix = addr.get("local"), addr.get("prefixlen")
            if local is None or prefix is None:
                continue
            found.append(_nets(f"{local}/{prefix}", strict=False))
    return found


def _elements(nets: Iterable[Network], version: int) -> str:
    chosen = [n for n in nets if n.version == version]
    merged = ipaddress.collapse_addresses(chosen)  # type: ignore[type-var]
    return ", ".join(str(n) for n in merged)


def _set(name: str, version: int, nets: Iterable[Network] = (), *, interval: bool = True) -> str:
    kind = "ipv4_addr" if version == 4 else "ipv6_addr"
    flags = " flags interval;" if interval else ""
    elements = _elements(nets, version)
    body = f" elements = {{ {elements} }};" if elements else ""
    return f"  set {name}{version} {{ type {kind};{flags}{body} }}"


def ruleset(egress: Egress, host: Sequence[Network], dns_uid: int) -> str:
    """The whole table, replaced in one transaction (the add-then-delete idiom makes the delete
    valid when the table does not exist yet)."""
    allowed = allow_list(egress)
    cidrs = allowed.networks if allowed else ()
    never = (*NEVER, *host)
    lines = [f"add table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for version in (4, 6):
        lines.append(_set("never", version, never))
        lines.append(_set("private", version, PRIVATE))
        lines.append(_set("allow", version, cidrs))
        lines.append(_set("dns", version, interval=False))  # filled by dnsmasq
    lines += [
        "  chain output {",
        "    type filter hook output priority filter; policy drop;",
        '    oif "lo" accept',
        # Answers on connections that came in: the preview forward. Nothing else comes in.
        "    ct direction reply accept",
        # The user-mode stack must resolve the namespace's neighbours (it answers them itself).
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
        # UDP only: pasta relays UDP to this address to the host's resolver; a TCP connect to
        # it would leave for the link-local address itself.
        f"    ip daddr {DNS_FORWARD} udp dport 53 meta skuid {dns_uid} accept",
        f"    ip daddr @never4 {REJECT}",
        f"    ip6 daddr @never6 {REJECT}",
    ]
    if egress == INTERNET:
        lines += [
            f"    ip daddr @private4 {REJECT}",
            f"    ip6 daddr @private6 {REJECT}",
            "    accept",
        ]
    elif egress != NONE:
        lines += [
            "    ip daddr @allow4 accept",
            "    ip6 daddr @allow6 accept",
            f"    ip daddr @private4 {REJECT}",
            f"    ip6 daddr @private6 {REJECT}",
            "    ip daddr @dns4 accept",
            "    ip6 daddr @dns6 accept",
        ]
    lines += [f"    {REJECT}", "  }", "}"]
    return "\n".join(lines) + "\n"


def dnsmasq_conf(egress: Egress, *, pid_file: str, log_file: str, user: str, group: str) -> str:
    """The resolver on the namespace's loopback: everything (``internet``), nothing (``none``:
    every name is NXDOMAIN, so an install fails saying which host it could not find), or the
    allowed domains only, each answer's addresses added to the ``dns`` sets before the answer
    is sent, so the connect that follows finds them."""
    lines = [
        "port=53",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "cache-size=1000",
        f"user={user}",
        f"group={group}",
        f"pid-file={pid_file}",
        f"log-facility={log_file}",
    ]
    if egress == INTERNET:
        return "\n".join([*lines, f"server={DNS_FORWARD}"]) + "\n"
    allowed = allow_list(egress)
    sets = f"4#inet#{TABLE}#dns4,6#inet#{TABLE}#dns6"
    for domain in allowed.domains if allowed else ():
        lines.append(f"server=/{domain}/{DNS_FORWARD}")
        lines.append(f"nftset=/{domain}/{sets}")
    lines.append("address=/#/")  # any name no server line claims: NXDOMAIN
    return "\n".join(lines) + "\n"
