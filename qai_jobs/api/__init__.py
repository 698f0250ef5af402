"""The HTTP API (``qai-jobs api``): FastAPI routes over the same client the Python API uses."""

from qai_jobs.api.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
