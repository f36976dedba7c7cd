"""Fuzz targets: one function per parser that takes untrusted bytes.

Each target feeds ``data`` to the parser and returns quietly when the parser kept its
contract; it raises :class:`InvariantError` (or lets an unexpected exception escape)
when it did not. The same functions are driven by atheris (``python -m fuzz.run``,
coverage-guided, for long runs) and by hypothesis (``tests/test_fuzz.py``, a few
seconds in CI). Invariants:

``request_decoder``
    ``ModelSchema.decode_request`` (with the duplicate-key scan of
    ``secureserve.strict_json``), for the Iris input of examples/iris and for a model
    with nested, optional and mapping fields: any bytes give a list of 1 to
    ``MAX_INSTANCES`` typed instances, or ``RequestRejected`` with status 400, 413 or
    422 whose detail is one of the fixed phrases (a field path and a fixed reason, never
    exception text or anything the client sent but an unknown field's name, escaped and
    at most 64 characters of it). An accepted body is UTF-8 and has no
    repeated key.
``safetensors_header``
    ``validate_safetensors_header``, the check secureserve runs before the safetensors
    library sees a file: any bytes either give tensors that tile the data exactly (and
    that the safetensors library then loads with the same names, dtypes and shapes) or
    raise ``FormatError`` (which ``Artifacts`` turns into ``ArtifactError``). The
    library may still refuse a header the check passed (``Artifacts`` then refuses the
    file too), but it must never load tensors other than those the check saw.
    ``peak_allocation`` lets a test check that memory follows the actual size of the
    input, never a size the input claims.
``lock_parser``
    ``parse_lock`` (behind ``read_lock``) and ``parse_lock_file`` (v1 or v2): any bytes
    give ``ConfigError`` or a valid lock (its format, safe relative names and folder
    paths, 64-hex sha256s) whose canonical encoding parses back to the same lock.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import tracemalloc
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np
import safetensors.numpy

from secureserve.errors import ArtifactError, ConfigError, RequestRejected
from secureserve.formats import SAFETENSORS_DTYPES, FormatError, validate_safetensors_header
from secureserve.lockfile import (
    FOLDERS_LOCK_FORMAT,
    LOCK_FORMAT,
    FoldersLock,
    Lock,
    LockEntry,
    build_folders_lock,
    build_lock,
    encode_lock,
    parse_lock,
    parse_lock_file,
)
from secureserve.schema import WRAPPER_HINT, ModelSchema

__all__ = [
    "MAX_INSTANCES",
    "SEEDS",
    "TARGETS",
    "InvariantError",
    "lock_parser",
    "peak_allocation",
    "request_decoder",
    "safetensors_header",
]

ROOT: Final = Path(__file__).resolve().parents[1]
MAX_INSTANCES: Final = 8


class InvariantError(AssertionError):
    """A parser broke its contract; the message says how."""


def _require(condition: object, message: str) -> None:
    if not condition:
        raise InvariantError(message)


# --------------------------------------------------------------------------- request decoder


class Point(msgspec.Struct, forbid_unknown_fields=True):
    """A bounded coordinate pair."""

    x: Annotated[float, msgspec.Meta(ge=-1000, le=1000)]
    y: float


class Style(msgspec.Struct):
    """Optional presentation hints; unknown fields are skipped (msgspec's default)."""

    color: Annotated[str, msgspec.Meta(pattern="^#[0-9a-f]{6}$")] = "#000000"
    width: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1


class Shape(msgspec.Struct, forbid_unknown_fields=True):
    """A nested input: strings with bounds, a literal, a list of structs, a mapping."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    kind: Literal["polygon", "line"]
    points: Annotated[list[Point], msgspec.Meta(min_length=1, max_length=16)]
    tags: dict[str, Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=dict)
    style: Style | None = None
    closed: bool = False


class _Score(msgspec.Struct):
    score: float


def _load_iris_input() -> Any:
    """``Flower``, the input type of examples/iris/app.py."""
    name = "secureserve_fuzz_iris_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "iris" / "app.py")
        if spec is None or spec.loader is None:  # pragma: no cover - the file is in the repo
            raise FileNotFoundError("examples/iris/app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].Flower


@cache
def _schemas() -> tuple[ModelSchema, ...]:
    return (
        ModelSchema(_load_iris_input(), _Score, max_instances=MAX_INSTANCES),
        ModelSchema(Shape, _Score, max_instances=MAX_INSTANCES),
    )


_PATH: Final = r"\$(?:\.[A-Za-z_][A-Za-z0-9_]{0,63}|\[\d{1,9}\]|\[\.\.\.\])*"
_WORD: Final = r"(?:int|float|str|bool|null|array|object|bytes|number|string|another type)"
#: An unknown field's name as ``quote_name`` shows it: at most 64 characters, each as
#: itself (no quote, no backslash; printable is checked apart) or escaped, then ``...``.
_QUOTED: Final = (
    r"""'(?:[^'"\\]|\\(?:[\\'"nrt]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})){0,64}'(?:\.\.\.)?"""
)
_REASON: Final = (
    rf"missing required field '[A-Za-z_][A-Za-z0-9_]*'|unknown field {_QUOTED}"
    rf"|number out of range|expected {_WORD}, got {_WORD}|must be [<>]=? -?[\d.e+-]+"
    r"|length must be [<>]=? \d+|not one of the allowed values|invalid value"
)
#: Every detail a decoding refusal may carry.
_SAFE_DETAIL: Final = re.compile(
    rf"{_PATH}: (?:{_REASON})"
    rf"|\$: (?:{_REASON}); {re.escape(WRAPPER_HINT)}"  # the wrapper itself is wrong
    r"|send one JSON object; NaN, Infinity and trailing data are not JSON"
    r"|the body is empty: send one JSON object|the JSON is nested too deeply"
    r"|the body ends before its JSON does \(an object, array or string left open\)"
    r"|the body is not UTF-8 text \(JSON is UTF-8\)"
    r"|a number is out of range \(larger than a 64-bit float holds\)"
    r"|more data after the JSON object, at byte \d{1,12}: send one JSON object"
    r"|not valid JSON at byte \d{1,12} \(NaN, Infinity and trailing commas are not\)"
    r"|a JSON object repeats a key; send each key once"
)


