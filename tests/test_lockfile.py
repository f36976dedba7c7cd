"""Tests for secureserve.lockfile: canonical bytes, strict parsing and ``Lock.check``.

v1 is the lock of one model folder; v2 (several models) has one section per model
folder, each parsed by the same rules, and ``folder_lock`` gives a folder's ``Lock``.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import EXAMPLES

from secureserve.errors import ArtifactError, ConfigError
from secureserve.lockfile import (
    FOLDERS_LOCK_FORMAT,
    LOCK_FILENAME,
    LOCK_FORMAT,
    MISSING_LOCK,
    FoldersLock,
    Lock,
    LockEntry,
    build_folders_lock,
    build_lock,
    check_layout,
    encode_lock,
    folder_lock,
    parse_lock,
    parse_lock_file,
    read_lock,
    read_lock_file,
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


# --------------------------------------------------------------------------- v1 bytes, pinned

ONE = {"m.onnx": _entry(b"m", "onnx")}
SHA_M = hashlib.sha256(b"m").hexdigest()
V1_BYTES = (
    b'{\n  "files": {\n    "m.onnx": {\n      "format": "onnx",\n'
    b'      "sha256": "' + SHA_M.encode() + b'",\n      "size": 1\n    }\n  },\n'
    b'  "format": "secureserve-lock/v1"\n}\n'
)


def test_build_lock_v1_bytes_are_unchanged():
    """A one-model lock is byte for byte what earlier releases wrote (signatures still hold)."""
    assert build_lock(ONE) == V1_BYTES
    assert parse_lock_file(V1_BYTES) == parse_lock(V1_BYTES)


@pytest.mark.parametrize("example", ["iris", "digits-safetensors"])
def test_shipped_v1_locks_read_as_v1_and_encode_to_the_same_bytes(example):
    """The examples' signed v1 locks parse through ``parse_lock_file`` and re-encode exactly."""
    data = (EXAMPLES / example / LOCK_FILENAME).read_bytes()
    lock = parse_lock_file(data)
    assert isinstance(lock, Lock)
    assert encode_lock(lock) == data


# --------------------------------------------------------------------------- v2 bytes

FOLDERS = {
    "models/iris": {"iris.onnx": _entry(b"onnx-bytes", "onnx"), "labels.json": _entry(b"[]")},
    "models/digits": {"digits.safetensors": _entry(b"w" * 3, "safetensors")},
}
V2_BYTES = (
    b'{\n  "folders": {\n    "models/a": {\n      "files": {}\n    },\n'
    b'    "models/b": {\n      "files": {\n        "m.onnx": {\n'
    b'          "format": "onnx",\n          "sha256": "' + SHA_M.encode() + b'",\n'
    b'          "size": 1\n        }\n      }\n    }\n  },\n'
    b'  "format": "secureserve-lock/v2"\n}\n'
)


def test_build_folders_lock_exact_bytes():
    """The v2 layout: ``folders`` by path, each with v1's ``files``; indented, sorted, LF."""
    assert build_folders_lock({"models/b": ONE, "models/a": {}}) == V2_BYTES


def test_build_folders_lock_same_bytes_in_any_order():
    """Folders and files inserted in any order give byte-identical locks."""
    shuffled = {
        folder: dict(reversed(list(files.items())))
        for folder, files in reversed(list(FOLDERS.items()))
    }
    assert build_folders_lock(shuffled) == build_folders_lock(FOLDERS)


def test_build_folders_lock_keys_sorted_at_every_level():
    """Top level, folder keys, file names and entry fields all appear sorted."""
    doc = json.loads(build_folders_lock(FOLDERS))
    assert list(doc) == ["folders", "format"]
    assert doc["format"] == FOLDERS_LOCK_FORMAT
    assert list(doc["folders"]) == ["models/digits", "models/iris"]
    for section in doc["folders"].values():
        assert list(section) == ["files"]
        assert list(section["files"]) == sorted(section["files"])
        for entry in section["files"].values():
            assert list(entry) == ["format", "sha256", "size"]


def test_folders_lock_round_trips_byte_for_byte(tmp_path):
    """Canonical v2 bytes parse and re-encode to the same bytes, and read back from disk."""
    data = build_folders_lock(FOLDERS)
    lock = parse_lock_file(data, source=SOURCE)
    assert isinstance(lock, FoldersLock)
    assert encode_lock(lock) == data
    path = tmp_path / LOCK_FILENAME
    write_lock(path, data)
    read, raw = read_lock_file(path)
    assert (read, raw) == (lock, data)


