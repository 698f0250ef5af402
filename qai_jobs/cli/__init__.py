"""The ``qai-jobs`` command line."""

from qai_jobs.cli.main import main

__all__ = ["main"]
