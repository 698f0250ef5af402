"""Executes one action against a provider; knows nothing of Celery, leases or SQL.

Stacked without a circle: ``handlers`` (the table of kinds, and the kinds that work on files
and processes) -> ``lifecycle`` (sleep, wake, snapshot, restore, destroy) -> ``reconcile``
(provision, wake, recreate) -> ``devserver`` -> ``install`` -> ``context``; ``files`` (sync,
manifest update) sits beside them on ``context``.
"""

from qai_jobs.runner.context import ActionContext, FileRecord, TakenSnapshot
from qai_jobs.runner.handlers import execute

__all__ = ["ActionContext", "FileRecord", "TakenSnapshot", "execute"]
