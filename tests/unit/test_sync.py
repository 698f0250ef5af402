"""The producer's half of delta sync: what differs from a recorded manifest."""

from __future__ import annotations

import base64
import hashlib

import pytest

from qai_jobs.errors import ActionFailed, ValidationFailed
from qai_jobs.sync import delta_sync, entry_sha256, plan_delta, wire_entries


def h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_plan_delta_keeps_changed_and_new_files_and_deletes_only_recorded_ones() -> None:
    entries = wire_entries({"same.txt": "s", "changed.txt": "new", "added.txt": "a"})
    recorded = {"same.txt": h(b"s"), "changed.txt": h(b"old"), "gone.txt": h(b"g")}
    delta = plan_delta(entries, recorded, delete_missing=True)
    assert [e["path"] for e in delta.files] == ["changed.txt", "added.txt"]
    assert delta.delete == ["gone.txt"] and delta.unchanged == 1
    assert plan_delta(entries, recorded, delete_missing=False).delete == []


def test_binary_entries_hash_their_decoded_bytes() -> None:
    blob = bytes(range(256))
    entry = {"path": "b.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64"}
    assert entry_sha256(entry, 0) == h(blob)
    with pytest.raises(ValidationFailed, match=r"files\[3\].*not valid base64"):
        entry_sha256({**entry, "content": "!!"}, 3)
    with pytest.raises(ValidationFailed, match=r"files\[0\]"):
        entry_sha256({"path": "x", "content": 5}, 0)  # type: ignore[dict-item]


def test_delta_sync_falls_back_to_the_full_tree_only_when_stale() -> None:
    sent: list[dict[str, object]] = []
    stale = [True]

    def submit(part: dict[str, object]) -> dict[str, object]:
        sent.append(part)
        if "manifest_base" in part and stale[0]:
            raise ActionFailed("a1", {"code": "manifest_stale", "message": "changed"})
        return {"ok": True}

    files = {"a": "1", "b": "2"}
    recorded = {"manifest_seq": 4, "files": {"a": h(b"1"), "b": h(b"old")}}
    assert delta_sync(lambda: recorded, submit, files, {}, delete_missing=True) == {"ok": True}
    assert sent[0] == {"files": [{"path": "b", "content": "2"}], "delete": None, "manifest_base": 4}
    assert sent[1] == {"files": wire_entries(files), "delete": None}

    sent.clear()
    stale[0] = False
    delta_sync(lambda: recorded, submit, files, {}, delete_missing=True)
    assert len(sent) == 1
    with pytest.raises(ActionFailed):  # any other failure is the caller's
        delta_sync(
            lambda: recorded,
            lambda part: (_ for _ in ()).throw(ActionFailed("a2", {"code": "install_failed"})),
            files,
            {},
            delete_missing=True,
        )


def test_no_manifest_sends_everything() -> None:
    sent: list[dict[str, object]] = []
    delta_sync(
        lambda: {"manifest_seq": None, "files": {}},
        lambda p: sent.append(p) or {},
        {"a": "1"},
        {},
        delete_missing=True,
    )
    assert sent == [{"files": [{"path": "a", "content": "1"}], "delete": None}]


def test_paths_are_compared_as_the_worker_stores_them() -> None:
    assert [e["path"] for e in wire_entries({"./a.txt": "x", "src/./b.txt": "y"})] == [
        "a.txt",
        "src/b.txt",
    ]
    recorded = {"a.txt": h(b"x")}
    delta = plan_delta(wire_entries({"./a.txt": "x"}), recorded, delete_missing=True)
    assert delta.files == [] and delta.delete == []  # not "send ./a.txt, delete a.txt"
    with pytest.raises(ValidationFailed, match="appears twice"):
        wire_entries([{"path": "a.txt", "content": "1"}, {"path": "./a.txt", "content": "2"}])
    with pytest.raises(ValidationFailed, match=r"files\[0\].*'\.\.'"):
        wire_entries({"./../x": "1"})
