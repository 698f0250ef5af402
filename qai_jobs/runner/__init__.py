"""Executes one action against a provider; knows nothing of Celery, leases or SQL.

Stacked without a circle: ``handlers`` (one per kind) -> ``reconcile`` (provision, wake,
recreate) -> ``devserver`` -> ``install`` -> ``context``; ``files`` (sync, manifest update) sits
beside them on ``context``.
"""

from qai_jobs.runner.context import ActionContext, FileRecord, TakenSnapshot
from qai_jobs.runner.handlers import execute

__all__ = ["ActionContext", "FileRecord", "TakenSnapshot", "execute"]
