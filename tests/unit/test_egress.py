"""Egress policies: parsing at the edge (payload and WORKSPACE_EGRESS) and what the local
provider compiles them into. The compiled rules are loaded into a real namespace by
tests/integration/test_containment_net.py; here: that each policy says what it must."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest

from qai_jobs.config import load_settings
from qai_jobs.egress import allow_list, parse_egress
from qai_jobs.errors import ConfigurationError, ValidationFailed
from qai_jobs.providers.local import egress as local_egress
from qai_jobs.validation import payload_to_json, validate_payload

HOST = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("192.0.2.2/32")]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("internet", "internet"),
        (" NONE ", "none"),
        ("Registry.NPMjs.org.,*.pypi.org", ["registry.npmjs.org", "*.pypi.org"]),
        (["1.2.3.4", "2001:db8::/32", "1.2.3.4/32"], ["1.2.3.4/32", "2001:db8::/32"]),
        (["10.0.0.0/8", "example.com"], ["10.0.0.0/8", "example.com"]),
    ],
)
def test_policies_are_normalised(given: object, expected: object) -> None:
    assert parse_egress(given) == expected


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (["a..b"], "neither a domain"),
        (["exa_mple.com"], "neither a domain"),
        (["*.com"], "neither a domain"),  # a wildcard over a whole top-level domain
        (["*"], "neither a domain"),
        (["localhost"], "neither a domain"),
        (["10.0.0.1/8"], "host bits set"),
        (["1.2.3"], "not a valid CIDR"),
        (["300.1.1.1"], "not a valid CIDR"),
        (["fe80::1/200"], "not a valid CIDR"),
        (["internet", "a.com"], "cannot be combined"),
        ([], "at least one"),
        ("", "at least one"),
        ([f"h{i}.example.com" for i in range(257)], "at most 256"),
        (5, "must be"),
        ([5], "must be"),
    ],
)
def test_bad_policies_are_refused_naming_the_entry(given: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_egress(given)


def test_allow_list_splits_domains_from_networks() -> None:
    allowed = allow_list(["a.com", "10.0.0.0/8", "*.b.org", "::1/128"])
    assert allowed is not None
    assert allowed.domains == ("a.com", "*.b.org")
    assert [str(n) for n in allowed.networks] == ["10.0.0.0/8", "::1/128"]
    assert allow_list("internet") is None and allow_list("none") is None


def test_the_payload_field_is_validated_before_enqueue_and_named() -> None:
    parsed = validate_payload("ensure", {"network": {"egress": ["X.com", "10.0.0.0/8"]}})
    assert payload_to_json(parsed) == {"network": {"egress": ["x.com", "10.0.0.0/8"]}}
    assert payload_to_json(validate_payload("ensure", {"network": {"egress": "none"}})) == {
        "network": {"egress": "none"}
    }
    for bad, field in [
        ({"egress": ["a..b"]}, "network.egress"),
        ({"egress": "example.com"}, "network.egress"),  # a list is a list, not a string
        ({}, "network.egress"),
        ({"egress": "none", "other": 1}, "network.other"),
    ]:
        with pytest.raises(ValidationFailed) as info:
            validate_payload("ensure", {"network": bad})
        assert info.value.field == field
        assert info.value.message.startswith(field)


def test_workspace_egress_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKSPACE_EGRESS", "registry.npmjs.org, 203.0.113.0/24")
    assert load_settings().workspace_egress == ["registry.npmjs.org", "203.0.113.0/24"]
    monkeypatch.setenv("WORKSPACE_EGRESS", "registry.npmjs.org,10.0.0.1/8")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert info.value.message.startswith("WORKSPACE_EGRESS: '10.0.0.1/8'")
    assert "\n" not in info.value.message
    monkeypatch.delenv("WORKSPACE_EGRESS")
    assert load_settings().workspace_egress == "internet"
    monkeypatch.setenv("WORKSPACE_HOST_ADDRESS", "my-host")
    with pytest.raises(ConfigurationError, match="WORKSPACE_HOST_ADDRESS"):
        load_settings()


def _chain(rules: str) -> list[str]:
    body = rules[rules.index("chain output") :]
    return [line.strip() for line in body.splitlines()[1:] if line.strip() not in ("}", "")]


def _set(rules: str, name: str) -> set[str]:
    found = re.search(rf"set {name} {{[^}}]*?elements = {{ ([^}}]*) }}", rules)
    return set(found.group(1).split(", ")) if found else set()


def test_every_policy_blocks_loopback_link_local_and_the_host_first() -> None:
    for egress in ("internet", "none", ["example.com", "0.0.0.0/0"]):
        rules = local_egress.ruleset(egress, HOST, 65534)
        chain = _chain(rules)
        assert chain[0] == "type filter hook output priority filter; policy drop;"
        never4, never6 = _set(rules, "never4"), _set(rules, "never6")
        assert {"127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "192.0.2.0/24"} <= never4
        assert {"fe80::/10", "::ffff:0:0/96", "::/127"} <= never6
        first_policy = min(i for i, line in enumerate(chain) if "@never" in line)
        # Nothing but loopback, answers to the preview, neighbour discovery and the resolver's
        # own queries comes before the host is refused, whatever the policy allows later.
        assert chain[1:first_policy] == [
            'oif "lo" accept',
            "ct direction reply accept",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
            f"ip daddr {local_egress.DNS_FORWARD} udp dport 53 meta skuid 65534 accept",
        ]
        assert chain[-1] == local_egress.REJECT


def test_internet_leaves_out_private_ranges_but_not_documentation_ones() -> None:
    rules = local_egress.ruleset("internet", HOST, 65534)
    private = _set(rules, "private4") | _set(rules, "private6")
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"):
        assert net in private
    assert "224.0.0.0/3" in private  # multicast and reserved, merged
    # The registries of some hosts (this one's) live in TEST-NET-3: public, as far as we know.
    assert not any(ipaddress.ip_address("203.0.113.80") in ipaddress.ip_network(n) for n in private)
    assert _chain(rules)[-4:] == [
        f"ip daddr @private4 {local_egress.REJECT}",
        f"ip6 daddr @private6 {local_egress.REJECT}",
        "accept",
        local_egress.REJECT,
    ]


def test_none_accepts_nothing_after_the_host_rules() -> None:
    chain = _chain(local_egress.ruleset("none", HOST, 65534))
    assert not any(line.endswith("accept") for line in chain[5:])
    assert chain[-3:] == [
        f"ip daddr @never4 {local_egress.REJECT}",
        f"ip6 daddr @never6 {local_egress.REJECT}",
        local_egress.REJECT,
    ]


def test_an_allow_list_opens_its_cidrs_and_public_answers_of_its_domains() -> None:
    rules = local_egress.ruleset(["example.com", "10.1.0.0/16", "2001:db8::/48"], HOST, 7)
    assert _set(rules, "allow4") == {"10.1.0.0/16"} and _set(rules, "allow6") == {"2001:db8::/48"}
    chain = _chain(rules)
    order = [line.split()[2] for line in chain if "daddr @" in line and "never" not in line]
    # CIDRs are explicit and may open a private range; a name's answer may not.
    assert order == ["@allow4", "@allow6", "@private4", "@private6", "@dns4", "@dns6"]


def test_dnsmasq_answers_by_the_policy() -> None:
    common = {"pid_file": "/p", "log_file": "/l", "user": "nobody", "group": "nogroup"}
    internet = local_egress.dnsmasq_conf("internet", **common).splitlines()
    assert f"server={local_egress.DNS_FORWARD}" in internet
    assert not any(line.startswith("address=") for line in internet)
    assert "listen-address=127.0.0.1" in internet and "no-resolv" in internet
    none = local_egress.dnsmasq_conf("none", **common).splitlines()
    assert not any(line.startswith("server=") for line in none) and none[-1] == "address=/#/"
    listed = local_egress.dnsmasq_conf(["a.example.com", "*.b.org", "10.0.0.0/8"], **common)
    lines = listed.splitlines()
    assert f"server=/a.example.com/{local_egress.DNS_FORWARD}" in lines
    assert f"server=/*.b.org/{local_egress.DNS_FORWARD}" in lines
    assert "nftset=/a.example.com/4#inet#qai#dns4,6#inet#qai#dns6" in lines
    assert not any("10.0.0.0" in line for line in lines) and lines[-1] == "address=/#/"


def test_host_networks_include_the_hosts_own_addresses() -> None:
    nets = local_egress.host_networks()
    assert ipaddress.ip_network("127.0.0.0/8") in nets
    # The source address the kernel picks towards the internet (a UDP connect sends nothing).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return  # no default route: loopback is all there is
        own = ipaddress.ip_address(probe.getsockname()[0])
    assert any(own in net and net.prefixlen < 32 for net in nets)  # its subnet, not just it
