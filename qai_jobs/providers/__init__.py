"""Sandbox backends behind one small protocol (see ``base``)."""

from qai_jobs.providers.base import (
    CreateSpec,
    ExecResult,
    Provider,
    Sandbox,
    SandboxStatus,
    SleepOutcome,
)
from qai_jobs.providers.select import get_provider

__all__ = [
    "CreateSpec",
    "ExecResult",
    "Provider",
    "Sandbox",
    "SandboxStatus",
    "SleepOutcome",
    "get_provider",
]
