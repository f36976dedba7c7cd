"""Tests for secureserve.lockfile: canonical bytes, strict parsing and ``Lock.check``."""

from __future__ import annotations

import hashlib
import json

import pytest

from secureserve.errors import ArtifactError, ConfigError
from secureserve.lockfile import (
    LOCK_FILENAME,
    LOCK_FORMAT,
    MISSING_LOCK,
    LockEntry,
    build_lock,
    encode_lock,
    parse_lock,
    read_lock,
    write_lock,
)

SOURCE = "project/secureserve.lock"
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"bb").hexdigest()


def _entry(data: bytes, fmt: str = "unknown") -> LockEntry:
    return LockEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data), format=fmt)


RECORDS = {
    "z.onnx": _entry(b"z" * 10, "onnx"),
    "a/nested/w.safetensors": _entry(b"w" * 3, "safetensors"),
    "labels.json": _entry(b"[]"),
}


def _document(files: dict[str, object] | None = None, **top: object) -> dict[str, object]:
    """A valid lock document as a dict, with ``files`` and top-level fields replaced."""
    doc: dict[str, object] = {
        "files": files if files is not None else {"a": {"format": "x", "sha256": SHA_A, "size": 1}},
        "format": LOCK_FORMAT,
    }
    doc.update(top)
    return doc


def _refused(data: bytes) -> str:
    """Parse ``data``, expect a ConfigError naming the source and the fix; return its text."""
    with pytest.raises(ConfigError) as caught:
        parse_lock(data, source=SOURCE)
    message = str(caught.value)
    assert message.startswith(SOURCE), message
    assert "secureserve lock" in message, message
    return message


# --------------------------------------------------------------------------- canonical bytes


def test_build_lock_same_records_same_bytes_in_any_order():
    """The same entries in a different insertion order give byte-identical locks."""
    reversed_records = dict(reversed(list(RECORDS.items())))
    assert build_lock(RECORDS) == build_lock(reversed_records)
    assert build_lock(RECORDS) == build_lock(dict(RECORDS))


def test_build_lock_keys_sorted_at_every_level():
    """Top-level fields, file names and entry fields all appear in sorted order."""
    text = build_lock(RECORDS).decode("utf-8")
    doc = json.loads(text)
    assert list(doc) == ["files", "format"]
    assert list(doc["files"]) == sorted(RECORDS)
    for entry in doc["files"].values():
        assert list(entry) == ["format", "sha256", "size"]
    assert doc["format"] == LOCK_FORMAT


def test_build_lock_lf_and_single_trailing_newline():
    """Lines end in LF only, the file ends in exactly one newline and is indented JSON."""
    data = build_lock(RECORDS)
    assert b"\r" not in data
    assert data.endswith(b"}\n")
    assert not data.endswith(b"\n\n")
    assert b'\n  "files": {\n' in data


def test_encode_lock_round_trips_byte_for_byte():
    """Parsing canonical bytes and encoding them again gives the very same bytes."""
    data = build_lock(RECORDS)
    assert encode_lock(parse_lock(data)) == data


def test_write_lock_writes_exact_bytes(tmp_path):
    """``write_lock`` stores the bytes unchanged, leaves no temp file and reads back equal."""
    data = build_lock(RECORDS)
    path = tmp_path / LOCK_FILENAME
    write_lock(path, data)
    write_lock(path, data)  # replacing is fine and still exact
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILENAME]
    lock, raw = read_lock(path)
    assert raw == data
    assert lock.files["labels.json"] == RECORDS["labels.json"]


@pytest.mark.parametrize("name", ["../x", "/abs", "a\\b", "a/./b", "", "a//b", "x/.."])
def test_build_lock_refuses_unsafe_name(name):
    """``build_lock`` never writes a name that is not a clean relative POSIX path."""
    with pytest.raises(ArtifactError) as caught:
        build_lock({name: _entry(b"a")})
    assert caught.value.reason == "name-invalid"


# --------------------------------------------------------------------------- parse_lock refusals


def test_parse_lock_accepts_valid_document():
    """A well-formed lock parses into its entries (the control for the refusals below)."""
    lock = parse_lock(json.dumps(_document()).encode(), source=SOURCE)
    assert lock.format == LOCK_FORMAT
    assert lock.files["a"] == LockEntry(sha256=SHA_A, size=1, format="x")


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b'{"files": {}, "format": "secureserve-lock/v1"', b"[]", b"\xff\xfe"],
    ids=["empty", "text", "truncated", "array", "not-utf8"],
)
def test_parse_lock_refuses_not_json(data):
    """Bytes that are not a JSON lock object are refused."""
    _refused(data)


def test_parse_lock_refuses_unknown_top_level_field():
    """An extra top-level field (a typo or an injected option) is refused."""
    message = _refused(json.dumps(_document(signed=True)).encode())
    assert "signed" in message


def test_parse_lock_refuses_unknown_entry_field():
    """An extra field in a file entry is refused."""
    files = {"a": {"format": "x", "sha256": SHA_A, "size": 1, "trusted": True}}
    message = _refused(json.dumps(_document(files)).encode())
    assert "trusted" in message