@pytest.mark.parametrize("folder", ["..", "../x", "/abs", ".", "", "a/./b", "a//b", "a\\b", "x/"])
def test_build_folders_lock_refuses_unsafe_folder(folder):
    """A section name must be a clean relative POSIX path inside the project."""
    with pytest.raises(ConfigError) as caught:
        build_folders_lock({folder: ONE})
    assert "relative POSIX path" in str(caught.value)


def test_build_folders_lock_refuses_unsafe_file_name():
    """File names in a section follow v1's rule."""
    with pytest.raises(ArtifactError) as caught:
        build_folders_lock({"models/iris": {"../x": _entry(b"a")}})
    assert caught.value.reason == "name-invalid"


# --------------------------------------------------------------------------- v2 refusals


def _v2(folders: object = None, **top: object) -> bytes:
    """A v2 lock document as JSON bytes, with ``folders`` and top-level fields replaced."""
    doc: dict[str, object] = {
        "folders": folders
        if folders is not None
        else {"models/iris": {"files": {"a": {"format": "x", "sha256": SHA_A, "size": 1}}}},
        "format": FOLDERS_LOCK_FORMAT,
    }
    doc.update(top)
    return json.dumps(doc).encode()


def _refused_file(data: bytes) -> str:
    """``parse_lock_file`` refuses ``data`` naming the source and the fix; return the text."""
    with pytest.raises(ConfigError) as caught:
        parse_lock_file(data, source=SOURCE)
    message = str(caught.value)
    assert message.startswith(SOURCE), message
    assert "secureserve lock" in message, message
    return message


def test_parse_lock_file_accepts_v2():
    """A well-formed v2 lock parses into its sections (the control for the refusals)."""
    lock = parse_lock_file(_v2(), source=SOURCE)
    assert isinstance(lock, FoldersLock)
    assert lock.folders["models/iris"].files["a"] == LockEntry(sha256=SHA_A, size=1, format="x")


ENTRY_A = b'{"format": "x", "sha256": "' + SHA_A.encode() + b'", "size": 1}'


@pytest.mark.parametrize(
    "data",
    [
        b'{"folders": {"m": {"files": {}}, "m": {"files": {"a": ' + ENTRY_A + b"}}},"
        b' "format": "secureserve-lock/v2"}',
        b'{"folders": {"m": {"files": {"a": ' + ENTRY_A + b', "a": ' + ENTRY_A + b"}}},"
        b' "format": "secureserve-lock/v2"}',
        b'{"folders": {"m": {"files": {}, "files": {}}}, "format": "secureserve-lock/v2"}',
        b'{"folders": {}, "folders": {}, "format": "secureserve-lock/v2"}',
        (
            b'{"folders": {"m": {"files": {}}, "\\u006d": {"files": {}}},'
            b' "format": "secureserve-lock/v2"}'
        ),
        b'{"folders": {}, "format": "secureserve-lock/v1", "format": "secureserve-lock/v2"}',
    ],
    ids=["section", "file-in-section", "files-field", "folders-field", "escaped", "format"],
)
def test_parse_lock_file_v2_refuses_duplicate_key(data):
    """A repeated key at any depth of a v2 lock is refused."""
    assert "repeats a key" in _refused_file(data)


@pytest.mark.parametrize(
    "folder",
    ["..", "../models", "models/../..", "/abs", "/", ".", "", "a/./b", "a//b", "a\\b", "a\u0000"],
)
def test_parse_lock_file_v2_refuses_unsafe_section(folder):
    """Section names are paths inside the project: no ``..``, absolute path or odd form."""
    message = _refused_file(_v2({folder: {"files": {}}}))
    assert "unsafe path" in message


@pytest.mark.parametrize("name", ["../x", "/abs", "a\\b", "", "a//b"])
def test_parse_lock_file_v2_refuses_unsafe_file_name_naming_its_section(name):
    """A file name in a section follows v1's rule; the message names the section."""
    files = {name: {"format": "x", "sha256": SHA_A, "size": 1}}
    message = _refused_file(_v2({"models/iris": {"files": files}}))
    assert "unsafe path" in message
    assert "models/iris" in message


