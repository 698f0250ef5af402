"""Calls into the SDK fakes checked against the real SDKs' own signatures.

A fake that took any keyword would let an adapter pass a parameter the real SDK refuses (a
``TypeError`` in production) or a TypedDict key it silently ignores (a network rule that is
never applied): both are caught here, against the installed ``modal`` / ``e2b`` code.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def bind(real: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The call's arguments by name, defaults filled in; TypeError as the real one raises.
    ``self`` of a real method is left out (fakes are called through their own instance)."""
    sig = inspect.signature(real)
    params = [p for n, p in sig.parameters.items() if n not in ("self", "cls")]
    bound = sig.replace(parameters=params).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def typed_keys(td: type, value: Mapping[str, Any] | None, what: str) -> None:
    """A TypedDict argument: a key the SDK does not define would be dropped without a word."""
    known = set(getattr(td, "__required_keys__", ())) | set(getattr(td, "__optional_keys__", ()))
    unknown = set(value or {}) - known
    if unknown:
        raise TypeError(f"{what} has keys the SDK does not define: {sorted(unknown)}")


class Journal:
    """A fake SDK's world: faults to inject, and what each call received.

    ``calls`` lists the operations in order (in memory); with a ``journal`` path, every call
    is also appended there as one JSON line, for a test whose worker runs in another process.
    """

    def __init__(self, base: Path, journal: Path | None = None) -> None:
        self.base = base
        self.journal = journal
        self.faults: dict[str, list[BaseException]] = {}
        self.calls: list[str] = []

    def fail(self, op: str, exc: BaseException, times: int = 1) -> None:
        self.faults.setdefault(op, []).extend([exc] * times)

    def record(self, op: str, **received: Any) -> None:
        if self.journal is not None:
            with self.journal.open("a") as fh:
                fh.write(json.dumps({"op": op, **received}, default=str) + "\n")

    def check(self, op: str, **received: Any) -> None:
        """Called first by every fake operation: recorded, then a pending fault raised."""
        self.calls.append(op)
        self.record(op, **received)
        pending = self.faults.get(op)
        if pending:
            raise pending.pop(0)


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