@pytest.mark.parametrize(
    "data",
    [
        b'{"files": {}, "format": "secureserve-lock/v1", "format": "secureserve-lock/v1"}',
        (
            b'{"files": {"a": {"format": "x", "sha256": "' + SHA_B.encode() + b'", "size": 2},'
            b' "a": {"format": "x", "sha256": "' + SHA_A.encode() + b'", "size": 1}},'
            b' "format": "secureserve-lock/v1"}'
        ),
        (
            b'{"files": {"a": {"format": "x", "sha256": "' + SHA_A.encode() + b'", "size": 1,'
            b' "size": 1}}, "format": "secureserve-lock/v1"}'
        ),
        b'{"files": {}, "format": "secureserve-lock/v1", "\\u0066ormat": "secureserve-lock/v1"}',
    ],
    ids=["top-level", "file-name", "entry-field", "escaped"],
)
def test_parse_lock_refuses_duplicate_key(data):
    """A repeated key anywhere is refused (parsers disagree on which one wins)."""
    message = _refused(data)
    assert "repeats a key" in message


@pytest.mark.parametrize("fmt", ["secureserve-lock/v2", "", "SECURESERVE-LOCK/V1"])
def test_parse_lock_refuses_wrong_format_string(fmt):
    """Only the exact format string ``secureserve-lock/v1`` is accepted."""
    message = _refused(json.dumps(_document(format=fmt)).encode())
    assert LOCK_FORMAT in message


@pytest.mark.parametrize(
    "sha256",
    [SHA_A.upper(), SHA_A[:63], SHA_A + "0", "g" * 64, "", " " + SHA_A[1:], SHA_A[:63] + "\n"],
    ids=["upper", "short", "long", "not-hex", "empty", "space", "newline"],
)
def test_parse_lock_refuses_malformed_sha256(sha256):
    """A sha256 that is not exactly 64 lowercase hex digits is refused, naming the file."""
    files = {"model.onnx": {"format": "onnx", "sha256": sha256, "size": 1}}
    message = _refused(json.dumps(_document(files)).encode())
    assert "model.onnx" in message


@pytest.mark.parametrize("size", [-1, 1.5, "1", None, True])
def test_parse_lock_refuses_bad_size(size):
    """A negative, fractional, string, null or boolean size is refused."""
    files = {"a": {"format": "x", "sha256": SHA_A, "size": size}}
    _refused(json.dumps(_document(files)).encode())


@pytest.mark.parametrize("name", ["../x", "/abs", "a\\b", "a/./b", "", "a//b", "a/\u0000"])
def test_parse_lock_refuses_unsafe_name(name):
    """File names must be clean relative POSIX paths inside the model folder."""
    files = {name: {"format": "x", "sha256": SHA_A, "size": 1}}
    message = _refused(json.dumps(_document(files)).encode())
    assert "unsafe path" in message


def test_parse_lock_refuses_oversize_file():
    """A lock over 16 MiB is refused before it is decoded."""
    data = json.dumps(_document()).encode()
    data += b" " * (16 * 1024 * 1024 + 1 - len(data))
    message = _refused(data)
    assert "larger than" in message


def test_read_lock_missing_file_says_run_lock(tmp_path):
    """A missing lock file is a ConfigError naming the path and ``secureserve lock``."""
    path = tmp_path / LOCK_FILENAME
    with pytest.raises(ConfigError) as caught:
        read_lock(path)
    assert str(path) in str(caught.value)
    assert "secureserve lock" in str(caught.value)


# --------------------------------------------------------------------------- Lock.check


LOCK = parse_lock(build_lock({"iris.onnx": _entry(b"onnx-bytes", "onnx")}))


def test_lock_check_accepts_matching_file():
    """A listed file with its size and sha256 passes (the control for the refusals)."""
    data = b"onnx-bytes"
    LOCK.check("iris.onnx", size=len(data))
    LOCK.check("iris.onnx", size=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_lock_check_unlisted_file_is_not_locked():
    """A file the lock does not list is refused with reason ``not-locked`` and the fix."""
    with pytest.raises(ArtifactError) as caught:
        LOCK.check("extra.json", size=2)
    assert caught.value.reason == "not-locked"
    assert caught.value.name == "extra.json"
    message = str(caught.value)
    assert message.startswith("extra.json: ")
    assert LOCK_FILENAME in message
    assert "secureserve lock" in message


@pytest.mark.parametrize(
    ("size", "sha256", "shown"),
    [
        (11, None, "size 11"),
        (10, SHA_B, f"sha256 {SHA_B}"),
    ],
    ids=["size", "sha256"],
)
def test_lock_check_changed_file_is_lock_mismatch(size, sha256, shown):
    """A wrong size or sha256 is ``lock-mismatch``; the message names the file and the fix."""
    with pytest.raises(ArtifactError) as caught:
        LOCK.check("iris.onnx", size=size, sha256=sha256)
    assert caught.value.reason == "lock-mismatch"
    message = str(caught.value)
    assert message.startswith("iris.onnx: ")
    assert LOCK_FILENAME in message
    assert shown in message
    assert "Restore the released file" in message
    assert "re-lock" in message


@pytest.mark.parametrize("name", ["iris.onnx", "anything"])
def test_missing_lock_refuses_every_file_with_no_lock(name):
    """``MISSING_LOCK`` refuses any name with reason ``no-lock`` and says to run lock."""
    with pytest.raises(ArtifactError) as caught:
        MISSING_LOCK.check(name, size=10, sha256=SHA_A)
    assert caught.value.reason == "no-lock"
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "secureserve lock" in message
    assert LOCK_FILENAME in message
