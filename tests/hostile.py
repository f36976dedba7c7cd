"""Write hostile (and a few valid) model files into a folder, byte by byte.

SAFETY. The pickles here are assembled opcode by opcode from literal bytes: nothing
is ever unpickled and nothing a pickle names is imported. If something did unpickle
one, its only effect would be ``touch /tmp/secureserve-pwned-<case name>`` (the case's
``marker``); tests assert that file never appears.

``CASES`` lists every hostile file with the loader method to use and the
``ArtifactError.reason`` expected; ``case.write(model_dir)`` writes it (escape cases
also write a file beside ``model_dir``, in its parent).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

MARKER_PREFIX = "/tmp/secureserve-pwned-"  # noqa: S108 - the fixtures' marker path

# The iris weights of the shared fixtures: W float32 [4, 3], b float32 [3].
IRIS_W = np.array(
    [
        [0.6479, 0.4693, -0.643],
        [-1.1783, -0.1447, 1.2035],
        [1.3336, 0.9083, 0.3466],
        [1.6, 1.2328, -0.2203],
    ],
    dtype=np.float32,
)
IRIS_B = np.array([-0.1062, -0.0365, -0.042], dtype=np.float32)


def marker_for(name: str) -> Path:
    """Return the file a payload for ``name`` would create."""
    return Path(MARKER_PREFIX + name.replace("/", "_"))


# --------------------------------------------------------------------------- pickles


def _touch(name: str) -> bytes:
    return f"touch {marker_for(name)}".encode()


def pickle_payload(protocol: int, name: str) -> bytes:
    """``os.system('touch <marker>')`` as a pickle of ``protocol``, written opcode by opcode."""
    command = _touch(name)
    if protocol == 0:  # GLOBAL, MARK, STRING, TUPLE, REDUCE, STOP
        return b"cos\nsystem\n(S'" + command + b"'\ntR."
    if protocol == 1:  # GLOBAL, MARK, BINUNICODE, TUPLE, REDUCE, STOP
        return b"cos\nsystem\n(X" + struct.pack("<I", len(command)) + command + b"tR."
    if protocol in (2, 3):  # PROTO, GLOBAL, BINUNICODE, TUPLE1, REDUCE, STOP
        return (
            b"\x80"
            + bytes([protocol])
            + b"cos\nsystem\nX"
            + struct.pack("<I", len(command))
            + command
            + b"\x85R."
        )
    # protocols 4 and 5: PROTO, FRAME, SHORT_BINUNICODE x3, STACK_GLOBAL, TUPLE1, REDUCE, STOP
    body = b"\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(command)]) + command + b"\x85R."
    return b"\x80" + bytes([protocol]) + b"\x95" + struct.pack("<Q", len(body)) + body


def torch_legacy(name: str) -> bytes:
    """torch.save(..., _use_new_zipfile_serialization=False): magic-number pickle first."""
    magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    version = b"\x80\x02M\xe9\x03."  # protocol version 1001
    return magic + version + pickle_payload(2, name)


def joblib_like(name: str) -> bytes:
    """Build a joblib-style pickle: a NumpyArrayWrapper global next to the payload."""
    return (
        b"\x80\x03]q\x00(cjoblib.numpy_pickle\nNumpyArrayWrapper\nq\x01)\x81q\x02"
        + pickle_payload(2, name)[2:-1]  # GLOBAL ... REDUCE without PROTO and STOP
        + b"e."
    )


def npy_object(name: str) -> bytes:
    """Build a .npy v1.0 file of dtype object: its data is a protocol-4 pickle."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", len(header))
        + header.encode("latin1")
        + pickle_payload(4, name)
    )


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    """Build a deterministic stored zip archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for member, data in members:
            archive.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


HDF5 = b"\x89HDF\r\n\x1a\n" + b"\x00" * 504


# --------------------------------------------------------------------------- safetensors


def safetensors_bytes(
    header: Any, data: bytes, *, header_len: int | None = None, raw_header: bytes | None = None
) -> bytes:
    """Layout: u64 LE header length, JSON header padded with spaces to 8, tensor data."""
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if header_len is None else header_len) + text + data


def iris_header(**changes: Any) -> dict[str, Any]:
    """Return the valid iris header, entries replaced by ``changes`` (``None`` deletes)."""
    header: dict[str, Any] = {
        "__metadata__": {"format": "np"},
        "W": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": [48, 60]},
    }
    for key, value in changes.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    return header


IRIS_DATA = IRIS_W.tobytes() + IRIS_B.tobytes()


def valid_safetensors() -> bytes:
    """Build a valid safetensors file holding the iris weights."""
    return safetensors_bytes(iris_header(), IRIS_DATA)


# --------------------------------------------------------------------------- onnx


def valid_onnx(*, external_location: str | None = None, custom_domain: str | None = None) -> bytes:
    """Build probs = softmax(x @ W + b); W optionally external at ``external_location``."""
    from onnx import TensorProto, helper

    if external_location is None:
        w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], IRIS_W.ravel().tolist())
    else:
        w = TensorProto(
            name="W", data_type=TensorProto.FLOAT, dims=[4, 3], data_location=TensorProto.EXTERNAL
        )
        for key, value in (("location", external_location), ("offset", "0"), ("length", "48")):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    opsets = [helper.make_opsetid("", 17)]
    if custom_domain is not None:
        nodes.insert(0, helper.make_node("Pwn", ["x"], ["pwned"], domain=custom_domain))
        opsets.append(helper.make_opsetid(custom_domain, 1))
    graph = helper.make_graph(
        nodes,
        "iris",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        initializer=[w, helper.make_tensor("b", TensorProto.FLOAT, [3], IRIS_B.tolist())],
    )
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return bytes(model.SerializeToString(deterministic=True))


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One hostile file: where it goes, how to load it, what must be refused."""

    name: str
    method: str  # "safetensors" or "onnx"
    reason: str
    make: Callable[[Path], None]
    code_execution: bool = False

    @property
    def marker(self) -> Path | None:
        """The file the payload would create, for pickle-bearing cases."""
        return marker_for(self.name) if self.code_execution else None

    def write(self, model_dir: Path) -> Path:
        """Write the case into ``model_dir`` (created if needed); return the file's path."""
        model_dir.mkdir(parents=True, exist_ok=True)
        self.make(model_dir)
        return model_dir / self.name


