"""The ``local`` provider: bubblewrap sandboxes in directories on the worker's host."""

from qai_jobs.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
