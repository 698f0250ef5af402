"""Credentials in a ``repo`` URL (``https://user:token@host/...``), kept out of git's argv,
the checkout's config and every message.

git is given the URL without them, and gets them from a credential helper that reads two
environment variables when the server asks: so ``origin`` names the plain URL, no process's
command line holds the token, and nothing is written to disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
USER_VAR, PASSWORD_VAR = "QAI_REPO_USER", "QAI_REPO_PASSWORD"
# Only for a `get`. Passed as GIT_CONFIG_* variables (git >= 2.31), so that no argv holds it
# either; the empty helper first clears any helper configured elsewhere.
HELPER = (
    '!f() { test "$1" = get && '
    f'printf "username=%s\\npassword=%s\\n" "${USER_VAR}" "${PASSWORD_VAR}"; }}; f'
)


@dataclass(frozen=True)
class RepoAuth:
    url: str  # without credentials: what origin names and what messages may show
    user: str | None = None
    password: str | None = None

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.user, self.password) if s]

    def env(self) -> dict[str, str]:
        """For git's environment (empty without credentials: no helper answers)."""
        if self.user is None:
            return {}
        return {
            USER_VAR: self.user,
            PASSWORD_VAR: self.password or "",
            "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": "",
            "GIT_CONFIG_KEY_1": "credential.helper",
            "GIT_CONFIG_VALUE_1": HELPER,
        }

    def scrub(self, text: str) -> str:
        """A message with any user:password@ and the credentials themselves taken out."""
        text = scrub(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def split_credentials(url: str) -> RepoAuth:
    parts = urlsplit(url)
    if "@" not in parts.netloc or parts.scheme in ("", "file", "ssh"):
        return RepoAuth(url)  # ssh's user@host is a login name, not a secret
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    plain = urlunsplit(parts._replace(netloc=host))
    return RepoAuth(plain, unquote(user), unquote(password) if password else None)


def scrub(text: str) -> str:
    """Drop user:password@ from URLs a message may quote."""
    return _CREDENTIALS.sub(r"\1***@", text)
