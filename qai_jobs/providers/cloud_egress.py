"""Egress policies (qai_jobs.egress) in the terms of the cloud SDKs, or a refusal.

A policy is mapped only where the SDK can express it exactly; otherwise the ensure fails with
``unsupported_network_policy`` before any sandbox is made or changed, never with a policy
wider or narrower than the one asked for.

- Modal (``Sandbox.create``): ``internet`` is its default open network; ``none`` is an
  outbound allow-list with nothing in it (``block_network=True`` would also close the tunnel
  the preview comes in by, which Modal refuses together with ports); an allow-list goes to
  ``outbound_cidr_allowlist`` and ``outbound_domain_allowlist``. Modal's ``*.example.com``
  matches the domain and every name under it, which is exactly what ``example.com`` means
  here; a ``*.example.com`` entry (the names under it only) has no Modal spelling.
- E2B (``Sandbox.create(network=...)``, ``update_network``): ``none`` denies all traffic; an
  allow-list denies all traffic but the listed CIDRs and hosts (``*.`` matches the names under
  a domain, so ``example.com`` is sent as itself and ``*.example.com``).
"""

from __future__ import annotations

from typing import Any

from qai_jobs.egress import INTERNET, NONE, Egress, allow_list
from qai_jobs.errors import ErrorCode, PermanentError

ALL_TRAFFIC = "0.0.0.0/0"  # e2b.ALL_TRAFFIC


def _unsupported(provider: str, why: str) -> PermanentError:
    return PermanentError(
        f"{provider} cannot express this network policy: {why}",
        code=ErrorCode.UNSUPPORTED_NETWORK_POLICY,
    )


def modal_network(egress: Egress) -> dict[str, Any]:
    """Keyword arguments for ``modal.Sandbox.create``."""
    if egress == INTERNET:
        return {}
    if egress == NONE:
        return {"outbound_cidr_allowlist": []}
    allowed = allow_list(egress)
    assert allowed is not None
    only_below = [d for d in allowed.domains if d.startswith("*.")]
    if only_below:
        raise _unsupported(
            "Modal",
            f"{only_below[0]!r} admits the names under the domain but not the domain itself, "
            f"and Modal's wildcard admits both: allow {only_below[0][2:]!r} instead",
        )
    kwargs: dict[str, Any] = {"outbound_cidr_allowlist": [str(n) for n in allowed.networks]}
    if allowed.domains:
        kwargs["outbound_domain_allowlist"] = [f"*.{d}" for d in allowed.domains]
    return kwargs


def e2b_network(egress: Egress) -> dict[str, Any] | None:
    """The ``network`` option of ``e2b.Sandbox.create`` (None: E2B's default, open), which is
    also what ``update_network`` takes (there ``{}`` clears every rule)."""
    if egress == INTERNET:
        return None
    if egress == NONE:
        return {"deny_out": [ALL_TRAFFIC]}
    allowed = allow_list(egress)
    assert allowed is not None
    hosts: list[str] = [str(n) for n in allowed.networks]
    for domain in allowed.domains:
        hosts += [domain] if domain.startswith("*.") else [domain, f"*.{domain}"]
    return {"deny_out": [ALL_TRAFFIC], "allow_out": hosts}
