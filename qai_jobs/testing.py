"""Test and benchmark helpers shipped with qai-jobs: the in-memory ``fake`` provider.

Select it with ``WORKSPACE_RUNTIME=fake``; inject faults into every worker with
:func:`inject_fault` and read what really ran with :func:`journal`.
"""

from qai_jobs.providers.fake.provider import FakeProvider
from qai_jobs.providers.fake.store import (
    MemoryStore,
    RedisStore,
    clear_faults,
    inject_fault,
    journal,
)

__all__ = ["FakeProvider", "MemoryStore", "RedisStore", "clear_faults", "inject_fault", "journal"]
