"""Egress policies: what sandboxed code may reach on the network.

A policy is ``"internet"`` (the public internet, never the host or any private, link-local or
metadata address), ``"none"`` (nothing outbound), or an allow-list of domains and CIDRs. One
parser serves the ``ensure`` payload's ``network.egress`` and ``WORKSPACE_EGRESS``, so both
refuse the same inputs with the same words before anything is enqueued or started. Policies
travel as JSON: the two keywords as strings, an allow-list as its normalised entries.

A domain admits itself and every name under it (``example.com`` admits ``www.example.com``:
both belong to whoever holds the domain); ``*.example.com`` admits only the names under it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

INTERNET = "internet"
NONE = "none"
MAX_ENTRIES = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Egress = str | list[str]  # INTERNET, NONE, or the allow-list's entries

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?:\*\.)?(?:{_LABEL}\.)+{_LABEL}$")
_IPISH = re.compile(r"^[0-9.]+(?:/[0-9]+)?$|:")


@dataclass(frozen=True)
class AllowList:
    domains: tuple[str, ...]
    networks: tuple[Network, ...]


def parse_egress(value: object) -> Egress:
    """The normalised policy; ValueError naming the first entry that is neither a domain nor a
    CIDR. A string other than the two keywords is read as a comma list."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in (INTERNET, NONE):
            return word
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be {INTERNET!r}, {NONE!r} or a list of domains and CIDRs")
    if not value:
        raise ValueError(f"an allow-list needs at least one domain or CIDR (or use {NONE!r})")
    if len(value) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries")
    entries: list[str] = []
    for raw in value:
        entry = _entry(raw)
        if entry not in entries:
            entries.append(entry)
    return entries


def _entry(raw: str) -> str:
    text = raw.strip().lower()
    shown = repr(raw[:80])
    if text in (INTERNET, NONE):
        raise ValueError(f"{shown} cannot be combined with other entries")
    if _IPISH.search(text):
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"{shown} is not a valid CIDR: {exc}") from None
    name = text.removesuffix(".")
    if len(name) > 253 or not _DOMAIN.match(name) or name.rsplit(".", 1)[-1].isdigit():
        raise ValueError(
            f"{shown} is neither a domain (a.example.com, *.example.com) nor a CIDR (10.0.0.0/8)"
        )
    return name


def allow_list(egress: Egress) -> AllowList | None:
    """The allow-list of a normalised policy, split by kind; None for the two keywords."""
    if isinstance(egress, str):
        return None
    domains = tuple(e for e in egress if not _IPISH.search(e))
    networks = tuple(ipaddress.ip_network(e) for e in egress if _IPISH.search(e))
    return AllowList(domains, networks)
