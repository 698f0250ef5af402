"""The orphan sweep's provider half: list what qai-jobs tagged, terminate what nobody owns.

A sandbox is an orphan when a provider lists it with qai-jobs' tag and this deployment's id but
no workspace row holds its id (a crash between create and commit, a workspace destroyed while
the provider was down). Orphans keep billing, so beat terminates them; ``dry_run`` only reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from qai_jobs.config import Settings
from qai_jobs.errors import ConfigurationError, ProviderError
from qai_jobs.providers.base import Provider
from qai_jobs.providers.scripts import CloudProvider, TaggedSandbox
from qai_jobs.providers.select import get_provider

logger = logging.getLogger(__name__)


def list_tagged(
    settings: Settings, providers: Callable[[str], Provider] | None = None
) -> tuple[list[TaggedSandbox], list[str]]:
    """Every tagged sandbox of every cloud provider in WORKSPACE_RUNTIME, and the providers
    that could not be listed (a sweep must not conclude anything about those)."""
    get = providers or (lambda name: get_provider(name, settings))
    found: list[TaggedSandbox] = []
    failed: list[str] = []
    for name in settings.workspace_runtime:
        try:
            provider = get(name)
        except ConfigurationError as exc:
            logger.warning("orphan sweep: provider %s unavailable: %s", name, exc)
            failed.append(name)
            continue
        if not isinstance(provider, CloudProvider):
            continue  # local/fake workspaces are swept by their own means
        try:
            found.extend(provider.list_sandboxes())
        except ProviderError as exc:
            logger.warning("orphan sweep: could not list %s sandboxes: %s", name, exc.code)
            failed.append(name)
    return found, failed


def find_orphans(
    listed: Iterable[TaggedSandbox],
    owned: Collection[tuple[str, str]] | Collection[str],
    deployment: str | None = None,
) -> list[TaggedSandbox]:
    """The listed sandboxes whose id no workspace owns.

    ``owned`` holds sandbox ids, or (provider, sandbox_id) pairs to be exact across providers.
    With ``deployment``, only that deployment's sandboxes can be orphans: the listing asks the
    provider for those alone, and this holds even if a provider answered with more. Another
    deployment's sandbox (a paused E2B sandbox may be the only copy of its sleeping
    workspace) is never ours to judge, nor one tagged before deployments were.
    """
    owned_set = set(owned)
    return [
        sb
        for sb in listed
        if sb.sandbox_id not in owned_set
        and (sb.provider, sb.sandbox_id) not in owned_set
        and (deployment is None or sb.deployment == deployment)
    ]


@dataclass
class SweepReport:
    orphans: list[TaggedSandbox] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    failed_providers: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False


def sweep_orphans(
    settings: Settings,
    owned: Collection[tuple[str, str]] | Collection[str],
    *,
    dry_run: bool = False,
    providers: Callable[[str], Provider] | None = None,
) -> SweepReport:
    """List, compare with ``owned``, terminate the rest (none with ``dry_run``).

    Read ``owned`` from Postgres AFTER listing: a sandbox created between a read of the
    owned ids and the listing would otherwise look orphaned. Sweeps that cannot order it so
    should call ``list_tagged``, then read the owned ids, then ``find_orphans`` / ``terminate``.
    """
    get = providers or (lambda name: get_provider(name, settings))
    listed, failed = list_tagged(settings, get)
    orphans = find_orphans(listed, owned, settings.deployment_id)
    report = SweepReport(orphans, failed_providers=failed, dry_run=dry_run)
    if not dry_run:
        terminate(report, get)
    return report


def terminate(report: SweepReport, get: Callable[[str], Provider]) -> None:
    for orphan in report.orphans:
        provider = get(orphan.provider)
        assert isinstance(provider, CloudProvider)
        try:
            provider.terminate_sandbox(orphan.sandbox_id)
        except ProviderError as exc:
            report.errors[orphan.sandbox_id] = exc.code
            continue
        logger.info(
            "terminated orphan %s sandbox %s (project %s)",
            orphan.provider,
            orphan.sandbox_id,
            orphan.project_id,
        )
        report.terminated.append(orphan.sandbox_id)
