"""Statement parameters shared by the hot path's modules (import-light: producers load it)."""

from __future__ import annotations

import json
from typing import Any


def json_param(value: Any) -> str | None:
    """A JSON value as a statement parameter (``CAST(:x AS jsonb)``); None stays SQL null."""
    return None if value is None else json.dumps(value)
