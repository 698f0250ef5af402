"""Egress policies onto Modal and E2B, through a real worker over the SDK fakes.

Each ``network`` policy an ensure names (and ``WORKSPACE_EGRESS`` when it names none) must reach
the SDK as that provider's own controls, and nothing else: Modal's ``block_network`` /
``outbound_cidr_allowlist`` / ``outbound_domain_allowlist`` at create (its network is fixed
for a sandbox's life), E2B's ``network`` ``allow_out`` / ``deny_out`` at create and
``update_network`` later. The fakes bind every call to the real SDK's signature and journal
what it received; this test reads that journal. A policy a provider cannot express fails the
ensure with ``unsupported_network_policy`` before any sandbox is made or changed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from qai_jobs.client import ActionHandle
from qai_jobs.errors import ActionFailed
from tests.integration.cloud_support import Cloud, cloud

__all__ = ["cloud"]  # the fixture

WAIT = 90
ALL = "0.0.0.0/0"
DOMAINS = ["registry.npmjs.org", "example.com"]
CIDRS = ["10.20.0.0/16", "203.0.113.7/32"]
MIXED = ["example.com", "10.20.0.0/16"]
BELOW_ONLY = ["*.example.com"]  # the names under example.com, not example.com itself

# What Modal's Sandbox.create received, per policy (None: the SDK's default, open).
MODAL: dict[str, Any] = {
    "internet": (False, None, None),
    "none": (False, [], None),
    "domains": (False, [], ["*.registry.npmjs.org", "*.example.com"]),
    "cidrs": (False, CIDRS, None),
    "mixed": (False, ["10.20.0.0/16"], ["*.example.com"]),
    "below_only": "unsupported",
}
# ...and E2B's: the create's ``network`` option (None: not sent, E2B's open default).
E2B: dict[str, Any] = {
    "internet": None,
    "none": {"deny_out": [ALL]},
    "domains": {
        "deny_out": [ALL],
        "allow_out": ["registry.npmjs.org", "*.registry.npmjs.org", "example.com", "*.example.com"],
    },
    "cidrs": {"deny_out": [ALL], "allow_out": CIDRS},
    "mixed": {"deny_out": [ALL], "allow_out": ["10.20.0.0/16", "example.com", "*.example.com"]},
    "below_only": {"deny_out": [ALL], "allow_out": ["*.example.com"]},
}
POLICIES: dict[str, Any] = {
    "internet": "internet",
    "none": "none",
    "domains": DOMAINS,
    "cidrs": CIDRS,
    "mixed": MIXED,
    "below_only": BELOW_ONLY,
}


def _project() -> str:
    return f"eg-{uuid.uuid4().hex[:10]}"


def _received(cloud: Cloud, create: dict[str, Any]) -> Any:
    if cloud.provider == "modal":
        # Nothing else of the network surface is ever sent (no inbound rules, no old name).
        assert create["inbound_cidr_allowlist"] is None and create["cidr_allowlist"] is None
        return (
            create["block_network"],
            create["outbound_cidr_allowlist"],
            create["outbound_domain_allowlist"],
        )
    assert create["allow_internet_access"] is None  # `network` says it all
    return create["network"]


@pytest.mark.parametrize("policy", [*sorted(POLICIES), "default"])
def test_each_policy_reaches_the_sdk_as_the_providers_own_controls(
    cloud: Cloud, policy: str
) -> None:
    expected = (MODAL if cloud.provider == "modal" else E2B)[
        "none" if policy == "default" else policy
    ]
    project = _project()
    network = {} if policy == "default" else {"network": {"egress": POLICIES[policy]}}
    since = cloud.mark()
    handle = cloud.client.ensure(project, start_dev_server=False, **network)
    if expected == "unsupported":
        with pytest.raises(ActionFailed) as failed:
            handle.wait(WAIT)
        assert failed.value.code == "unsupported_network_policy", failed.value
        assert "*.example.com" in str(failed.value)
        assert cloud.calls(since, "Sandbox.create") == []  # refused before anything was made
        return
    result = handle.wait(WAIT)
    try:
        creates = cloud.calls(since, "Sandbox.create")
        assert len(creates) == 1, creates
        assert _received(cloud, creates[0]) == expected
        assert not cloud.calls(since, "Sandbox.update_network")  # right at create, once
        made = cloud.calls(since, "Sandbox.created")
        assert [m["sandbox_id"] for m in made] == [result["sandbox_id"]]
        # The sandbox works under it (a command runs there).
        ran = cloud.client.command(project, cmd="echo ok").wait(WAIT)
        assert ran["stdout"].strip() == "ok"
    finally:
        cloud.client.destroy(project).wait(WAIT)


def test_a_later_ensure_changes_the_network_in_order(cloud: Cloud) -> None:
    project = _project()
    tag = uuid.uuid4().hex[:6]
    steps: list[tuple[str, Any]] = [
        ("internet", "internet"),
        ("cidrs", CIDRS),
        ("none", "none"),
        ("mixed", MIXED),
    ]
    since = cloud.mark()
    # Enqueued back to back: order, not waiting, must keep each command under its policy.
    handles: list[ActionHandle[Any]] = []
    for name, egress in steps:
        handles.append(
            cloud.client.ensure(project, start_dev_server=False, network={"egress": egress})
        )
        handles.append(cloud.client.command(project, cmd=f"echo {name}-{tag}"))
    results = [h.wait(WAIT) for h in handles]
    try:
        for (name, _), ran in zip(steps, results[1::2], strict=True):
            assert ran["stdout"].strip() == f"{name}-{tag}"
        calls = cloud.calls(since)
        # Where each step's command ran, and the policy that sandbox had when it did.
        for name, _ in steps:
            at = next(i for i, c in enumerate(calls) if f"{name}-{tag}" in json.dumps(c))
            box = calls[at]["sandbox_id"]
            assert _policy_at(cloud, calls[:at], box) == _expected(cloud, name), name
        if cloud.provider == "modal":
            # A new sandbox per change (from a snapshot), the old one terminated.
            created = [c["sandbox_id"] for c in calls if c["op"] == "Sandbox.created"]
            assert len(created) == len(steps)
            terminated = [c["sandbox_id"] for c in calls if c["op"] == "Sandbox.terminate"]
            assert set(created[:-1]) <= set(terminated)
        else:
            # One sandbox, its rules replaced in place, each change once.
            assert len(cloud.calls(since, "Sandbox.create")) == 1
            assert len(cloud.calls(since, "Sandbox.update_network")) == len(steps) - 1
        assert len({r["sandbox_id"] for r in results[0::2]}) == (
            len(steps) if cloud.provider == "modal" else 1
        )
    finally:
        cloud.client.destroy(project).wait(WAIT)


def test_a_change_the_provider_cannot_express_fails_before_the_sandbox_is_touched(
    cloud: Cloud,
) -> None:
    """Modal cannot say "the names under example.com but not example.com": the ensure fails
    and the workspace keeps its sandbox and policy. E2B can: the same change is applied."""
    project = _project()
    first = cloud.client.ensure(
        project, start_dev_server=False, network={"egress": "internet"}
    ).wait(WAIT)
    try:
        since = cloud.mark()
        change = cloud.client.ensure(
            project, start_dev_server=False, network={"egress": BELOW_ONLY}
        )
        touched = {
            "Sandbox.create",
            "Sandbox.snapshot_filesystem",
            "Sandbox.terminate",
            "Sandbox.update_network",
        }
        if cloud.provider == "e2b":
            assert change.wait(WAIT)["sandbox_id"] == first["sandbox_id"]
            updates = cloud.calls(since, "Sandbox.update_network")
            assert [u["network"] for u in updates] == [E2B["below_only"]]
            return
        with pytest.raises(ActionFailed) as failed:
            change.wait(WAIT)
        assert failed.value.code == "unsupported_network_policy"
        assert [c for c in cloud.calls(since) if c["op"] in touched] == []
        # The workspace keeps its sandbox and its policy: nothing moves on the next ensure.
        ran = cloud.client.command(project, cmd="echo still").wait(WAIT)
        assert ran["stdout"].strip() == "still"
        again = cloud.client.ensure(project, start_dev_server=False).wait(WAIT)
        assert again["sandbox_id"] == first["sandbox_id"]
        assert [c for c in cloud.calls(since) if c["op"] in touched] == []
    finally:
        cloud.client.destroy(project).wait(WAIT)


def test_a_refused_first_policy_leaves_no_workspace_stuck(cloud: Cloud) -> None:
    project = _project()
    refused = cloud.client.ensure(project, start_dev_server=False, network={"egress": BELOW_ONLY})
    try:
        if cloud.provider == "e2b":  # E2B takes this policy
            assert refused.wait(WAIT)["created"]
            return
        with pytest.raises(ActionFailed):
            refused.wait(WAIT)
        since = cloud.mark()
        made = cloud.client.ensure(project, start_dev_server=False).wait(WAIT)
        assert made["created"]
        # Under WORKSPACE_EGRESS (none here), not the refused policy.
        creates = cloud.calls(since, "Sandbox.create")
        assert [_received(cloud, c) for c in creates] == [MODAL["none"]]
    finally:
        cloud.client.destroy(project).wait(WAIT)


def _expected(cloud: Cloud, name: str) -> Any:
    return (MODAL if cloud.provider == "modal" else E2B)[name]


def _policy_at(cloud: Cloud, calls: list[dict[str, Any]], sandbox_id: str) -> Any:
    """The network the SDK was last told for ``sandbox_id`` before a point in the journal."""
    if cloud.provider == "modal":
        # Fixed at create: the create that answered with this id is the one before its
        # "created" entry.
        at = next(
            i
            for i, c in enumerate(calls)
            if c["op"] == "Sandbox.created" and c["sandbox_id"] == sandbox_id
        )
        create = next(c for c in reversed(calls[:at]) if c["op"] == "Sandbox.create")
        return _received(cloud, create)
    policy: Any = None
    for i, c in enumerate(calls):
        if c["op"] == "Sandbox.created" and c["sandbox_id"] == sandbox_id:
            policy = next(x for x in reversed(calls[:i]) if x["op"] == "Sandbox.create")["network"]
        elif c["op"] == "Sandbox.update_network" and c["sandbox_id"] == sandbox_id:
            policy = c["network"] or None  # {} clears every rule: E2B's open default
    return policy
