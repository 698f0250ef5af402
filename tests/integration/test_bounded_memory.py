"""A sandbox decides how big its files are: the worker's memory must not follow.

A real `qai-jobs worker` (local provider, bubblewrap) runs a workspace whose command made a
sparse 50 GB file (``truncate -s 50G``: free for the sandbox) and a sparse 512 MiB one. Every
step that touches files (read, write's hashing, snapshot, sleep, wake's repair from the sleep
snapshot) runs while a sampler watches the resident memory of the worker's whole process tree.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qai_jobs.client import WorkspaceClient
from qai_jobs.errors import ActionFailed
from qai_jobs.proctab import descendants
from qai_jobs.providers.local.layout import Layout
from tests.conftest import settings_for
from tests.support.procs import Proc, start_worker

WAIT = 180  # hang guard only
MIB = 1024 * 1024
MID = 512 * MIB  # under the snapshot cap (1 GiB by default): hashed and archived, streamed
BIG = 50 * 1024 * MIB
MAX_FILE = 2 * MIB
MAX_READ = 5 * MIB // 2
# What the worker's tree may grow by over its idle size. Reading the 512 MiB file whole, as a
# snapshot once did, would be well over it; a streamed pass holds a megabyte or two.
RSS_HEADROOM = 160 * MIB


@pytest.fixture(scope="module")
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {
        **isolated_env,
        "WORKSPACE_RUNTIME": "local",
        "WORKSPACE_MAX_FILE_BYTES": str(MAX_FILE),
        "WORKSPACE_MAX_ACTION_BYTES": str(MAX_READ),
    }


@pytest.fixture(scope="module")
def worker(env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(env, log_dir, concurrency=1, name="bounded-memory")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def lc(env: dict[str, str], worker: Proc) -> WorkspaceClient:
    return WorkspaceClient(settings_for(env))


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """The summed RSS of a process and all its descendants, every 50 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return sum(rss(p) for p in {self.pid} | descendants(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def failure(handle: Any) -> dict[str, Any]:
    with pytest.raises(ActionFailed) as info:
        handle.wait(WAIT)
    error: dict[str, Any] = info.value.error
    return error


def timed(what: str, handle: Any, figures: dict[str, float]) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = handle.wait(WAIT)
    figures[what] = time.monotonic() - started
    return result


def zeros_sha256(size: int) -> str:
    digest, block = hashlib.sha256(), bytes(MIB)
    for _ in range(size // MIB):
        digest.update(block)
    return digest.hexdigest()


def test_a_sparse_50_gb_file_never_enters_the_worker(
    lc: WorkspaceClient, worker: Proc, env: dict[str, str]
) -> None:
    project = f"mem-{uuid.uuid4().hex[:10]}"
    figures: dict[str, float] = {}
    lc.ensure(project, files={"a.txt": "hello\n"}, start_dev_server=False).wait(WAIT)
    made = lc.command(
        project,
        "truncate -s 50G big.bin && truncate -s 512M mid.bin && "
        "head -c 1572864 /dev/urandom > r1.bin && cp r1.bin r2.bin && ls -ls big.bin",
        timeout_s=60,
    ).wait(WAIT)
    assert made["exit_code"] == 0, made
    tree = Layout(Path(env["WORKSPACE_ROOT"]) / lc.get_workspace(project)["sandbox_id"]).tree
    assert (tree / "big.bin").stat().st_size == BIG
    assert (tree / "big.bin").stat().st_blocks == 0  # sparse: the sandbox paid nothing

    with RssSampler(worker.pid) as sampler:
        idle = sampler.now()
        # read: refused from the file's size, before a byte is read.
        started = time.monotonic()
        error = failure(lc.read(project, ["a.txt", "big.bin"]))
        figures["read 50 GB (refused)"] = time.monotonic() - started
        assert error["code"] == "file_too_large" and "big.bin" in error["message"], error
        assert error["retryable"] is False
        error = failure(lc.read(project, ["mid.bin"]))
        assert error["code"] == "file_too_large", error
        # Each file is under the per-file limit, together they are over the read's.
        error = failure(lc.read(project, ["r1.bin", "r2.bin"]))
        assert error["code"] == "read_too_large", error
        one = lc.read(project, ["r1.bin"]).wait(WAIT)
        assert one["files"][0]["size"] == 1572864 and one["files"][0]["encoding"] == "base64"

        # write: the sync hashes what it is about to overwrite; the 50 GB file is not hashed.
        wrote = timed("write over 50 GB", lc.write(project, files={"big.bin": "small\n"}), figures)
        assert wrote["files_written"] == 1
        assert (tree / "big.bin").read_bytes() == b"small\n"
        again = lc.command(project, "truncate -s 50G big.bin", timeout_s=30).wait(WAIT)
        assert again["exit_code"] == 0

        # snapshot and sleep: the 512 MiB file streams through the hash and the archive; the
        # 50 GB one (over the 1 GiB cap) is left where it is.
        timed("snapshot", lc.snapshot(project), figures)
        slept = timed("sleep", lc.sleep(project), figures)
        assert slept["snapshot_id"] and lc.get_workspace(project)["status"] == "sleeping"

        # wake: files lost while asleep come back from the sleep snapshot, streamed.
        (tree / "mid.bin").unlink()
        (tree / "a.txt").unlink()
        timed("wake with repair", lc.wake(project), figures)
        peak = sampler.peak
    assert (tree / "a.txt").read_text() == "hello\n"
    assert (tree / "mid.bin").stat().st_size == MID
    with open(tree / "mid.bin", "rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == zeros_sha256(MID)
    assert (tree / "big.bin").stat().st_size == BIG  # never archived, never removed
    figures["worker tree RSS idle MiB"] = idle / MIB
    figures["worker tree RSS peak MiB"] = peak / MIB
    print("\nbounded memory:", {k: round(v, 2) for k, v in figures.items()})
    assert peak - idle < RSS_HEADROOM, figures
    os.truncate(tree / "mid.bin", 0)  # give the disk back now rather than at teardown
