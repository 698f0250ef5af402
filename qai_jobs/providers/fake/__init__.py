"""The ``fake`` provider: workspaces kept in Redis (or memory), with fault injection."""

from qai_jobs.providers.fake.provider import FakeProvider

__all__ = ["FakeProvider"]
