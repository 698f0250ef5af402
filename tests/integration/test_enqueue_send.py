"""An enqueue's Celery message, sent after the commit by the process's sending thread: every
message reaches the broker by ``flush``, by interpreter exit, from a forked child, and a broker
that does not answer neither slows the enqueue nor loses the action (recovery sends it).

No worker runs on this module's Redis DB, so the messages stay in the queue to be read.
"""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from qai_jobs.client import WorkspaceClient
from qai_jobs.config import Settings
from qai_jobs.constants import RECORDED_HEADER
from tests.conftest import settings_for

QUEUE = "celery"  # the queue the producer sends to (celeryconfig's task_default_queue)


@pytest.fixture(scope="module")
def iso_settings(isolated_env: dict[str, str]) -> Settings:
    return settings_for(isolated_env)


@pytest.fixture
def queued(iso_settings: Settings) -> Any:
    """Reads the messages in the broker queue (task id -> message); empties it first."""
    r = redis.Redis.from_url(iso_settings.redis_url)
    r.delete(QUEUE)

    def read() -> dict[str, dict[str, Any]]:
        messages = [json.loads(raw) for raw in r.lrange(QUEUE, 0, -1)]
        return {m["headers"]["id"]: m for m in messages}

    return read


def test_flush_sends_every_message_with_its_action_id(
    iso_settings: Settings, queued: Any, project: str
) -> None:
    client = WorkspaceClient(iso_settings)
    # One project each: a project's later actions ride on its first message (see
    # test_coalesced_messages), so forty projects make forty messages.
    handles = [client.write(f"{project}-{i}", {"a.txt": str(i)}) for i in range(40)]
    assert client.flush(10)
    got = queued()
    assert set(got) == {str(h.id) for h in handles}
    for handle in handles:
        message = got[str(handle.id)]
        assert message["headers"]["task"] == "qai_jobs.write"
        assert message["headers"][RECORDED_HEADER] == 1
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert (args, kwargs) == ([], {"project_id": handle.project_id})


def test_inline_mode_has_sent_the_message_when_enqueue_returns(
    iso_settings: Settings, queued: Any, project: str
) -> None:
    client = WorkspaceClient(iso_settings.model_copy(update={"workspace_enqueue_send": "inline"}))
    for i in range(5):
        handle = client.write(f"{project}-{i}", {"a.txt": str(i)})
        assert str(handle.id) in queued()  # no flush


def test_a_script_that_exits_right_after_enqueueing_still_sends(
    isolated_env: dict[str, str], queued: Any, project: str
) -> None:
    # The send is slowed so that the message is still queued when the script ends: only the
    # flush at exit can deliver it (a daemon thread is cut off at exit).
    script = f"""
import time
from qai_jobs.client import WorkspaceClient, sender
publish = sender.Broker.publish
def slow(self, message):
    time.sleep(0.5)
    publish(self, message)
sender.Broker.publish = slow
handle = WorkspaceClient.from_env(_env_file=None).write({project!r}, {{"a.txt": "x"}})
print(handle.id)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=isolated_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    action_id = done.stdout.strip().splitlines()[-1]
    assert action_id in queued()


def _enqueue_in_child(client: WorkspaceClient, project: str, out: Any) -> None:
    # The parent's client, inherited through the fork: its pool and sending thread are the
    # parent's, and the child must make its own. A fork child leaves by os._exit (no atexit
    # flush), so it flushes itself.
    handle = client.write(f"{project}-child", {"a.txt": "child"})
    out.put((str(handle.id), client.flush(10)))


def test_a_forked_child_sends_through_its_own_thread(
    iso_settings: Settings, queued: Any, project: str
) -> None:
    client = WorkspaceClient(iso_settings)
    parent = client.write(project, {"a.txt": "parent"})  # the parent's thread and pool exist
    assert client.flush(10)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_enqueue_in_child, args=(client, project, out))
    child.start()
    child_id, flushed = out.get(timeout=30)
    child.join(30)
    assert flushed and child.exitcode == 0
    assert {str(parent.id), child_id} <= set(queued())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_broker_neither_slows_enqueue_nor_loses_the_action(
    iso_settings: Settings, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = iso_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{_closed_port()}/0"})
    client = WorkspaceClient(down)
    caplog.set_level(logging.WARNING, logger="qai_jobs.client.sender")
    handles = []
    for i in range(5):
        started = time.monotonic()
        handles.append(client.write(project, {"a.txt": str(i)}))
        # Postgres alone: generous for a loaded host, far below a broker connect timeout.
        assert time.monotonic() - started < 1.0
    assert client.flush(30)  # each failed send counts as done: left to recovery
    for h in handles:
        assert client.get_action(h.id)["status"] == "queued"
    warnings = [r for r in caplog.records if "broker unavailable" in r.getMessage()]
    assert len(warnings) == 1, "one warning per burst of failures, not one per message"
    assert "a.txt" not in warnings[0].getMessage()


def test_flush_without_any_enqueue_returns_at_once(iso_settings: Settings) -> None:
    started = time.monotonic()
    assert WorkspaceClient(iso_settings).flush(5)
    assert time.monotonic() - started < 1.0
