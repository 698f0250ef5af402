"""Postgres: models, engines and the queries that need care."""

from .models import Action, Base, Snapshot, WebhookEvent, Workspace
from .session import db_retry, dispose_all, engine_for

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
