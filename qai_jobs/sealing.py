"""Environment values are secrets: they are sealed before they reach a Postgres row.

Payload ``env`` mappings (API keys for the user's app, mostly) are encrypted with Fernet under
one secret for the whole deployment: ``WORKSPACE_SECRET_KEY`` when set, else a random key that
``qai-jobs migrate`` keeps in Postgres (``qai_jobs.db.secrets``), read once per process. Never
a file per working directory: api, workers and beat must all open what any of them sealed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken

from qai_jobs.config import Settings
from qai_jobs.errors import ConfigurationError

SEALED = "sealed"
SEALED_URL = "qai-sealed:"


@lru_cache(maxsize=8)
def _fernet(secret: str) -> Fernet:
    key = base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())
    return Fernet(key)


@lru_cache(maxsize=8)
def _stored_secret(database_url: str) -> str:
    from qai_jobs.db.secrets import sealing_secret

    return sealing_secret(database_url)


def deployment_secret(settings: Settings) -> str:
    """The secret every process of this deployment shares (cached after the first call)."""
    secret = settings.workspace_secret_key
    if secret is not None:
        return secret.get_secret_value()
    return _stored_secret(settings.database_url)


def load_key(settings: Settings) -> None:
    """Read the key at start-up, so a process that cannot fails at once, not mid-action."""
    deployment_secret(settings)


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A key of its own for ``purpose`` (e.g. signing preview tokens), from the deployment's
    shared secret: every process of the deployment derives the same one."""
    raw = deployment_secret(settings)
    return hmac.new(raw.encode(), f"qai-jobs {purpose}".encode(), hashlib.sha256).digest()


def _box(settings: Settings) -> Fernet:
    return _fernet(deployment_secret(settings))


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
    """The payload as stored: the same, with ``env`` and a repo URL's credentials sealed."""
    if "env" in payload:
        payload = dict(payload)
        sealed = seal_env(settings, payload.pop("env"))
        if sealed:
            payload["env"] = sealed
    repo = payload.get("repo")
    if isinstance(repo, dict) and isinstance(repo.get("url"), str):
        payload = {**payload, "repo": {**repo, "url": seal_url(settings, repo["url"])}}
    return payload


def unseal_payload(settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    if "env" in payload:
        payload = dict(payload)
        payload["env"] = unseal_env(settings, payload["env"])
    repo = payload.get("repo")
    if isinstance(repo, dict) and isinstance(repo.get("url"), str):
        payload = {**payload, "repo": {**repo, "url": unseal_url(settings, repo["url"])}}
    return payload


def seal_url(settings: Settings, url: str) -> str:
    """An https URL carrying ``user:token@`` is stored sealed (shown as ``qai-sealed:...``);
    any other URL holds no secret and stays readable."""
    parts = urlsplit(url) if url.lower().startswith("https://") else None
    if parts is None or "@" not in parts.netloc:
        return url
    return SEALED_URL + _box(settings).encrypt(url.encode()).decode()


def unseal_url(settings: Settings, url: str) -> str:
    if not url.startswith(SEALED_URL):
        return url
    try:
        return _box(settings).decrypt(url[len(SEALED_URL) :].encode()).decode()
    except InvalidToken:
        raise ConfigurationError(
            "cannot decrypt the repository URL: WORKSPACE_SECRET_KEY differs from the key it "
            "was sealed with"
        ) from None