def _bytes_case(
    name: str, method: str, reason: str, build: Callable[[str], bytes], *, rce: bool = False
) -> Case:
    def make(model_dir: Path) -> None:
        (model_dir / name).write_bytes(build(name))

    return Case(name, method, reason, make, code_execution=rce)


def _st(name: str, reason: str, data: bytes) -> Case:
    return _bytes_case(name, "safetensors", reason, lambda _: data)


def _escape_case(name: str, location: Callable[[Path], str], *, symlink: bool = False) -> Case:
    """W lives outside the folder (real float32 bytes, so a follower would load it)."""

    def make(model_dir: Path) -> None:
        outside = model_dir.parent / "outside.bin"
        outside.write_bytes(IRIS_W.tobytes())
        target = location(model_dir)
        if symlink:
            (model_dir / target).symlink_to(outside)
        (model_dir / name).write_bytes(valid_onnx(external_location=target))

    return Case(name, "onnx", "onnx-external-data-escape", make)


_TRUNC = valid_safetensors()

CASES: tuple[Case, ...] = (
    *(
        _bytes_case(
            f"pickle_p{p}.pkl",
            "safetensors",
            "pickle",
            lambda n, p=p: pickle_payload(p, n),
            rce=True,
        )
        for p in range(6)
    ),
    _bytes_case(
        "pickle_as.safetensors", "safetensors", "pickle", lambda n: pickle_payload(2, n), rce=True
    ),
    _bytes_case(
        "pickle_p4_as.safetensors",
        "safetensors",
        "pickle",
        lambda n: pickle_payload(4, n),
        rce=True,
    ),
    _bytes_case(
        "pickle_p0_as.safetensors",
        "safetensors",
        "pickle",
        lambda n: pickle_payload(0, n),
        rce=True,
    ),
    _bytes_case("pickle_as.onnx", "onnx", "pickle", lambda n: pickle_payload(2, n), rce=True),
    _bytes_case("pickle_p5_as.onnx", "onnx", "pickle", lambda n: pickle_payload(5, n), rce=True),
    _bytes_case("pickle_as.bin", "safetensors", "pickle", lambda n: pickle_payload(3, n), rce=True),
    _bytes_case(
        "torch_zip.pt",
        "safetensors",
        "torch-zip",
        lambda n: zip_of(
            [
                ("archive/data.pkl", pickle_payload(2, n)),
                ("archive/version", b"3\n"),
                ("archive/byteorder", b"little"),
                ("archive/data/0", IRIS_W.tobytes()),
            ]
        ),
        rce=True,
    ),
    _bytes_case(
        "torch_zip_as.safetensors",
        "safetensors",
        "torch-zip",
        lambda n: zip_of([("model/data.pkl", pickle_payload(2, n))]),
        rce=True,
    ),
    _bytes_case("torch_legacy.pt", "safetensors", "torch-legacy", torch_legacy, rce=True),
    _bytes_case("joblib_like.joblib", "safetensors", "joblib", joblib_like, rce=True),
    _bytes_case("object_array.npy", "safetensors", "numpy-object", npy_object, rce=True),
    _bytes_case(
        "object_arrays.npz",
        "safetensors",
        "numpy-zip",
        lambda n: zip_of([("arr_0.npy", npy_object(n))]),
        rce=True,
    ),
    _bytes_case("model.h5", "safetensors", "hdf5", lambda _: HDF5),
    _bytes_case("model_h5_as.onnx", "onnx", "hdf5", lambda _: HDF5),
    _bytes_case(
        "model.keras",
        "safetensors",
        "keras",
        lambda _: zip_of(
            [
                ("metadata.json", b'{"keras_version": "3.0.0"}'),
                ("config.json", b'{"class_name": "Lambda", "config": {"function": "..."}}'),
                ("model.weights.h5", HDF5),
            ]
        ),
    ),
    _bytes_case("empty.safetensors", "safetensors", "empty", lambda _: b""),
    _bytes_case("empty.onnx", "onnx", "empty", lambda _: b""),
    _st("short.safetensors", "unknown", b"\x10\x00\x00"),
    _st("truncated_header.safetensors", "safetensors-header-length", _TRUNC[:40]),
    _st("truncated_data.safetensors", "safetensors-offsets", _TRUNC[:-4]),
    _st(
        "header_too_long.safetensors",
        "safetensors-header-length",
        safetensors_bytes(iris_header(), IRIS_DATA, header_len=1_000_000),
    ),
    _st(
        "header_over_limit.safetensors",
        "safetensors-header-length",
        safetensors_bytes(iris_header(), IRIS_DATA, header_len=200_000_000),
    ),
    _st(
        "overlapping_offsets.safetensors",
        "safetensors-offsets",
        safetensors_bytes(
            iris_header(b={"dtype": "F32", "shape": [3], "data_offsets": [36, 48]}), IRIS_DATA[:48]
        ),
    ),
    _st(
        "hole.safetensors",
        "safetensors-offsets",
        safetensors_bytes(
            iris_header(b={"dtype": "F32", "shape": [3], "data_offsets": [52, 64]}),
            IRIS_DATA + b"\0" * 4,
        ),
    ),
    _st(
        "trailing_bytes.safetensors",
        "safetensors-offsets",
        safetensors_bytes(iris_header(), IRIS_DATA + b"\0" * 8),
    ),
    _st(
        "offsets_past_end.safetensors",
        "safetensors-offsets",
        safetensors_bytes(
            iris_header(b={"dtype": "F32", "shape": [3], "data_offsets": [48, 600]}), IRIS_DATA
        ),
    ),
    _st(
        "offsets_reversed.safetensors",
        "safetensors-offsets",
        safetensors_bytes(
            iris_header(b={"dtype": "F32", "shape": [3], "data_offsets": [60, 48]}), IRIS_DATA
        ),
    ),
    _st(
        "bad_dtype.safetensors",
        "safetensors-dtype",
        safetensors_bytes(
            iris_header(b={"dtype": "F128", "shape": [3], "data_offsets": [48, 60]}), IRIS_DATA
        ),
    ),
    _st(
        "bf16.safetensors",
        "safetensors-dtype",
        safetensors_bytes(
            iris_header(b={"dtype": "BF16", "shape": [6], "data_offsets": [48, 60]}), IRIS_DATA
        ),
    ),
    _st(
        "shape_mismatch.safetensors",
        "safetensors-shape",
        safetensors_bytes(
            iris_header(W={"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 48]}), IRIS_DATA
        ),
    ),
    _st(
        "negative_shape.safetensors",
        "safetensors-shape",
        safetensors_bytes(
            iris_header(b={"dtype": "F32", "shape": [-3], "data_offsets": [48, 60]}), IRIS_DATA
        ),
    ),
    _st(
        "bool_shape.safetensors",
        "safetensors-shape",
        safetensors_bytes(
            iris_header(b={"dtype": "F32", "shape": [True], "data_offsets": [48, 52]}),
            IRIS_DATA[:52],
        ),
    ),
    _st(
        "non_json_header.safetensors",
        "safetensors-header-json",
        safetensors_bytes(None, IRIS_DATA, raw_header=b"{'W': {'dtype': 'F32'}, # not JSON\n}"),
    ),
    _st(
        "nan_header.safetensors",
        "safetensors-header-json",
        safetensors_bytes(None, IRIS_DATA, raw_header=b'{"__metadata__": {"x": NaN}}'),
    ),
    _st(
        "non_utf8_header.safetensors",
        "safetensors-header-json",
        safetensors_bytes(None, IRIS_DATA, raw_header=b'{"W\xff": {}}'),
    ),
    _st(
        "duplicate_keys.safetensors",
        "safetensors-header-json",
        safetensors_bytes(
            None,
            IRIS_DATA[:48],
            raw_header=(
                b'{"W": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},'
                b' "W": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}'
            ),
        ),
    ),
    _st(
        "deep_header.safetensors",
        "safetensors-header-json",
        safetensors_bytes(None, b"", raw_header=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ),
    # safetensors headers start with "{": anything else is not judged safetensors at all
    _st("header_not_object.safetensors", "unknown", struct.pack("<Q", 8) + b"[1, 2]  "),
    _st(
        "extra_entry_key.safetensors",
        "safetensors-header",
        safetensors_bytes(
            iris_header(b={"dtype": "F32", "shape": [3], "data_offsets": [48, 60], "pwn": 1}),
            IRIS_DATA,
        ),
    ),
    _st(
        "metadata_not_strings.safetensors",
        "safetensors-header",
        safetensors_bytes(iris_header(__metadata__={"n": 1}), IRIS_DATA),
    ),
    _bytes_case(
        "custom_domain.onnx",
        "onnx",
        "onnx-custom-domain",
        lambda _: valid_onnx(custom_domain="com.evil"),
    ),
    _bytes_case(
        "contrib_domain.onnx",
        "onnx",
        "onnx-custom-domain",
        lambda _: valid_onnx(custom_domain="com.microsoft"),
    ),
    _escape_case("escape_dotdot.onnx", lambda _: "../outside.bin"),
    _escape_case("escape_nested_dotdot.onnx", lambda _: "sub/../../outside.bin"),
    _escape_case("escape_absolute.onnx", lambda d: str(d.parent / "outside.bin")),
    _escape_case("escape_symlink.onnx", lambda _: "weights.bin", symlink=True),
)
