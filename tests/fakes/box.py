"""A fake sandbox machine shared by the Modal and E2B SDK fakes: a temp dir and real processes.

The sandbox's ``/workspace`` and ``/tmp/qai`` are directories under ``root``; absolute paths in
commands, working directories and environment values are rewritten to them on the way in and
back on the way out, so the adapters' real shell scripts run unchanged. Every process gets a
marker in its environment, so terminating, pausing and resuming reach detached (setsid) dev
servers too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

_ABS = re.compile(r"(?<![\w./-])/(workspace|tmp/qai)(?=[/\s'\";&|)<>]|$)")
MARKER = "QAI_FAKE_SANDBOX"


class Box:
    def __init__(self, base: Path, template: Path | None = None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.root = Path(tempfile.mkdtemp(prefix=f"box-{self.id}-", dir=base))
        if template is not None:
            shutil.copytree(template, self.root, symlinks=True, dirs_exist_ok=True)
        (self.root / "workspace").mkdir(exist_ok=True)
        (self.root / "tmp" / "qai").mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)

    # -- paths -------------------------------------------------------------------------------
    def map(self, text: str) -> str:
        return _ABS.sub(lambda m: f"{self.root}/{m.group(1)}", text)

    def unmap(self, text: str) -> str:
        return text.replace(str(self.root), "")

    def unmap_bytes(self, data: bytes) -> bytes:
        return data.replace(str(self.root).encode(), b"")

    def host_path(self, path: str) -> Path:
        return Path(self.map(path))

    # -- processes ---------------------------------------------------------------------------
    def popen(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str | None] | None = None,
    ) -> subprocess.Popen[bytes]:
        # A sandbox never sees the worker's environment: only what a fresh container would have.
        full_env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
        }
        for key, value in (env or {}).items():
            if value is not None:
                full_env[key] = self.map(value)
        # The sandbox's own home: a login shell must not run this host's ~/.profile.
        full_env.setdefault("HOME", str(self.root / "home"))
        full_env[MARKER] = self.id
        return subprocess.Popen(
            [self.map(a) for a in argv],
            cwd=self.map(cwd),
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        """Every live process of this sandbox, found by its environment marker."""
        needle = f"{MARKER}={self.id}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def signal_all(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def kill_all(self) -> None:
        self.signal_all(signal.SIGCONT)  # a stopped process would not die of SIGKILL until resumed
        self.signal_all(signal.SIGKILL)

    def copy_to(self, target: Path) -> None:
        shutil.copytree(self.root, target, symlinks=True)

    def remove(self) -> None:
        self.kill_all()
        shutil.rmtree(self.root, ignore_errors=True)
