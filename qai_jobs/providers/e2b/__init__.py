"""The ``e2b`` provider, over the E2B SDK (imported lazily)."""

from qai_jobs.providers.e2b.provider import E2BProvider

__all__ = ["E2BProvider"]
