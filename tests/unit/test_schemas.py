"""Bad input gets a clear error naming the field (validated before anything is written)."""

from __future__ import annotations

import base64

import pytest

from qai_jobs.errors import PayloadTooLarge, ValidationFailed
from qai_jobs.schemas import check_project_id
from qai_jobs.validation import PayloadLimits, payload_to_json, validate_payload

BAD_PAYLOADS = [
    ("write", {"files": {"/etc/passwd": "x"}}, "files[0].path", "absolute"),
    ("write", {"files": {"../up.txt": "x"}}, "files[0].path", ".."),
    ("write", {"files": {"a//b.txt": "x"}}, "files[0].path", "empty segment"),
    ("write", {"files": {"a\x00b": "x"}}, "files", "NUL"),
    ("restore", {"snapshot_id": "a\x00b"}, "snapshot_id", "NUL"),
    ("write", {"files": {"": "x"}}, "files[0].path", "empty"),
    (
        "write",
        {"files": [{"path": "a", "content": "!!", "encoding": "base64"}]},
        "files[0]",
        "base64",
    ),
    (
        "write",
        {"files": [{"path": "a", "content": "x", "encoding": "latin-1"}]},
        "files[0].encoding",
        "",
    ),
    ("write", {}, "files", "required"),
    ("write", {"files": {"a": "x"}, "delete": ["../b"]}, "delete", ".."),
    ("read", {"paths": []}, "paths", ""),
    ("read", {"paths": ["/abs"]}, "paths", "absolute"),
    ("command", {}, "cmd", "exactly one of cmd or argv"),
    ("command", {"cmd": "ls", "argv": ["ls"]}, "cmd", "exactly one"),
    ("command", {"cmd": "ls", "timeout_s": -1}, "timeout_s", ""),
    ("command", {"cmd": "ls", "timeout_s": 4000}, "timeout_s", "3600"),
    ("command", {"cmd": "ls", "env": {"1BAD": "x"}}, "env", "invalid"),
    ("command", {"cmd": "ls", "cwd": "../x"}, "cwd", ".."),
    ("ensure", {"port": 70000}, "port", ""),
    ("ensure", {"repo": {"url": "https://x", "ref": "-oops"}}, "repo.ref", "git ref"),
    ("ensure", {"bogus": 1}, "bogus", "unknown field"),
    ("restore", {}, "snapshot_id", "required"),
    ("logs", {"tail": 0}, "tail", ""),
]


@pytest.mark.parametrize(("kind", "payload", "field", "words"), BAD_PAYLOADS)
def test_bad_payload_names_the_field(kind: str, payload: dict, field: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_payload(kind, payload)
    assert info.value.field == field
    assert field in info.value.message or field == "payload"
    assert words.lower() in info.value.message.lower()


@pytest.mark.parametrize("kind", ["explode", ["ensure"], None, 3])
def test_unknown_kind(kind: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_payload(kind, {})
    assert info.value.field == "kind"
    assert "ensure" in info.value.message


@pytest.mark.parametrize(
    "project_id", ["", "-starts-with-dash", "has space", "x" * 129, "a/b", None, 5]
)
def test_bad_project_ids(project_id: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_project_id(project_id)
    assert info.value.field == "project_id"


@pytest.mark.parametrize("project_id", ["a", "A.b_c-d", "9" * 128, "proj-1"])
def test_good_project_ids(project_id: str) -> None:
    assert check_project_id(project_id) == project_id


def test_limits_are_enforced_per_file_count_and_total() -> None:
    limits = PayloadLimits(max_file_bytes=10, max_action_bytes=25, max_files=3)
    with pytest.raises(PayloadTooLarge) as info:
        validate_payload("write", {"files": {"big": "x" * 11}}, limits)
    assert info.value.field == "files[0]"
    with pytest.raises(PayloadTooLarge):
        validate_payload("write", {"files": {f"f{i}": "x" for i in range(4)}}, limits)
    with pytest.raises(PayloadTooLarge):
        validate_payload("write", {"files": {"a": "x" * 10, "b": "x" * 10, "c": "x" * 10}}, limits)


def test_good_payloads_normalise() -> None:
    parsed = validate_payload(
        "write",
        {
            "files": [
                {
                    "path": "./src/a.txt",
                    "content": base64.b64encode(b"\x00\xff").decode(),
                    "encoding": "base64",
                }
            ]
        },
    )
    entry = parsed.files[0]  # type: ignore[attr-defined]
    assert entry.path == "src/a.txt"
    assert entry.data() == b"\x00\xff"
    mapping = validate_payload("ensure", {"files": {"a.js": "x"}, "env": {"API_KEY": "s"}})
    assert mapping.files[0].path == "a.js"  # type: ignore[attr-defined]


def test_bytes_content_travels_as_base64() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00binary"
    parsed = validate_payload("write", {"files": {"logo.png": png, "a.txt": "text"}})
    stored = payload_to_json(parsed)
    assert stored["files"][0] == {
        "path": "logo.png",
        "content": base64.b64encode(png).decode(),
        "encoding": "base64",
    }
    assert parsed.files[0].data() == png  # type: ignore[attr-defined]
    entry = {"path": "x.bin", "content": bytearray(b"\x00\x01")}
    assert validate_payload("write", {"files": [entry]}).files[0].data() == b"\x00\x01"  # type: ignore[attr-defined]


def test_bad_input_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"files\[0\]\.path") as info:
        validate_payload("write", {"files": {"/etc/passwd": "x"}})
    assert isinstance(info.value, ValidationFailed) and info.value.field == "files[0].path"


def test_the_package_exports_its_validation_error() -> None:
    import qai_jobs
    from qai_jobs.errors import QaiJobsError

    assert qai_jobs.ValidationFailed is ValidationFailed
    assert issubclass(ValidationFailed, QaiJobsError) and issubclass(ValidationFailed, ValueError)
