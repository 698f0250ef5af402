"""Which repositories an ``ensure`` may fetch: the source policy (``WORKSPACE_REPO_SCHEMES``).

One module for every edge (client, API, the worker recording a foreign message) and for the
worker's own re-check before it runs git: a URL is parsed once into a :class:`Source` that says
which transport git will use, the URL to hand git (credentials removed), the URL the checkout's
``origin`` shows, and the credentials, which travel to git only through its environment.

git reads far more than ``scheme://``: ``transport::address`` (``ext::`` runs a command),
scp-like ``host:path`` (ssh) and plain paths (local). Each is classified here, so a spelling
cannot slip a transport past the policy; the host's git also allows exactly the enabled
protocols (``protocol.allow=never``), so the two checks back each other up.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from qai_jobs.errors import ValidationFailed

if TYPE_CHECKING:
    from qai_jobs.config import Settings

SCHEMES = ("https", "ssh", "file")
FIELD = "repo.url"
# [user@]host:path, git's scp-like ssh syntax: no slash before the first colon.
_SCP = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+):(?P<path>.*)$")
_TRANSPORT = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9+.-]*)::")
_SCHEME = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9+.-]*)://")
_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def scrub(text: str, *secrets: str) -> str:
    """Drop user:password@ from URLs a message may quote, and any known secret."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _CREDENTIALS.sub(r"\1***@", text)


def without_credentials(url: str) -> str:
    """The URL as a checkout's ``origin`` shows it: no password or token (an ssh user stays)."""
    if not _SCHEME.match(url):
        return url
    parts = urlsplit(url)
    if parts.password is None and (parts.username is None or parts.scheme.lower() == "ssh"):
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def git_config_env(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """git config through the environment (git >= 2.31): never argv, never a config file, so
    a credential header is seen by no `ps` and stored in no checkout."""
    env: dict[str, str] = {}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return {"GIT_CONFIG_COUNT": str(len(env) // 2), **env}


@dataclass(frozen=True)
class Source:
    """A repository URL the policy admitted."""

    scheme: str
    fetch_url: str  # what git fetches: no credentials
    origin: str  # what the checkout's `origin` shows: no credentials either
    auth_header: str | None = field(default=None, repr=False)  # "Authorization: Basic ..."
    path: Path | None = None  # the resolved repository of a file source


def _refuse(message: str) -> ValidationFailed:
    return ValidationFailed(f"{FIELD}: {message}", field=FIELD)


def classify(url: str) -> str:
    """The transport git would use for ``url``: a scheme, ``ssh`` for scp-like, ``file`` for a
    path, ``<name>::`` transports by their name."""
    if m := _TRANSPORT.match(url):
        return m["name"].lower() + "::"
    if m := _SCHEME.match(url):
        return m["name"].lower()
    if _SCP.match(url) and not url.startswith(("/", ".")):
        return "ssh"
    return "file"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class SourcePolicy:
    """The enabled schemes and the directories a ``file`` source may never point into."""

    schemes: frozenset[str] = frozenset({"https"})
    forbidden: tuple[Path, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> SourcePolicy:
        schemes = frozenset(settings.workspace_repo_schemes)
        return _policy(schemes, settings.workspace_root, settings.snapshot_dir, os.getcwd())

    def check(self, url: str) -> Source:
        """The admitted :class:`Source`, or ValidationFailed naming ``repo.url``."""
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise _refuse("contains whitespace or control characters")
        if url.startswith("-"):
            raise _refuse("must not start with '-'")
        kind = classify(url)
        if kind not in self.schemes:
            enabled = ", ".join(sorted(self.schemes))
            shown = "a local path" if kind == "file" and "://" not in url else f"{kind!r}"
            raise _refuse(
                f"{shown} is not an enabled repository scheme (WORKSPACE_REPO_SCHEMES: {enabled})"
            )
        if kind == "https":
            return _https(url)
        if kind == "ssh":
            return _ssh(url)
        return self._file(url)

    def _file(self, url: str) -> Source:
        if url.startswith("file://") or url.startswith("FILE://"):
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise _refuse("a file URL names no host: file:///absolute/path")
            raw = unquote(parts.path)
        else:
            raw = url
        if not raw.startswith("/"):
            raise _refuse("a local repository is given by its absolute path")
        # Symlinks resolved, so a link cannot lead into a directory the policy closes.
        resolved = Path(os.path.realpath(raw))
        for root in self.forbidden:
            if _inside(resolved, root) or _inside(resolved, Path(os.path.realpath(root))):
                raise _refuse("points into qai-jobs' own directories (workspaces, snapshots)")
        fetch = "file://" + str(resolved)
        return Source("file", fetch, fetch, path=resolved)


def _https(url: str) -> Source:
    parts = urlsplit(url)
    if not parts.hostname:
        raise _refuse("names no host")
    if parts.hostname.startswith("-"):
        raise _refuse("host must not start with '-'")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    try:
        port = parts.port
    except ValueError:
        raise _refuse("has an invalid port") from None
    if port is not None:
        netloc += f":{port}"
    clean = urlunsplit(("https", netloc, parts.path, parts.query, ""))
    header = None
    if parts.username is not None or parts.password is not None:
        user = unquote(parts.username or "")
        secret = unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        header = f"Authorization: Basic {token}"
    return Source("https", clean, clean, auth_header=header)


def _ssh(url: str) -> Source:
    if url.lower().startswith("ssh://"):
        parts = urlsplit(url)
        if parts.password is not None:
            raise _refuse("ssh sources use the configured key, not a password in the URL")
        host = parts.hostname or ""
        user = parts.username or ""
    else:
        m = _SCP.match(url)
        if m is None:
            raise _refuse("is not a valid ssh address")
        host, user = m["host"], m["user"] or ""
        if m["path"].startswith("-"):
            raise _refuse("path must not start with '-'")
    # A host or user that ssh would read as an option (CVE-2017-1000117).
    if not host or host.startswith("-") or user.startswith("-"):
        raise _refuse("names no valid host")
    return Source("ssh", url, url)


@functools.lru_cache(maxsize=64)
def _policy(schemes: frozenset[str], root: Path, snapshots: Path, cwd: str) -> SourcePolicy:
    """The policy for these inputs, built once: the worker asks for it with every action, and
    resolving the ``.qai`` directory (against the working directory ``cwd``) costs syscalls.
    The forbidden directories are the service's own: workspaces (every workspace's tree and
    private git mirror), the snapshot store, and the ``.qai`` data directory."""
    dirs: list[Path] = [root, snapshots]
    if root.parent.name == ".qai":
        dirs.append(root.parent)
    dirs.append((Path(cwd) / ".qai").resolve())
    return SourcePolicy(schemes, tuple(_unique(dirs)))


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        if path not in seen:
            seen.append(path)
    return seen


def parse_schemes(value: object) -> object:
    """WORKSPACE_REPO_SCHEMES as a set of known schemes (a comma list in the environment)."""
    if isinstance(value, str):
        value = [part.strip().lower() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple | set | frozenset):
        unknown = sorted(str(v) for v in value if v not in SCHEMES)
        if unknown:
            raise ValueError(f"unknown scheme {unknown[0]!r}; choose from {', '.join(SCHEMES)}")
        if not value:
            raise ValueError(f"name at least one of {', '.join(SCHEMES)}")
    return value
