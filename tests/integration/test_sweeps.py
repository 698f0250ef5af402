"""Beat sweeps with real beat processes: idle sleep through the ordinary pipeline, and two beats
that never double-run a sweep."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis

from qai_jobs.config import Settings
from qai_jobs.constants import SWEEPS
from tests.integration.ops_support import (
    Receiver,
    env_for,
    events_of,
    isolated_env,
    settings_for,
    wait_until,
)

PERIOD = 0.5
IDLE_MINUTES = 0.02  # 1.2 s


@pytest.fixture(scope="module")
def base_env(base_env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield from isolated_env(base_env)


@pytest.fixture(scope="module")
def settings(base_env: dict[str, str]) -> Settings:
    return settings_for({**base_env, "WORKSPACE_SWEEP_SECONDS": str(PERIOD)})  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def client(settings: Settings) -> Any:
    from qai_jobs.client import WorkspaceClient

    return WorkspaceClient(settings)


def runs(settings: Settings, name: str) -> list[tuple[int, float]]:
    """The sweep's own record of its runs: (period number, time) per run."""
    raw = redis.Redis.from_url(settings.redis_url).lrange(f"qai:sweeps:runs:{name}", 0, -1)
    out = []
    for item in raw:
        period, at = item.decode().split(":")
        out.append((int(period), float(at)))
    return sorted(out)


def test_idle_workspace_sleeps_once_and_two_beats_run_each_sweep_once_per_period(
    workers: Any, beats: Any, client: Any, settings: Settings, project: str
) -> None:
    receiver = Receiver(fail_first=0)
    try:
        env = env_for(
            receiver.url("/flaky"),
            WORKSPACE_SWEEP_SECONDS=str(PERIOD),
            WORKSPACE_INACTIVITY_MINUTES=str(IDLE_MINUTES),
        )
        worker = workers(concurrency=3, **env)
        beat_a, beat_b = beats(**env), beats(**env)
        started = time.time()
        files = {"src/app.js": "console.log('hi')", "README.md": "# kept across sleep\n"}
        client.ensure(project, files=files, start_dev_server=False).wait(timeout=30)
        idle_since = datetime.fromisoformat(client.get_workspace(project)["last_activity_at"])

        wait_until(
            lambda: client.get_workspace(project)["status"] == "sleeping",
            timeout=20,
            what="idle sleep",
        )
        sleeps = [a for a in client.list_actions(project) if a["kind"] == "sleep"]
        # One sleep for this idle spell, although two beats ran the sweep many times since.
        assert len(sleeps) == 1 and sleeps[0]["status"] == "succeeded"
        enqueued_after_idle = (
            datetime.fromisoformat(sleeps[0]["created_at"]) - idle_since
        ).total_seconds()
        # Enqueued by a sweep after the idle time, within a few periods: the slack is for a
        # loaded CI host, where a beat's tick and the sweep's query have been seen 0.8 s late.
        assert IDLE_MINUTES * 60 <= enqueued_after_idle <= IDLE_MINUTES * 60 + 4 * PERIOD + 0.5
        sleeping = wait_until(
            lambda: [e for e in events_of(receiver, project) if e["type"] == "workspace.sleeping"],
            what="workspace.sleeping delivered",
        )
        assert sleeping[0]["data"]["action_id"] == sleeps[0]["id"]

        # The next command wakes it, files intact.
        got = client.read(project, paths=sorted(files)).wait(timeout=30)
        assert {f["path"]: f["content"] for f in got["files"]} == files and got["missing"] == []
        assert client.get_workspace(project)["status"] == "ready"

        # Let both beats run for a dozen periods in all.
        time.sleep(max(0.0, started + 12 * PERIOD - time.time()))
        beat_a.stop()
        beat_b.stop()
        time.sleep(PERIOD)  # the last messages are consumed
        for beat in (beat_a, beat_b):
            assert beat.log().count("Sending due task sweep-idle") >= 8, beat.log()[-2000:]
        received = sum(
            1
            for line in worker.log().splitlines()
            if "qai_jobs.beat.idle[" in line and "received" in line
        )
        for name in SWEEPS:
            record = runs(settings, name)
            periods = [p for p, _ in record]
            assert len(periods) == len(set(periods)), f"{name} ran twice in one period: {record}"
            assert len(record) >= 8, f"{name} ran only {len(record)} times in 12 periods"
        # Both beats' messages arrived, about twice as many as the runs they produced.
        assert received >= len(runs(settings, "idle")) + 6
    finally:
        receiver.close()
