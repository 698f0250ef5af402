"""Where a local sandbox lives on the host, under WORKSPACE_ROOT (absolute)::

    <sandbox_id>/            sandbox_id = <project_id>-<first 8 of the workspace id>
        disk/                the sandbox's own filesystem (disk.py), holding what its code
                             can make grow; without one these four are in <sandbox_id>/:
            tree/            the workspace, /workspace inside the sandbox
            home/            the sandbox's HOME (npm cache), outside the synced tree
            git/             git metadata of a repo source: never inside the tree, where
                             sandboxed code could plant hooks or config for host-side git
            logs/            dev server logs
        procs/               the registry of started processes
        net/                 the network namespace and its helpers (net.py)
        meta.json            project, workspace, port, egress policy of the sandbox (never
                             env values: those stay sealed in Postgres)
        sleeping             marker: {"snapshot_id"} while asleep
    .disks/<sandbox_id>.img  the image of its disk/
    snapshots/<id>.tar.gz + <id>.json
    ports.json               port -> sandbox_id, under .ports.lock

``Sandbox.state`` keeps ``dir`` and ``port``; everything else is found from the directory, so any
worker process on the machine can take over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qai_jobs.errors import PermanentError, SandboxGone
from qai_jobs.providers.base import Sandbox
from qai_jobs.providers.local.disk import MOUNT
from qai_jobs.providers.local.store import atomic_write


class Layout:
    def __init__(self, base: Path) -> None:
        self.base = base
        # One stat: a sandbox made where disks could not be mounted keeps the flat layout.
        data = base / MOUNT if os.path.isdir(base / MOUNT) else base
        self.tree = data / "tree"
        self.home = data / "home"
        self.git = data / "git"
        self.logs = data / "logs"
        self.procs = base / "procs"
        self.meta = base / "meta.json"
        self.sleeping = base / "sleeping"

    def make(self) -> None:
        for path in (self.tree, self.home, self.logs, self.procs):
            path.mkdir(mode=0o755, exist_ok=True)

    def read_meta(self) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads(self.meta.read_bytes())
        except (OSError, ValueError):
            return {}
        if "env" in meta:  # unsealed env values, as earlier versions wrote them
            self.write_meta(meta)
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        meta.pop("env", None)
        atomic_write(self.meta, json.dumps(meta).encode())
        self.meta.chmod(0o600)

    @classmethod
    def of(cls, root: Path, sb: Sandbox) -> Layout:
        base = sb.state.get("dir")
        return cls(Path(base) if base else root / sb.sandbox_id)

    def existing(self) -> Layout:
        """This layout, if its tree is there; SandboxGone otherwise."""
        if not self.tree.is_dir():
            raise SandboxGone(f"local workspace {self.base.name} does not exist")
        return self

    def awake(self) -> Layout:
        """This layout, if it exists and is not asleep."""
        if self.existing().sleeping.exists():
            raise PermanentError(f"local workspace {self.base.name} is sleeping")
        return self
