"""Build the modal / e2b adapters over their SDK fakes (for unit and conformance tests).

The adapters reach their SDK through one seam: ``_sdk()`` (the module-level function that
imports the real SDK), overridden per instance by ``sdk=``. These helpers build a provider over a
fresh fake world and hand back (provider, world).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qai_jobs.config import Settings
from qai_jobs.providers.e2b import provider as e2b_adapter
from qai_jobs.providers.modal import provider as modal_adapter

from . import fake_e2b, fake_modal


def settings(**overrides: Any) -> Settings:
    # A key of their own: without one the sealing key is read from Postgres, which unit tests
    # do not have.
    values: dict[str, Any] = {
        "workspace_runtime": ["modal", "e2b"],
        "workspace_secret_key": "unit-test-sealing-key",
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def modal_provider(
    base: Path, **overrides: Any
) -> Iterator[tuple[modal_adapter.ModalProvider, Any]]:
    base.mkdir(parents=True, exist_ok=True)
    sdk = fake_modal.build(base)
    try:
        yield modal_adapter.ModalProvider(settings(**overrides), sdk=sdk), sdk.world
    finally:
        fake_modal.cleanup(sdk)


@contextmanager
def e2b_provider(base: Path, **overrides: Any) -> Iterator[tuple[e2b_adapter.E2BProvider, Any]]:
    base.mkdir(parents=True, exist_ok=True)
    sdk = fake_e2b.build(base)
    try:
        yield e2b_adapter.E2BProvider(settings(**overrides), sdk=sdk), sdk.world
    finally:
        fake_e2b.cleanup(sdk)


def modal_over_fake(settings: Settings) -> modal_adapter.ModalProvider:
    """For the conformance registry: the fake world lives beside the test's workspace root."""
    base = Path(tempfile.mkdtemp(prefix="fake-modal-", dir=settings.workspace_root.parent))
    return modal_adapter.ModalProvider(settings, sdk=fake_modal.build(base))


def e2b_over_fake(settings: Settings) -> e2b_adapter.E2BProvider:
    base = Path(tempfile.mkdtemp(prefix="fake-e2b-", dir=settings.workspace_root.parent))
    return e2b_adapter.E2BProvider(settings, sdk=fake_e2b.build(base))
