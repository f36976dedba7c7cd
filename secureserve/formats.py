"""Content sniffing and structural validation of model files: bytes in, verdicts out.

A file is judged by its bytes, never by its name. :func:`detect_format` tells what a
buffer holds (safetensors, ONNX, or one of the formats secureserve refuses because
loading them can run code: pickle, torch, joblib, numpy object arrays, HDF5/Keras).
:func:`validate_safetensors_header` checks a safetensors header completely before the
safetensors library sees the bytes.

Nothing here does I/O, unpickles, extracts an archive member or imports what a file
names. Failures raise :class:`FormatError` (a reason code and an operator message);
``secureserve.artifacts`` turns it into an ``ArtifactError`` that names the file.
"""

from __future__ import annotations

import enum
import io
import json
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import onnx

from secureserve.encryption import MAGIC as ENCRYPTION_MAGIC

__all__ = [
    "MAX_SAFETENSORS_HEADER_BYTES",
    "NEVER_LOADED",
    "SAFETENSORS_DTYPES",
    "Format",
    "FormatError",
    "TensorSpec",
    "detect_format",
    "numpy_has_objects",
    "validate_safetensors_header",
]

#: Largest safetensors JSON header accepted (the safetensors library's own limit).
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000

#: safetensors dtypes that ``safetensors.numpy`` can return, with their item sizes.
#: BF16 and the F8/F4/F6 types are absent: numpy has no such dtype and
#: ``safetensors.numpy.load`` fails on them.
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
    "C64": 8,
}

_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_SHOWN_DIMS = 8  # a longer shape is described by its length in messages
_METADATA_KEY = "__metadata__"

# Every pickle opcode byte (from pickletools.opcodes), and those of protocols 0 and 1.
_PICKLE_OPCODES = frozenset(
    b"().012BCFGIJKLMNPQRSTUVX]abcdeghijlopqrstu}"
    b"\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f"
    b"\x90\x91\x92\x93\x94\x95\x96\x97\x98"
)
_PICKLE_STOP = b"."
_PICKLE_PROTO = b"\x80"
_PICKLE_PROTOCOLS = frozenset((b"\x02", b"\x03", b"\x04", b"\x05"))
# A protocol 0/1 pickle starts with a container/mark opcode followed by another opcode,
# or with a GLOBAL ("c module\nname\n"), or with a text INT/LONG/FLOAT/STRING line.
_PICKLE_V0_CONTAINER = frozenset(b"(]})N")
_PICKLE_V0_LINE = re.compile(
    rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n"
    rb"|[IL]-?\d+L?\n"
    rb"|F-?[\d.]+(?:[eE][-+]?\d+)?\n"
    rb"|S(?:'[^\n]*'|\"[^\n]*\")\n"
)
# torch.save(..., _use_new_zipfile_serialization=False): first pickle is this magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_JOBLIB_MARKER = b"joblib.numpy_pickle"
_JOBLIB_SCAN_BYTES = 4096

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NUMPY_MAGIC = b"\x93NUMPY"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GGUF_MAGIC = b"GGUF"
_COMPRESSED_MAGICS = (
    b"\x1f\x8b",  # gzip (joblib's and torch's compressed dumps among others)
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"\x28\xb5\x2f\xfd",  # zstandard
    b"ZF0x",  # joblib < 0.10 zlib container
)
_NUMPY_OBJECT_DESCR = re.compile(rb"""['"][|<>=]?O\d*['"]""")


class Format(enum.StrEnum):
    """What a file holds, judged by its bytes. Values are stable slugs (lock files)."""

    SAFETENSORS = "safetensors"
    ONNX = "onnx"
    PICKLE = "pickle"
    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    JOBLIB = "joblib"
    NUMPY = "numpy"
    NUMPY_ZIP = "numpy-zip"
    HDF5 = "hdf5"
    KERAS = "keras"
    ZIP = "zip"
    GGUF = "gguf"
    COMPRESSED = "compressed"
    ENCRYPTED = "encrypted"
    EMPTY = "empty"
    UNKNOWN = "unknown"

    @property
    def description(self) -> str:
        """A phrase for messages, e.g. ``"a pickle file"``."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[Format, str] = {
    Format.SAFETENSORS: "a safetensors file",
    Format.ONNX: "an ONNX model",
    Format.PICKLE: "a pickle file",
    Format.TORCH_ZIP: "a PyTorch checkpoint (a zip archive with a pickle inside)",
    Format.TORCH_LEGACY: "a legacy PyTorch checkpoint (pickle)",
    Format.JOBLIB: "a joblib dump (pickle)",
    Format.NUMPY: "a NumPy .npy file",
    Format.NUMPY_ZIP: "a NumPy .npz archive",
    Format.HDF5: "an HDF5 file (Keras/h5py)",
    Format.KERAS: "a Keras v3 .keras archive",
    Format.ZIP: "a zip archive",
    Format.GGUF: "a GGUF file",
    Format.COMPRESSED: "a compressed file (gzip, bzip2, xz or zstd)",
    Format.ENCRYPTED: "a secureserve-encrypted file",
    Format.EMPTY: "an empty file",
    Format.UNKNOWN: "a file of unknown format",
}


class FormatError(Exception):
    """A buffer failed a structural check; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One validated safetensors entry; offsets are relative to the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


