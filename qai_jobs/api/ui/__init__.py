"""The operator's page at ``/ui``: server-rendered (Jinja2, vendored htmx), behind the token."""

from qai_jobs.api.ui.routes import install

__all__ = ["install"]
