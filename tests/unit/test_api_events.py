"""The events stream's pieces without services: what a notification becomes, the bounded
buffer between Redis and a slow client, and event ids across reconnects."""

from __future__ import annotations

import json

from qai_jobs.api.events import _Buffer, _first_id, _parse


def _message(body: object) -> dict[str, object]:
    return {"type": "message", "data": json.dumps(body).encode()}


def test_notifications_become_events_and_junk_is_ignored() -> None:
    assert _parse(_message({"type": "done", "status": "succeeded"})) == ("done", "")
    event, data = _parse(_message({"type": "output", "stream": "stdout", "offset": 0, "data": "x"}))
    assert event == "output" and json.loads(data) == {"stream": "stdout", "offset": 0, "data": "x"}
    event, data = _parse(_message({"type": "progress", "stage": "running", "total": None}))
    assert event == "progress" and json.loads(data) == {"stage": "running", "total": None}
    for junk in (
        {"type": "subscribe", "data": 1},
        {"type": "message", "data": b"not json"},
        _message(["a", "list"]),
        _message({"type": "something-else"}),
        _message({"no": "type"}),
        "not even a dict",
    ):
        assert _parse(junk) is None


def test_the_buffer_is_bounded_in_bytes_but_always_takes_one_event() -> None:
    buffer = _Buffer(limit=100)
    buffer.put("output", "x" * 500)  # larger than the bound, but the buffer was empty
    assert buffer.size == 500 and buffer.dropped == 0
    buffer.put("output", "y")
    assert buffer.dropped == 1, "nothing more while over the bound"
    assert buffer.take() == ("output", "x" * 500)
    assert buffer.size == 0 and buffer.take() is None
    for i in range(10):
        buffer.put("output", f"{i:09d}")  # 10 x 9 bytes fit in 100
    buffer.put("progress", "z" * 20)
    assert buffer.dropped == 2 and len(buffer.items) == 10
    taken = [buffer.take() for _ in range(10)]
    assert taken == [("output", f"{i:09d}") for i in range(10)]
    assert buffer.wake.is_set()


def test_event_ids_continue_after_a_reconnect() -> None:
    assert _first_id(None) == 1
    assert _first_id("41") == 42
    for odd in ("", "abc", "-3", "1e9", "9" * 40):
        assert _first_id(odd) == 1
