"""Modal and E2B adapters over their SDK fakes: what the conformance suite does not cover
(deleted behind our back, the NotFoundError trap, orphan sweep, recycle, doctor)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import modal.exception as me
import pytest

from qai_jobs.errors import SandboxGone, TransientError
from qai_jobs.providers import credentials as doctor
from qai_jobs.providers.base import CreateSpec, Provider, SandboxStatus
from qai_jobs.providers.e2b.provider import E2BProvider
from qai_jobs.providers.modal.provider import ModalProvider
from qai_jobs.providers.orphans import find_orphans, sweep_orphans
from qai_jobs.providers.scripts import TaggedSandbox
from tests.fakes.cloud import e2b_provider, modal_provider, settings

MAKERS = {"modal": modal_provider, "e2b": e2b_provider}


@pytest.fixture(params=sorted(MAKERS))
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Provider, Any]]:
    cm: AbstractContextManager[tuple[Any, Any]] = MAKERS[request.param](tmp_path / "w")
    with cm as pair:
        yield pair


def test_deleted_behind_our_back_is_gone(cloud: tuple[Provider, Any]) -> None:
    provider, world = cloud
    sb = provider.create(CreateSpec("p", "w", 3000))
    provider.write_files(sb, [("a.txt", b"1")])
    world.vanish(sb.sandbox_id)
    assert provider.status(sb) is SandboxStatus.GONE
    with pytest.raises(SandboxGone):
        provider.read_files(sb, ["a.txt"])
    provider.destroy(sb)  # already gone: not an error


def test_sleeping_sandbox_is_sleeping_and_keeps_files(cloud: tuple[Provider, Any]) -> None:
    provider, _ = cloud
    sb = provider.create(CreateSpec("p", "w", 3000))
    provider.write_files(sb, [("src/a.txt", b"kept")])
    slept = provider.sleep(sb).sandbox
    assert provider.status(slept) is SandboxStatus.SLEEPING
    woken = provider.wake(slept)
    assert provider.read_files(woken, ["src/a.txt"]) == {"src/a.txt": b"kept"}
    assert provider.preview_url(woken, 3000).startswith("https://")


def test_modal_not_found_during_file_call_is_confirmed_by_poll(tmp_path: Path) -> None:
    with modal_provider(tmp_path / "w") as (provider, world):
        sb = provider.create(CreateSpec("p", "w", 3000))
        # The SDK rewrites a transport hiccup inside a filesystem call into NotFoundError.
        world.fail("fs.read_bytes", me.NotFoundError("The Sandbox is unavailable."))
        provider.write_files(sb, [("a.txt", b"1")])
        with pytest.raises(TransientError):
            provider.read_files(sb, ["a.txt"])
        assert provider.read_files(sb, ["a.txt"]) == {"a.txt": b"1"}


def test_modal_exec_timeout_is_timed_out(tmp_path: Path) -> None:
    with modal_provider(tmp_path / "w") as (provider, _):
        sb = provider.create(CreateSpec("p", "w", 3000))
        result = provider.run(sb, ["bash", "-lc", "echo start; sleep 10"], timeout_s=1)
        assert result.timed_out and result.exit_code == 124 and "start" in result.stdout


def test_e2b_non_zero_exit_is_a_result(tmp_path: Path) -> None:
    with e2b_provider(tmp_path / "w") as (provider, _):
        sb = provider.create(CreateSpec("p", "w", 3000))
        result = provider.run(sb, ["bash", "-lc", "echo out; echo err >&2; exit 7"])
        assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_orphan_sweep_terminates_exactly_the_untracked(tmp_path: Path) -> None:
    with (
        modal_provider(tmp_path / "m") as (modal_p, mworld),
        e2b_provider(tmp_path / "e") as (
            e2b_p,
            eworld,
        ),
    ):
        providers = {"modal": modal_p, "e2b": e2b_p}.__getitem__
        owned_m = modal_p.create(CreateSpec("p1", "w1", 3000))
        orphan_m = modal_p.create(CreateSpec("p2", "w2", 3000))
        owned_e = e2b_p.create(CreateSpec("p3", "w3", 3000))
        orphan_e = e2b_p.create(CreateSpec("p4", "w4", 3000))
        extra_e = [e2b_p.create(CreateSpec(f"x{i}", f"x{i}", 3000)) for i in range(3)]  # paging
        owned = {("modal", owned_m.sandbox_id), ("e2b", owned_e.sandbox_id)}
        owned |= {("e2b", sb.sandbox_id) for sb in extra_e}

        dry = sweep_orphans(settings(), owned, dry_run=True, providers=providers)
        assert {o.sandbox_id for o in dry.orphans} == {orphan_m.sandbox_id, orphan_e.sandbox_id}
        assert dry.terminated == [] and len(mworld.running()) == 2 and len(eworld.running()) == 5
        assert {o.project_id for o in dry.orphans} == {"p2", "p4"}

        report = sweep_orphans(settings(), owned, providers=providers)
        assert sorted(report.terminated) == sorted([orphan_m.sandbox_id, orphan_e.sandbox_id])
        assert mworld.running() == [owned_m.sandbox_id]
        assert sorted(eworld.running()) == sorted(sb.sandbox_id for sb in [owned_e, *extra_e])
        assert sweep_orphans(settings(), owned, providers=providers).orphans == []


def test_find_orphans_accepts_bare_ids() -> None:
    listed = [TaggedSandbox("modal", "sb-1", "p", "w"), TaggedSandbox("e2b", "i2", "p", "w")]
    assert find_orphans(listed, {"sb-1"}) == [listed[1]]


def test_modal_recycle_before_the_lifetime_cap(tmp_path: Path) -> None:
    with modal_provider(tmp_path / "w") as (provider, world):
        sb = provider.create(CreateSpec("p", "w", 3000))
        provider.write_files(sb, [("a.txt", b"1")])
        assert not provider.needs_recycle(sb)
        sb.state["created_at"] = time.time() - 23.5 * 3600
        assert provider.needs_recycle(sb)
        old = sb.sandbox_id
        new = provider.recycle(sb)
        assert new.sandbox_id != old and world.running() == [new.sandbox_id]
        assert provider.read_files(new, ["a.txt"]) == {"a.txt": b"1"}
        assert not provider.needs_recycle(new)


def test_doctor_reports_without_secrets() -> None:
    s = settings(modal_token_id="ak-1", modal_token_secret="as-SECRET", e2b_api_key="e2b_SECRET")
    reports = doctor.check(s, reach=False)
    assert [r["provider"] for r in reports] == ["modal", "e2b"]
    assert all(r["sdk_installed"] and r["credentials"] == "set" for r in reports)
    assert "SECRET" not in repr(reports)
    assert doctor.check(settings(), reach=False)[0]["credentials"].startswith("missing")


def test_env_values_are_sealed_in_the_persisted_state(cloud: tuple[Provider, Any]) -> None:
    """Sandbox.state is stored on the workspace row: env values must not be readable there,
    yet a wake (which recreates the sandbox on Modal) still gets them."""
    import json

    provider, _ = cloud
    sb = provider.create(CreateSpec("p", "w", 3000, env={"API_KEY": "sk-live-123"}))
    assert "sk-live-123" not in json.dumps(sb.to_json())
    woken = provider.wake(provider.sleep(sb).sandbox)
    assert "sk-live-123" not in json.dumps(woken.to_json())
    out = provider.run(woken, ["bash", "-lc", 'printf %s "$API_KEY"'])
    assert out.stdout == "sk-live-123"


def test_deployments_sharing_an_account_sweep_only_their_own(tmp_path: Path) -> None:
    """Staging's orphan sweep on the account production uses too: production's sandboxes,
    the paused E2B one above all (the only copy of a sleeping workspace), are not staging's to
    judge, nor are sandboxes tagged before deployments were; staging's own orphans go."""
    from tests.fakes import fake_e2b, fake_modal

    for part in ("e", "m"):
        (tmp_path / part).mkdir()
    e2b_sdk, modal_sdk = fake_e2b.build(tmp_path / "e"), fake_modal.build(tmp_path / "m")
    try:

        def deployment(name: str) -> tuple[Any, dict[str, Provider]]:
            s = settings(workspace_deployment_id=name)
            return s, {"e2b": E2BProvider(s, sdk=e2b_sdk), "modal": ModalProvider(s, sdk=modal_sdk)}

        prod_settings, prod = deployment("prod")
        staging_settings, staging = deployment("staging")
        asleep = prod["e2b"].create(CreateSpec("shop", "w1", 3000))
        prod["e2b"].sleep(asleep)
        prod_modal = prod["modal"].create(CreateSpec("shop2", "w2", 3000))
        mine = [staging[name].create(CreateSpec("old", "w3", 3000)) for name in ("e2b", "modal")]
        legacy = e2b_sdk.Sandbox.create(template="base", metadata={"qai": "1", "project_id": "x"})

        # Staging owns none of them: only its own two are orphans.
        report = sweep_orphans(staging_settings, set(), providers=staging.__getitem__)
        assert sorted(report.terminated) == sorted(sb.sandbox_id for sb in mine)
        assert e2b_sdk.world.sandboxes[asleep.sandbox_id].state == "paused"
        assert not e2b_sdk.world.sandboxes[asleep.sandbox_id].killed
        assert legacy.sandbox_id in e2b_sdk.world.running()
        assert modal_sdk.world.running() == [prod_modal.sandbox_id]
        # And production's sweep, owning both of its own, terminates nothing of staging's.
        owned = {("e2b", asleep.sandbox_id), ("modal", prod_modal.sandbox_id)}
        assert sweep_orphans(prod_settings, owned, providers=prod.__getitem__).orphans == []
        # A provider that answered with more than it was asked for changes nothing.
        listed = [
            TaggedSandbox("e2b", asleep.sandbox_id, "shop", "w1", "paused", deployment="prod"),
            TaggedSandbox("e2b", legacy.sandbox_id, "x", ""),
        ]
        assert find_orphans(listed, set(), "staging") == []
    finally:
        fake_e2b.cleanup(e2b_sdk)
        fake_modal.cleanup(modal_sdk)