#: Formats that are never loaded, whatever a lock says: loading them can run code.
#: Locking one would only dress it up as released (``secureserve lock`` refuses it).
NEVER_LOADED: Final = frozenset(
    {
        Format.PICKLE,
        Format.TORCH_ZIP,
        Format.TORCH_LEGACY,
        Format.JOBLIB,
        Format.NUMPY,
        Format.NUMPY_ZIP,
        Format.HDF5,
        Format.KERAS,
    }
)


# --------------------------------------------------------------------------- detection


def detect_format(data: bytes | memoryview) -> Format:
    """Tell what ``data`` holds from its bytes alone (never from a file name)."""
    buf = bytes(data) if isinstance(data, memoryview) else data
    if not buf:
        return Format.EMPTY
    if _looks_like_safetensors(buf):
        return Format.SAFETENSORS
    checks = (
        (buf.startswith(ENCRYPTION_MAGIC), Format.ENCRYPTED),
        (buf.startswith(_TORCH_LEGACY_MAGIC), Format.TORCH_LEGACY),
        (buf.startswith(_ZIP_MAGICS), None),
        (buf.startswith(_NUMPY_MAGIC), Format.NUMPY),
        (_has_hdf5_signature(buf), Format.HDF5),
        (buf.startswith(_GGUF_MAGIC), Format.GGUF),
        (buf.startswith(_COMPRESSED_MAGICS), Format.COMPRESSED),
    )
    for matched, fmt in checks:
        if matched:
            return fmt if fmt is not None else _classify_zip(buf)
    if _looks_like_pickle(buf):
        return Format.JOBLIB if _JOBLIB_MARKER in buf[:_JOBLIB_SCAN_BYTES] else Format.PICKLE
    if _looks_like_onnx(buf):
        return Format.ONNX
    return Format.UNKNOWN


def _looks_like_safetensors(buf: bytes) -> bool:
    """u64 LE header length below 4 GiB (bytes 4..7 zero), then ``{`` at byte 8."""
    return buf[8:9] == b"{" and buf[4:8] == b"\x00\x00\x00\x00"


def _looks_like_pickle(buf: bytes) -> bool:
    if buf.startswith(_PICKLE_PROTO):  # protocols 2 to 5 start with PROTO <n>
        return buf[1:2] in _PICKLE_PROTOCOLS and buf[2:3] != b"" and buf[2] in _PICKLE_OPCODES
    if not buf.endswith(_PICKLE_STOP):
        return False
    if buf[0] in _PICKLE_V0_CONTAINER:
        return buf[1:2] != b"" and buf[1] in _PICKLE_OPCODES
    return _PICKLE_V0_LINE.match(buf) is not None


def _has_hdf5_signature(buf: bytes) -> bool:
    """HDF5 signature at offset 0, 512, 1024, 2048, ... (after an optional user block)."""
    offset = 0
    while offset + len(_HDF5_MAGIC) <= len(buf):
        if buf.startswith(_HDF5_MAGIC, offset):
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def _classify_zip(buf: bytes) -> Format:
    """Look at member names only (never extract, never read a member)."""
    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as archive:
            names = archive.namelist()
    except Exception:  # noqa: BLE001 - any failure to list members: a broken zip, still a zip
        return Format.ZIP
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return Format.TORCH_ZIP
    if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
        return Format.KERAS
    if names and all(n.endswith(".npy") for n in names):
        return Format.NUMPY_ZIP
    return Format.ZIP


def _looks_like_onnx(buf: bytes) -> bool:
    """Check a plausible first protobuf tag, then parse a ``ModelProto`` that has a graph."""
    first = buf[0]
    field, wire_type = first >> 3, first & 0x07
    if not 1 <= field <= 20 or wire_type not in (0, 2):  # noqa: PLR2004 - ModelProto tags
        return False
    try:
        model = onnx.ModelProto.FromString(buf)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and friends: not ONNX
        return False
    return bool(model.HasField("graph"))


def numpy_has_objects(data: bytes | memoryview) -> bool:
    """Whether a ``.npy`` header declares an object dtype (its data is then a pickle)."""
    header = bytes(data[: 10 + 65536])
    return _NUMPY_OBJECT_DESCR.search(header) is not None


# --------------------------------------------------------------------------- safetensors


