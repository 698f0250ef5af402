"""Sandbox backends behind one small protocol (see ``base``)."""

from qai_jobs.providers.base import (
    CreateSpec,
    ExecResult,
    Provider,
    Sandbox,
    SandboxStatus,
    SleepResult,
)
from qai_jobs.providers.select import get_provider

__all__ = [
    "CreateSpec",
    "ExecResult",
    "Provider",
    "Sandbox",
    "SandboxStatus",
    "SleepResult",
    "get_provider",
]