def request_decoder(data: bytes) -> None:
    """``decode_request`` on ``data`` for each test schema; see the module docstring."""
    for schema in _schemas():
        try:
            instances = schema.decode_request(data)
        except RequestRejected as exc:
            _check_refusal(exc)
            continue
        _require(isinstance(instances, list), "instances is not a list")
        _require(1 <= len(instances) <= MAX_INSTANCES, f"{len(instances)} instances accepted")
        _require(all(isinstance(i, schema.input_type) for i in instances), "an instance is untyped")
        _require(_is_utf8(data), "a body that is not UTF-8 (so not JSON) was accepted")
        _require(not _stdlib_sees_duplicates(data), "a body with a repeated key was accepted")


def _check_refusal(exc: RequestRejected) -> None:
    _require(exc.status in {400, 413, 422}, f"status {exc.status}")
    _require(not exc.headers, f"headers {exc.headers}")
    detail = exc.detail or ""
    _require(_SAFE_DETAIL.fullmatch(detail), f"detail {detail!r} is not a fixed phrase")
    _require(detail.isprintable(), f"detail {detail!r} holds a character that is not printable")
    cause = str(exc.__cause__ or "")
    _require(not cause or cause not in detail, f"detail {detail!r} carries exception text")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _stdlib_sees_duplicates(data: bytes) -> bool:
    """Whether Python's own parser finds a repeated key in ``data`` (if it parses it)."""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in items}) != len(items)
        return dict(items)

    try:
        json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return False
    return found


# --------------------------------------------------------------------------- safetensors


def safetensors_header(data: bytes) -> None:
    """``validate_safetensors_header`` on ``data``; see the module docstring."""
    try:
        specs = validate_safetensors_header(data)
    except FormatError as exc:
        _require(exc.reason.startswith("safetensors-"), f"reason {exc.reason!r}")
        _require(isinstance(exc.message, str) and exc.message, "no message")
        ArtifactError("fuzz.safetensors", exc.reason, exc.message)  # what Artifacts raises
        return
    header_len = int.from_bytes(data[:8], "little")
    buffer_len = len(data) - 8 - header_len
    position = 0
    for spec in sorted(specs.values(), key=lambda s: (s.begin, s.end)):
        _require(spec.begin == position, "tensors do not tile the data")
        size = math.prod(spec.shape) * SAFETENSORS_DTYPES[spec.dtype]
        _require(spec.end - spec.begin == size, "a tensor's bytes do not match its shape")
        position = spec.end
    _require(position == buffer_len, "trailing data accepted")
    try:
        arrays = safetensors.numpy.load(data)
    except Exception:  # fails closed: Artifacts refuses with "safetensors-invalid"
        return  # (e.g. serde reads a ``-0`` offset as a float; msgspec as the integer 0)
    _require(arrays.keys() == specs.keys(), "the library sees other tensors")
    for name, array in arrays.items():
        spec = specs[name]
        _require(array.shape == spec.shape, f"{name}: shape {array.shape} != {spec.shape}")
        _require(array.dtype == np.dtype(_NUMPY_DTYPES[spec.dtype]), f"{name}: dtype differs")