def validate_safetensors_header(data: bytes | memoryview) -> dict[str, TensorSpec]:
    """Check a safetensors file's header and layout completely; return its tensors.

    Raises :class:`FormatError` with reason ``safetensors-header-length``,
    ``safetensors-header-json``, ``safetensors-header``, ``safetensors-dtype``,
    ``safetensors-shape`` or ``safetensors-offsets``.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size < 8:  # noqa: PLR2004 - the u64 length prefix
        raise FormatError("safetensors-header-length", "file is too short to hold a header length")
    (header_len,) = struct.unpack_from("<Q", view, 0)
    if header_len > MAX_SAFETENSORS_HEADER_BYTES:
        raise FormatError(
            "safetensors-header-length",
            f"header length {header_len} exceeds the {MAX_SAFETENSORS_HEADER_BYTES}-byte limit",
        )
    if header_len > size - 8:
        raise FormatError(
            "safetensors-header-length",
            f"header length {header_len} exceeds the file size ({size} bytes); "
            "the file is truncated or corrupt",
        )
    raw = bytes(view[8 : 8 + header_len])
    header = _decode_header(raw)
    buffer_len = size - 8 - header_len
    specs: dict[str, TensorSpec] = {}
    for name, entry in header.items():
        if name == _METADATA_KEY:
            _check_metadata(entry)
        else:
            specs[name] = _check_entry(name, entry, buffer_len)
    _check_tiling(specs, buffer_len)
    return specs


def _decode_header(raw: bytes) -> dict[str, Any]:
    try:
        raw.decode("utf-8")
        header = msgspec.json.decode(raw)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError) as exc:
        raise FormatError("safetensors-header-json", "header is not valid UTF-8 JSON") from exc
    if not isinstance(header, dict):
        raise FormatError("safetensors-header", "header is not a JSON object")
    if _has_duplicate_keys(raw):
        raise FormatError("safetensors-header-json", "header has duplicate keys")
    return header


def _has_duplicate_keys(raw: bytes) -> bool:
    """Duplicate keys make parsers disagree (msgspec and serde keep the last one)."""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        keys = [k for k, _ in items]
        found = found or len(set(keys)) != len(keys)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return True  # msgspec accepted it, the stdlib did not: treat as ambiguous
    return found


def _check_metadata(entry: object) -> None:
    if not isinstance(entry, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
    ):
        raise FormatError("safetensors-header", '"__metadata__" must map strings to strings')


def _check_entry(name: str, entry: object, buffer_len: int) -> TensorSpec:
    if not isinstance(entry, dict) or set(entry) != _TENSOR_KEYS:
        raise FormatError(
            "safetensors-header",
            f"tensor {name!r} must have exactly the keys dtype, shape and data_offsets",
        )
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        allowed = ", ".join(SAFETENSORS_DTYPES)
        raise FormatError(
            "safetensors-dtype",
            f"tensor {name!r} has dtype {dtype!r}; supported: {allowed} "
            "(convert BF16/F8 tensors to F16 or F32)",
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise FormatError(
            "safetensors-shape", f"tensor {name!r} shape must be a list of non-negative integers"
        )
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2  # noqa: PLR2004 - [begin, end]
        or not all(_is_count(o) for o in offsets)
        or not offsets[0] <= offsets[1] <= buffer_len
    ):
        raise FormatError(
            "safetensors-offsets",
            f"tensor {name!r} data_offsets must be [begin, end] with "
            f"0 <= begin <= end <= {buffer_len} (the data size)",
        )
    begin, end = offsets
    expected = _byte_size(shape, SAFETENSORS_DTYPES[dtype], limit=buffer_len)
    if end - begin != expected:
        needs = f"needs {expected}" if expected is not None else f"needs more than {buffer_len}"
        dims = shape if len(shape) <= _SHOWN_DIMS else f"of {len(shape)} dimensions"
        raise FormatError(
            "safetensors-shape",
            f"tensor {name!r} spans {end - begin} bytes but shape {dims} of {dtype} {needs}",
        )
    return TensorSpec(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _byte_size(shape: list[int], item_size: int, *, limit: int) -> int | None:
    """``prod(shape) * item_size``, or None once it exceeds ``limit``.

    Stopping early keeps the work linear in the header: a long shape of huge dimensions
    would otherwise build an enormous integer (whose decimal form Python even refuses to
    write in the message).
    """
    if 0 in shape:
        return 0
    size = item_size
    for dim in shape:
        size *= dim
        if size > limit:
            return None
    return size


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tiling(specs: dict[str, TensorSpec], buffer_len: int) -> None:
    """Sorted by offset, tensors must cover the data buffer exactly: no overlap, no hole."""
    position = 0
    for name, spec in sorted(specs.items(), key=lambda item: (item[1].begin, item[1].end)):
        if spec.begin < position:
            raise FormatError("safetensors-offsets", f"tensor {name!r} overlaps another tensor")
        if spec.begin > position:
            raise FormatError(
                "safetensors-offsets", f"unused bytes before tensor {name!r} (a hole in the data)"
            )
        position = spec.end
    if position != buffer_len:
        raise FormatError(
            "safetensors-offsets",
            f"tensors cover {position} of {buffer_len} data bytes (trailing bytes)",
        )