def test_parse_lock_file_v2_refuses_malformed_sha256_naming_its_section():
    """A sha256 that is not 64 lowercase hex digits is refused, with file and section."""
    files = {"m.onnx": {"format": "onnx", "sha256": SHA_A.upper(), "size": 1}}
    message = _refused_file(_v2({"models/iris": {"files": files}}))
    assert "m.onnx" in message
    assert "models/iris" in message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_v2(signed=True), "signed"),
        (_v2({"models/iris": {"files": {}, "trusted": True}}), "trusted"),
        (
            _v2({"m": {"files": {"a": {"format": "x", "sha256": SHA_A, "size": 1, "x": 1}}}}),
            "x",
        ),
        (_v2(files={}), "files"),
    ],
    ids=["top-level", "section", "entry", "v1-files-in-v2"],
)
def test_parse_lock_file_v2_refuses_unknown_fields(data, field):
    """An extra field anywhere in a v2 lock is refused and named."""
    assert field in _refused_file(data)


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"format": FOLDERS_LOCK_FORMAT}).encode(),
        json.dumps({"format": FOLDERS_LOCK_FORMAT, "files": {}}).encode(),
        json.dumps({"format": LOCK_FORMAT, "folders": {}}).encode(),
        _v2({"m": []}),
        _v2({"m": {"files": {"a": {"format": "x", "sha256": SHA_A, "size": -1}}}}),
        b'{"folders": {}}',
        b"[]",
        b"",
    ],
    ids=[
        "no-folders",
        "v1-shape",
        "v1-with-folders",
        "section-array",
        "size",
        "no-format",
        "array",
        "empty",
    ],
)
def test_parse_lock_file_refuses_malformed_documents(data):
    """Missing or mistyped fields, and a shape that does not match its format, are refused."""
    _refused_file(data)


@pytest.mark.parametrize("fmt", ["secureserve-lock/v3", "", "SECURESERVE-LOCK/V2"])
def test_parse_lock_file_refuses_unknown_format(fmt):
    """Only the two exact format strings are accepted; the message names both."""
    message = _refused_file(_v2(format=fmt))
    assert LOCK_FORMAT in message
    assert FOLDERS_LOCK_FORMAT in message


def test_parse_lock_file_refuses_oversize_file():
    """A v2 lock over 16 MiB is refused before it is decoded."""
    data = _v2()
    data += b" " * (16 * 1024 * 1024 + 1 - len(data))
    assert "larger than" in _refused_file(data)


def test_parse_lock_still_reads_v1_only():
    """``parse_lock`` (the v1 reader) refuses a v2 lock rather than misreading it."""
    assert "folders" in _refused(build_folders_lock(FOLDERS))


def test_read_lock_file_missing_file_says_run_lock(tmp_path):
    """A missing lock is a ConfigError naming the path and ``secureserve lock``."""
    path = tmp_path / LOCK_FILENAME
    with pytest.raises(ConfigError) as caught:
        read_lock_file(path)
    assert str(path) in str(caught.value)
    assert "secureserve lock" in str(caught.value)


# --------------------------------------------------------------------------- folder_lock

V2_LOCK = parse_lock_file(build_folders_lock(FOLDERS))


def test_folder_lock_gives_the_section_as_a_lock():
    """A folder's ``Lock`` lists exactly its section's files and checks them as v1 does."""
    lock = folder_lock(V2_LOCK, "models/iris", source=SOURCE, owner="[models.iris] dir")
    assert sorted(lock.files) == ["iris.onnx", "labels.json"]
    data = b"onnx-bytes"
    lock.check("iris.onnx", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(ArtifactError) as caught:
        lock.check("digits.safetensors", size=3)  # another folder's file
    assert caught.value.reason == "not-locked"


def test_folder_lock_v1_for_one_model_is_the_lock_itself():
    """With one model (no section) the v1 lock is returned as it is."""
    lock = parse_lock(build_lock(RECORDS))
    assert folder_lock(lock, None, source=SOURCE, owner="[model] dir") is lock


def test_folder_lock_missing_section_is_a_clear_error():
    """A folder the lock has no section for names the folder, its table and the fix."""
    with pytest.raises(ConfigError) as caught:
        folder_lock(V2_LOCK, "models/wine", source=SOURCE, owner="[models.wine] dir")
    message = str(caught.value)
    assert message.startswith(SOURCE)
    for needle in ("models/wine", "[models.wine] dir", "secureserve lock"):
        assert needle in message


@pytest.mark.parametrize(
    ("lock", "folder", "needle"),
    [
        (parse_lock(build_lock(RECORDS)), "models/iris", LOCK_FORMAT),
        (V2_LOCK, None, FOLDERS_LOCK_FORMAT),
    ],
    ids=["v1-with-several-models", "v2-with-one-model"],
)
def test_folder_lock_refuses_the_other_layout(lock, folder, needle):
    """A v1 lock for several models, or a v2 lock for one, says to lock again."""
    with pytest.raises(ConfigError) as caught:
        folder_lock(lock, folder, source=SOURCE, owner="dir")
    assert needle in str(caught.value)
    assert "secureserve lock" in str(caught.value)
    with pytest.raises(ConfigError):
        check_layout(lock, several=folder is not None, source=SOURCE)
