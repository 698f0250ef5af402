"""Real `qai-jobs` processes for integration and acceptance tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
QAI = [sys.executable, "-m", "qai_jobs"]


class Proc:
    def __init__(self, args: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None):
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd or REPO,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.args} exited with {self.popen.returncode}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"{self.args} did not log {text!r} in {timeout}s:\n{self.log()[-3000:]}")

    def wait_for_http(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(url, timeout=1)
                return
            except httpx.HTTPError:
                pass
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.args} exited with {self.popen.returncode}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"{url} did not answer in {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and its pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._log.close()


def start_worker(
    env: Mapping[str, str],
    log_dir: Path,
    concurrency: int = 2,
    name: str | None = None,
    prefix: Sequence[str] = (),
) -> Proc:
    """A `qai-jobs worker`; ``prefix`` runs it through another command (``nsenter ...``)."""
    name = name or f"w{time.monotonic_ns()}"
    proc = Proc(
        [
            *prefix,
            *QAI,
            "worker",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            "--loglevel=INFO",
        ],
        env,
        log_dir / f"{name}.log",
    )
    proc.wait_for_log(" ready.", timeout=60)
    return proc


def start_beat(env: Mapping[str, str], log_dir: Path, name: str = "beat") -> Proc:
    proc = Proc(
        [*QAI, "beat", "--loglevel=INFO"], env, log_dir / f"{name}-{time.monotonic_ns()}.log"
    )
    proc.wait_for_log("beat: Starting", timeout=60)
    return proc
