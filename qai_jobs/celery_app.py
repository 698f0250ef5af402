"""The Celery app (``qai_jobs.celery_app:app``), so ``celery -A qai_jobs.celery_app worker`` works.

Configuration is read lazily from the top-level ``celeryconfig`` module when the app first needs
it; the CLI calls :func:`configure` with the settings it built before that happens.
"""

from __future__ import annotations

from celery import Celery

from qai_jobs.config import Settings, load_settings

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Use these settings (the CLI builds them at its entry point)."""
    global _settings
    _settings = settings


def current_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


app = Celery(
    "qai_jobs",
    include=["qai_jobs.worker.tasks", "qai_jobs.worker.ops_tasks", "qai_jobs.bench.tasks"],
)
app.config_from_object("celeryconfig")
