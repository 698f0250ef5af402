"""Environment values are secrets: they are sealed before they reach a Postgres row.

Payload ``env`` mappings (API keys for the user's app, mostly) are encrypted with Fernet under
``WORKSPACE_SECRET_KEY``; without it, a random key is kept in ``.qai/secret.key`` (mode 0600)
beside the working directory, which suits one machine. Several machines must share the key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from qai_jobs.config import Settings
from qai_jobs.errors import ConfigurationError

SEALED = "sealed"
KEY_FILE = Path(".qai/secret.key")


@lru_cache(maxsize=8)
def _fernet(secret: str | None) -> Fernet:
    if secret is None:
        secret = _key_file_secret()
    key = base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())
    return Fernet(key)


def _key_file_secret() -> str:
    path = KEY_FILE.resolve()
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = base64.urlsafe_b64encode(os.urandom(32)).decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(candidate)
    return candidate


def _box(settings: Settings) -> Fernet:
    secret = settings.workspace_secret_key
    return _fernet(secret.get_secret_value() if secret is not None else None)


def seal_env(settings: Settings, env: dict[str, str] | None) -> dict[str, Any] | None:
    if not env:
        return None
    token = _box(settings).encrypt(json.dumps(env).encode())
    return {SEALED: token.decode()}


def unseal_env(settings: Settings, sealed: object) -> dict[str, str]:
    if not sealed:
        return {}
    if not isinstance(sealed, dict) or SEALED not in sealed:
        # Recorded from a foreign producer's message before sealing existed: never expected.
        raise ConfigurationError("environment values are not sealed")
    try:
        data = _box(settings).decrypt(str(sealed[SEALED]).encode())
    except InvalidToken:
        raise ConfigurationError(
            "cannot decrypt the action's environment: WORKSPACE_SECRET_KEY differs from the "
            "key it was sealed with"
        ) from None
    env: dict[str, str] = json.loads(data)
    return env


def seal_payload(settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as stored: the same, with ``env`` sealed."""
    if "env" in payload:
        payload = dict(payload)
        sealed = seal_env(settings, payload.pop("env"))
        if sealed:
            payload["env"] = sealed
    return payload


def unseal_payload(settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    if "env" in payload:
        payload = dict(payload)
        payload["env"] = unseal_env(settings, payload["env"])
    return payload


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A key for ``purpose`` (signing, say) from this deployment's secret: every process of
    one deployment derives the same one, and it tells nothing about the sealing key."""
    secret = settings.workspace_secret_key
    raw = secret.get_secret_value() if secret is not None else _key_file_secret()
    return hashlib.sha256(f"qai-jobs:{purpose}\0{raw}".encode()).digest()
