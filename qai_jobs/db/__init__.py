"""Postgres: models, engines and the queries that need care."""

from qai_jobs.db.models import Action, Base, Snapshot, WebhookEvent, Workspace
from qai_jobs.db.session import db_retry, dispose_all, engine_for

__all__ = [
    "Action",
    "Base",
    "Snapshot",
    "WebhookEvent",
    "Workspace",
    "db_retry",
    "dispose_all",
    "engine_for",
]
