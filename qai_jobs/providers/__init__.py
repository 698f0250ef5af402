"""Sandbox backends behind one small protocol (see ``base``)."""

from .base import CreateSpec, ExecResult, Provider, Sandbox, SandboxStatus, SleepResult
from .select import get_provider

__all__ = [
    "CreateSpec",
    "ExecResult",
    "Provider",
    "Sandbox",
    "SandboxStatus",
    "SleepResult",
    "get_provider",
]
