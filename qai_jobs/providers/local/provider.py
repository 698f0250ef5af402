"""The ``local`` provider: each workspace is a directory on the worker's host (``layout``), its
commands and dev server under bubblewrap (``jail``, ``proc``) in a network namespace of its own
(``net``), with cgroup limits (``limits``) and a disk of its own (``disk``), all enforced or
refused (``enforce``), symlink-safe host file access (``fs``, ``files``), its processes
(``processes``, ``proc``) and snapshots in a store (``store``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from qai_jobs.config import Settings
from qai_jobs.egress import Egress
from qai_jobs.errors import (
    ConfigurationError,
    ErrorCode,
    PermanentError,
    QaiJobsError,
    SandboxGone,
    ValidationFailed,
    not_owned,
)
from qai_jobs.providers.base import (
    CreateSpec,
    Provider,
    Sandbox,
    SandboxStatus,
    SleepOutcome,
)
from qai_jobs.providers.local import checkout, enforce
from qai_jobs.providers.local.disk import SandboxDisk
from qai_jobs.providers.local.disk import unsupported as no_disk_quota
from qai_jobs.providers.local.files import LocalFiles
from qai_jobs.providers.local.fs import SafeTree
from qai_jobs.providers.local.git import fetch_mirror
from qai_jobs.providers.local.hashcache import HashCache
from qai_jobs.providers.local.jail import Jail, check_env
from qai_jobs.providers.local.layout import Layout
from qai_jobs.providers.local.limits import SandboxLimits
from qai_jobs.providers.local.net import (
    SandboxNet,
    answers_http,
    check_egress,
    net_config,
    preview_host,
    refusal,
)
from qai_jobs.providers.local.proc import (
    stop_recorded,
)
from qai_jobs.providers.local.processes import LocalProcesses
from qai_jobs.providers.local.store import PortRegistry, SnapshotStore, atomic_write
from qai_jobs.sources import SourcePolicy

log = logging.getLogger(__name__)
_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_warned: set[str] = set()  # warn once per process, not per provider instance


class LocalProvider(LocalFiles, LocalProcesses, Provider):
    name: ClassVar[str] = "local"
    # A refused loopback connection costs next to nothing, while every millisecond slept past
    # the moment the server listens is added to a cold start (node listens in ~100 ms).
    port_poll_seconds: ClassVar[tuple[float, float]] = (0.01, 0.1)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.root = Path(settings.workspace_root).expanduser().resolve()
        self.ports = PortRegistry(
            self.root, settings.workspace_local_port_min, settings.workspace_local_port_max
        )
        self.snapshots = SnapshotStore(
            settings.snapshot_dir,
            settings.workspace_local_snapshots_kept,
            settings.tracked_max_file_bytes,
        )
        if (why := refusal(settings) or enforce.refusal(settings)) is not None:
            raise ConfigurationError(why)
        self.disk_quota = no_disk_quota() is None
        sized = settings.isolation == "bwrap" and enforce.bwrap_sizes_tmpfs()
        self.tmp_mb = settings.workspace_local_tmp_mb if sized else None
        if settings.isolation == "none" and "none" not in _warned:
            _warned.add("none")
            log.warning(
                "WORKSPACE_LOCAL_ISOLATION=none: workspace commands run unconfined on this host"
            )

    # -- helpers -----------------------------------------------------------------------------
    def _layout(self, sb: Sandbox) -> Layout:
        return self._mounted(Layout.of(self.root, sb))

    @staticmethod
    def _mounted(layout: Layout) -> Layout:
        """The layout, its disk mounted again if a host restart took the mount away."""
        disk = SandboxDisk.of(layout.base)
        if disk.image.exists() and not disk.mounted():
            disk.mount()
            return Layout(layout.base)
        return layout

    def _new_disk(self, base: Path) -> Layout:
        """The layout of a sandbox directory being made, on a disk of its own if it can."""
        disk = SandboxDisk.of(base)
        if self.disk_quota and not disk.image.exists():
            disk.create(self.settings.workspace_local_max_disk_mb)
        return Layout(base)

    def _existing(self, sb: Sandbox) -> Layout:
        return self._layout(sb).existing()

    def _awake(self, sb: Sandbox) -> Layout:
        return self._layout(sb).awake()

    def _jail(self, layout: Layout) -> Jail:
        if self.settings.isolation != "bwrap":
            return Jail(self.settings.isolation, layout.tree, layout.home)
        net = self._net_up(layout)
        return Jail("bwrap", layout.tree, layout.home, net.ns, net.resolv, self.tmp_mb)

    def _net_up(self, layout: Layout) -> SandboxNet:
        """The workspace's network namespace, made or repaired first (a restart may have taken
        it or its helpers away); processes left in a lost namespace are stopped."""
        net = SandboxNet(layout.base)
        if not net.healthy():
            if not net.mounted():
                self._stop_all(layout)
            net.up(net_config(self.settings, layout.read_meta()))
        return net

    def _env(self, layout: Layout, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = {**layout.read_meta().get("env", {}), **(env or {})}
        check_env(merged)
        return merged

    def _sandbox(self, layout: Layout, meta: Mapping[str, Any]) -> Sandbox:
        state = {
            "dir": str(layout.base),
            "port": meta["port"],
            "project_id": meta["project_id"],
            "workspace_id": meta["workspace_id"],
            "isolation": self.settings.isolation,
            # The host holding it: another host's worker rebuilds it instead of using it.
            "host": self.settings.workspace_host_id,
        }
        return Sandbox(self.name, layout.base.name, state)

    def _provision(self, layout: Layout, spec: CreateSpec) -> dict[str, Any]:
        layout.make()
        meta = {
            "project_id": spec.project_id,
            "workspace_id": spec.workspace_id,
            "port": self.ports.allocate(layout.base.name),
            "env": dict(spec.env),
            "egress": check_egress(self.settings, spec.egress),
            "created_at": time.time(),
            # Whose rows own it (local/orphans.py): a root shared by two deployments is a
            # mistake, but one whose sweep must not stop the other's sandboxes.
            "deployment": self.settings.deployment_id,
        }
        atomic_write(layout.meta, json.dumps(meta).encode())
        layout.meta.chmod(0o600)  # env may hold the user's secrets
        return meta

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, spec: CreateSpec) -> Sandbox:
        if spec.snapshot_id:
            self.snapshots.manifest(spec.snapshot_id)  # snapshot_not_found before any work
        self.root.mkdir(parents=True, exist_ok=True)
        stem = f"{spec.project_id}-{spec.workspace_id.replace('-', '')[:8]}"
        name = stem
        while True:
            try:
                (self.root / name).mkdir(mode=0o700)
                break
            except FileExistsError:
                name = f"{stem}-{secrets.token_hex(3)}"
        layout = Layout(self.root / name)
        held = False
        try:
            layout = self._new_disk(layout.base)
            meta = self._provision(layout, spec)
            if spec.snapshot_id:
                # The name may be a vanished sandbox's, being rebuilt: it keeps what it held.
                held = self.snapshots.hold(name, spec.snapshot_id)
                self.snapshots.restore_into(SafeTree(layout.tree), spec.snapshot_id)
        except BaseException:
            if held and spec.snapshot_id:
                self.snapshots.unhold(name, spec.snapshot_id)
            self.ports.release(name)
            with contextlib.suppress(QaiJobsError):
                SandboxDisk.of(layout.base).remove()
            shutil.rmtree(layout.base, ignore_errors=True)
            raise
        return self._sandbox(layout, meta)

    def adopt(self, sandbox_id: str, spec: CreateSpec) -> Sandbox:
        if not _SANDBOX_ID.match(sandbox_id):
            raise SandboxGone(f"no local workspace {sandbox_id!r}")
        layout = self._mounted(Layout(self.root / sandbox_id))
        meta = layout.read_meta()
        if not meta or not layout.tree.is_dir():
            raise SandboxGone(f"no local workspace {sandbox_id!r}")
        if meta.get("project_id") != spec.project_id:
            # Another project's tree: sharing it would let either read, and destroy, the other.
            raise not_owned(sandbox_id, spec.project_id)
        meta["port"] = self.ports.allocate(sandbox_id)
        return self._sandbox(layout, meta)

    def status(self, sb: Sandbox) -> SandboxStatus:
        layout = self._layout(sb)
        if not layout.meta.exists():
            return SandboxStatus.GONE
        if layout.sleeping.exists():
            return SandboxStatus.SLEEPING
        return SandboxStatus.RUNNING if layout.tree.is_dir() else SandboxStatus.GONE

    def sleep(self, sb: Sandbox) -> SleepOutcome:
        layout = self._existing(sb)
        self._stop_all(layout)
        SandboxNet(layout.base).down()
        snapshot_id = self.snapshots.create(SafeTree(layout.tree), sb.sandbox_id, kept=False)
        atomic_write(layout.sleeping, json.dumps({"snapshot_id": snapshot_id}).encode())
        sb.state["sleep_snapshot"] = snapshot_id
        return SleepOutcome(sb, snapshot_id)

    def wake(self, sb: Sandbox) -> Sandbox:
        layout = self._layout(sb)
        snapshot_id = sb.state.get("sleep_snapshot")
        with contextlib.suppress(OSError, ValueError):
            snapshot_id = json.loads(layout.sleeping.read_bytes())["snapshot_id"]
        if not layout.tree.is_dir() or not layout.meta.exists():
            if not snapshot_id:
                raise SandboxGone(f"local workspace {sb.sandbox_id} is gone, with no snapshot")
            layout.base.mkdir(mode=0o700, parents=True, exist_ok=True)
            layout = self._new_disk(layout.base)
            spec = CreateSpec(
                str(sb.state.get("project_id", "")), str(sb.state.get("workspace_id", "")), 0
            )
            meta = layout.read_meta() or self._provision(layout, spec)
            layout.make()
            sb.state["port"] = meta["port"]
        if snapshot_id:
            tree = SafeTree(layout.tree)
            # Files can vanish or change while asleep: verify against the manifest, repair.
            if tree.manifest(self.snapshots.max_file_bytes) != self.snapshots.manifest(snapshot_id):
                self.snapshots.restore_into(tree, snapshot_id)
        layout.sleeping.unlink(missing_ok=True)
        sb.state.pop("sleep_snapshot", None)
        return sb

    def snapshot(self, sb: Sandbox) -> str:
        layout = self._existing(sb)
        return self.snapshots.create(SafeTree(layout.tree), sb.sandbox_id, kept=True)

    def restore(self, sb: Sandbox, snapshot_id: str) -> Sandbox:
        layout = self._existing(sb)
        self.snapshots.hold(sb.sandbox_id, snapshot_id)
        self.snapshots.restore_into(SafeTree(layout.tree), snapshot_id)
        return sb

    def destroy(self, sb: Sandbox) -> None:
        layout = self._layout(sb)
        if layout.base.is_dir():
            self._stop_all(layout)
            SandboxNet(layout.base).down()
        SandboxDisk.of(layout.base).remove()  # all of it at once, before the directory
        shutil.rmtree(layout.base, ignore_errors=True)
        self.snapshots.forget(sb.sandbox_id)
        HashCache.forget(layout.base / "hashcache.json")
        SandboxLimits(self.settings, layout.base.name).remove()
        self.ports.release(layout.base.name)

    def _stop_all(self, layout: Layout) -> None:
        stop_recorded(layout.procs)
        # The cgroup knows processes that left their group or were started by a run.
        SandboxLimits(self.settings, layout.base.name).kill_all()

    # -- network -----------------------------------------------------------------------------
    def set_egress(self, sb: Sandbox, egress: Egress) -> None:
        layout = self._existing(sb)
        meta = layout.read_meta()
        egress = check_egress(self.settings, egress)
        if meta.get("egress") == egress:
            return
        if self.settings.isolation == "bwrap":
            SandboxNet(layout.base).apply(egress)  # before the record: a failure is retried
        meta["egress"] = egress
        atomic_write(layout.meta, json.dumps(meta).encode())
        layout.meta.chmod(0o600)

    def dev_port(self, sb: Sandbox, requested: int) -> int:
        """The workspace's own host port. Under bwrap the dev server listens on the same number
        inside its namespace, and the host's port is forwarded to it."""
        port = sb.state.get("port")
        if not port:
            port = sb.state["port"] = self.ports.allocate(sb.sandbox_id)
        return int(port)

    def preview_url(self, sb: Sandbox, port: int) -> str:
        return f"http://{preview_host(self.settings)}:{port}"

    def port_ready(self, sb: Sandbox, port: int) -> bool:
        layout = self._layout(sb)
        if self.settings.isolation == "bwrap" and not SandboxNet(layout.base).healthy():
            # A dev server that outlived its forward (pasta killed) answers again once the
            # forward is back; a sandbox that cannot have one simply is not ready.
            with contextlib.suppress(QaiJobsError, OSError, KeyError, ValueError):
                if layout.meta.exists() and not layout.sleeping.exists():
                    self._net_up(layout)
        return answers_http(self.settings.workspace_host_address, port)

    # -- source ------------------------------------------------------------------------------
    def git_sync(self, sb: Sandbox, url: str, ref: str) -> str:
        """Fetch host-side into the private mirror (the source policy re-checked: settings
        may have changed since the ensure was accepted), then check out inside the jail."""
        layout = self._awake(sb)
        try:
            source = SourcePolicy.from_settings(self.settings).check(url)
        except ValidationFailed as exc:
            raise PermanentError(exc.message, code=ErrorCode.REPO_UNAVAILABLE) from None
        fetched = fetch_mirror(self.settings, layout.git, source, ref)
        jail, mirror = self._jail(layout), str(layout.git)
        if jail.isolation == "bwrap":
            inside = checkout.SOURCE_MOUNT
            jail, mirror = replace(jail, ro_binds=((mirror, inside),)), inside
        env = checkout.checkout_env(source, fetched, ref, mirror)
        launch = jail.command(["bash", "-c", checkout.SCRIPT], None, env, foreground=True)
        result = self._run_confined(sb, launch, checkout.TIMEOUT_S)
        return checkout.checked_out(result, fetched, ref)