_NUMPY_DTYPES: Final = {
    "BOOL": "bool",
    "U8": "<u1",
    "I8": "<i1",
    "U16": "<u2",
    "I16": "<i2",
    "F16": "<f2",
    "U32": "<u4",
    "I32": "<i4",
    "F32": "<f4",
    "U64": "<u8",
    "I64": "<i8",
    "F64": "<f8",
    "C64": "<c8",
}


def peak_allocation(target: Callable[[bytes], None], data: bytes) -> int:
    """Peak bytes Python allocated while ``target(data)`` ran (tracemalloc; slow)."""
    tracemalloc.start()
    try:
        target(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- lock


_SHA256: Final = re.compile(r"[0-9a-f]{64}")


def lock_parser(data: bytes) -> None:
    """``parse_lock`` and ``parse_lock_file`` on ``data``; see the module docstring."""
    try:
        lock = parse_lock(data, source="fuzz.lock")
    except ConfigError as exc:
        _require(str(exc).startswith("fuzz.lock "), f"message {exc} does not name the file")
    else:
        _require(isinstance(lock, Lock), "not a Lock")
        _require(lock.format == LOCK_FORMAT, f"format {lock.format!r} accepted")
        _check_files(lock.files)
        canonical = encode_lock(lock)
        _require(parse_lock(canonical) == lock, "the canonical encoding parses differently")
        _require(build_lock(dict(lock.files)) == canonical, "build_lock disagrees")
    try:
        either = parse_lock_file(data, source="fuzz.lock")
    except ConfigError as exc:
        _require(str(exc).startswith("fuzz.lock "), f"message {exc} does not name the file")
        return
    if isinstance(either, FoldersLock):  # v2: every section a safe folder path, v1's rules
        _require(either.format == FOLDERS_LOCK_FORMAT, f"format {either.format!r} accepted")
        for folder, section in either.folders.items():
            _check_name(folder)
            _check_files(section.files)
        _require(parse_lock_file(encode_lock(either)) == either, "v2 re-encodes differently")


def _check_files(files: dict[str, LockEntry]) -> None:
    for name, entry in files.items():
        _require(_SHA256.fullmatch(entry.sha256), f"sha256 {entry.sha256!r} accepted")
        _require(entry.size >= 0, "negative size accepted")
        _check_name(name)


def _check_name(name: str) -> None:
    parts = name.split("/")
    _require(
        bool(name) and not name.startswith("/") and "" not in parts and ".." not in parts,
        f"unsafe name {name!r} accepted",
    )
    _require("\\" not in name and "\x00" not in name, f"unsafe name {name!r} accepted")


# --------------------------------------------------------------------------- registry


#: Every target by name (``python -m fuzz.run NAME``).
TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "request_decoder": request_decoder,
    "safetensors_header": safetensors_header,
    "lock_parser": lock_parser,
}


def _safetensors(header: dict[str, Any], payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + payload


_DIGEST: Final = "ab" * 32

#: Valid inputs each run starts from (atheris mutates them; hypothesis too).
SEEDS: Final[dict[str, list[bytes]]] = {
    "request_decoder": [
        b'{"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}',
        b'{"instances": [{"features": [0, 50, 1e1, 2.5E-1]}, {"features": [1, 2, 3, 4]}]}',
        (
            b'{"instances": [{"name": "tri", "kind": "polygon", "points": [{"x": 0, "y": 1}],'
            b' "tags": {"a": 1, "b": 2}, "style": {"color": "#00ff00", "width": 2},'
            b' "closed": true}]}'
        ),
        (
            b'{"instances": [{"name": "l\\u00e9", "kind": "line", "points": [{"x": -1e3, "y": 0}],'
            b' "style": null}]}'
        ),
    ],
    "safetensors_header": [
        _safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 16),
        _safetensors(
            {
                "__metadata__": {"format": "np"},
                "a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
                "b": {"dtype": "BOOL", "shape": [0], "data_offsets": [8, 8]},
                "c": {"dtype": "F16", "shape": [3, 1], "data_offsets": [8, 14]},
            },
            b"\1" * 14,
        ),
        _safetensors({}, b""),
    ],
    "lock_parser": [
        encode_lock(Lock(format=LOCK_FORMAT, files={})),
        build_lock(
            {
                "iris.onnx": LockEntry(sha256=_DIGEST, size=324, format="onnx"),
                "labels/labels.json": LockEntry(sha256=_DIGEST, size=40, format="unknown"),
            }
        ),
        build_folders_lock(
            {
                "models/iris": {"iris.onnx": LockEntry(sha256=_DIGEST, size=324, format="onnx")},
                "models/digits": {"d.safetensors": LockEntry(_DIGEST, 9896, "safetensors")},
            }
        ),
    ],
}
