"""Resource limits of local sandboxes, checked as a user would: real bubblewrap sandboxes that
fill their disk and their /tmp and spin the CPU, a neighbour that keeps working, the host's
own disk still writable, and a real worker that refuses to start where the limits cannot hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.errors import ErrorCode, PermanentError
from qai_jobs.providers.base import CreateSpec, Sandbox
from qai_jobs.providers.local import LocalProvider
from qai_jobs.providers.local.disk import DISKS, SandboxDisk
from qai_jobs.providers.local.limits import SandboxLimits
from qai_jobs.providers.local.orphans import sweep_disks
from qai_jobs.providers.local.store import PortRegistry
from tests.conformance.conftest import make_settings
from tests.support.procs import QAI, Proc

DISK_MB = 48
TMP_MB = 24


class Boxes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.made: list[tuple[LocalProvider, Sandbox]] = []

    def provider(self, **extra: Any) -> LocalProvider:
        extra = {"workspace_local_isolation": "bwrap", **extra}
        return LocalProvider(make_settings(self.tmp, **extra))

    def sandbox(self, provider: LocalProvider, project: str = "p") -> Sandbox:
        sb = provider.create(CreateSpec(project, uuid.uuid4().hex, 3000))
        self.made.append((provider, sb))
        return sb


@pytest.fixture
def boxes(tmp_path: Path) -> Iterator[Boxes]:
    helper = Boxes(tmp_path)
    try:
        yield helper
    finally:
        for provider, sb in helper.made:
            with contextlib.suppress(Exception):
                provider.destroy(sb)


def sh(provider: LocalProvider, sb: Sandbox, script: str) -> tuple[int, str]:
    result = provider.run(sb, ["bash", "-c", script], timeout_s=60)
    return result.exit_code, result.stdout + result.stderr


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if line.split()[4].startswith(str(path))]


def test_disk_and_tmp_quotas_hold_inside_the_sandbox_only(boxes: Boxes) -> None:
    provider = boxes.provider(workspace_local_max_disk_mb=DISK_MB, workspace_local_tmp_mb=TMP_MB)
    full, neighbour = boxes.sandbox(provider, "full"), boxes.sandbox(provider, "neighbour")

    code, out = sh(provider, full, "dd if=/dev/zero of=/workspace/big bs=1M count=200")
    assert code != 0 and "No space left on device" in out, out
    code, out = sh(provider, full, "stat -c %s /workspace/big")
    assert code == 0 and int(out) <= DISK_MB * 1024 * 1024, out
    # HOME (the npm cache) shares the quota: it is no way around it.
    code, out = sh(provider, full, "echo x > /home/qai/more && head -c 2M /dev/zero > ~/more")
    assert code != 0 and "No space left on device" in out, out

    # The host and the neighbour keep their space; the worker still writes the full one's files.
    outside = boxes.tmp / "host-file"
    outside.write_bytes(b"h" * (4 * 1024 * 1024))
    assert outside.stat().st_size == 4 * 1024 * 1024
    code, out = sh(provider, neighbour, "dd if=/dev/zero of=/workspace/ok bs=1M count=16")
    assert code == 0, out
    # A full workspace is told so at once, and can still be used to free its space.
    with pytest.raises(PermanentError) as refused:
        provider.write_files(full, [("notes.txt", b"x" * 1024 * 1024)])
    assert refused.value.code == ErrorCode.PROVIDER_NO_SPACE, refused.value
    assert sh(provider, full, "rm /workspace/big") == (0, "")
    provider.write_files(full, [("notes.txt", b"written by the worker")])
    assert provider.read_files(full, ["notes.txt"])["notes.txt"] == b"written by the worker"

    # /tmp and /var/tmp are tmpfs of the configured size, and fill up like a disk.
    code, out = sh(provider, neighbour, "df -m --output=size,fstype /tmp /var/tmp | tail -n +2")
    sizes = [line.split() for line in out.splitlines()]
    assert code == 0 and sizes == [[str(TMP_MB), "tmpfs"]] * 2, out
    code, out = sh(provider, neighbour, "head -c 40M /dev/zero > /tmp/fill")
    assert code != 0 and "No space left on device" in out, out

    # Destroying gives everything back: no mount, no image.
    for _, sb in list(boxes.made):
        provider.destroy(sb)
    boxes.made.clear()
    assert mounts_under(provider.root) == []
    assert list((provider.root / DISKS).iterdir()) == []


def test_cpu_limit_holds_and_shows_in_the_cgroup(boxes: Boxes) -> None:
    provider = boxes.provider(workspace_local_max_cpus=0.2)
    sb = boxes.sandbox(provider)
    # bash's `time` reports the CPU a 1.5 s busy loop got: a fifth of one CPU, not a whole one.
    code, out = sh(
        provider,
        sb,
        "TIMEFORMAT='%U %S'; time (timeout 1.5 sh -c 'while :; do :; done')",
    )
    assert code == 124, out  # the loop ran its whole time
    user, system = (float(v) for v in out.split()[-2:])
    assert user + system < 0.5, out
    limits = SandboxLimits(provider.settings, sb.sandbox_id)
    files = {kind: path for kind, path in limits.cgroups}
    if "cpu" in files:  # cgroup v1
        assert (files["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (files["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
    else:
        assert (files["v2"] / "cpu.max").read_text().split() == ["20000", "100000"]


def test_a_lost_mount_comes_back_and_orphan_disks_are_swept(boxes: Boxes) -> None:
    provider = boxes.provider(workspace_local_max_disk_mb=DISK_MB)
    sb = boxes.sandbox(provider)
    provider.write_files(sb, [("kept.txt", b"kept")])
    # A host restart: the image is still there, the mount is not.
    disk = SandboxDisk(provider.root, sb.sandbox_id)
    subprocess.run(["umount", str(disk.point)], check=True)
    assert not (disk.point / "tree").exists()
    code, out = sh(provider, sb, "cat kept.txt; df -m --output=size /workspace | tail -1")
    assert code == 0 and out.split()[0] == "kept" and int(out.split()[1]) < 2 * DISK_MB, out

    # A create killed after making its disk, and a sandbox directory deleted by hand.
    for name in ("killed-00000000", "deleted-00000000"):
        SandboxDisk(provider.root, name).create(DISK_MB)
    deleted = SandboxDisk(provider.root, "deleted-00000000")
    subprocess.run(["umount", str(deleted.point)], check=True)
    shutil.rmtree(deleted.base)
    ports = PortRegistry(provider.root, 45990, 45999)
    assert sweep_disks(provider.root, ports) == []  # too young: a create may be under way
    old = time.time() - 3600
    for name in ("killed-00000000", "deleted-00000000", sb.sandbox_id):
        os.utime(provider.root / DISKS / f"{name}.img", (old, old))
    assert sorted(sweep_disks(provider.root, ports)) == ["deleted-00000000", "killed-00000000"]
    assert sorted(p.name for p in (provider.root / DISKS).iterdir()) == [f"{sb.sandbox_id}.img"]
    assert [m for m in mounts_under(provider.root) if m.endswith("/disk")] == [str(disk.point)]
    assert provider.read_files(sb, ["kept.txt"])["kept.txt"] == b"kept"


def test_the_worker_refuses_to_start_without_limits_unless_allowed(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """Here with the cgroup hierarchies hidden (a private mount namespace with an empty
    /sys/fs/cgroup): no CPU, memory or process cap can be set. The worker says so in one line
    and exits with the configuration code, `doctor` fails naming what is missing, and with
    WORKSPACE_LOCAL_UNLIMITED=true the worker starts."""
    env = {
        **isolated_env,
        "WORKSPACE_RUNTIME": "local",
        "WORKSPACE_LOCAL_ISOLATION": "bwrap",
        "WORKSPACE_ROOT": str(tmp_path / "ws"),
    }
    hidden = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"]
    hidden += ['mount -t tmpfs none /sys/fs/cgroup && exec "$@"', "sh", *QAI]
    proc = subprocess.run(
        [*hidden, "worker"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be limited" in lines[0], lines
    assert "cpu" in lines[0] and "WORKSPACE_LOCAL_UNLIMITED=true" in lines[0]

    doctor = subprocess.run(
        [*hidden, "doctor", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    limits = checks["local limits"]
    assert doctor.returncode == 1 and limits["status"] == "fail", limits
    assert "cpu NOT enforced" in limits["detail"] and "disk " in limits["detail"], limits

    allowed = Proc(
        [*hidden, "worker", "--concurrency=1"],
        {**env, "WORKSPACE_LOCAL_UNLIMITED": "true"},
        tmp_path / "worker.log",
        cwd=tmp_path,
    )
    try:
        allowed.wait_for_log(" ready.", timeout=60)
    finally:
        allowed.stop()