def test_adopt_seals_env_like_create_and_refuses_another_projects(
    cloud: tuple[Provider, Any],
) -> None:
    """An adopted sandbox's state is stored like a created one's: env sealed, and a sleep and
    wake later still work. A sandbox tagged for another project is never taken over."""
    import json

    from qai_jobs.errors import PermanentError
    from qai_jobs.sealing import unseal_env

    provider, _ = cloud
    theirs = provider.create(CreateSpec("other-project", "w0", 3000))
    with pytest.raises(PermanentError) as refused:
        provider.adopt(theirs.sandbox_id, CreateSpec("p", "w", 3000))
    assert refused.value.code == "sandbox_not_found"
    tags = {t.sandbox_id: t.project_id for t in provider.list_sandboxes()}
    assert tags[theirs.sandbox_id] == "other-project"  # not re-tagged

    made = provider.create(CreateSpec("p", "w0", 3000))
    env = {"API_KEY": "sk-adopted-456"}
    sb = provider.adopt(made.sandbox_id, CreateSpec("p", "w", 3000, env=env))
    assert "sk-adopted-456" not in json.dumps(sb.to_json())
    assert unseal_env(provider.settings, sb.state["env"]) == env
    woken = provider.wake(provider.sleep(sb).sandbox)
    assert "sk-adopted-456" not in json.dumps(woken.to_json())
    out = provider.run(woken, ["bash", "-lc", 'printf %s "$API_KEY"'], env=env)
    assert out.exit_code == 0 and out.stdout == "sk-adopted-456"
    if provider.name == "modal":  # the wake made a new sandbox from the stored, sealed env
        bare = provider.run(woken, ["bash", "-lc", 'printf %s "$API_KEY"'])
        assert bare.stdout == "sk-adopted-456"
