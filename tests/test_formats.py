"""Tests for secureserve.formats: content sniffing and safetensors header validation."""

from __future__ import annotations

import contextlib
import json
import struct

import hostile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secureserve.formats import (
    MAX_SAFETENSORS_HEADER_BYTES,
    Format,
    FormatError,
    TensorSpec,
    detect_format,
    numpy_has_objects,
    validate_safetensors_header,
)

GOOD = hostile.valid_safetensors()


def _st(header: object, data: bytes = hostile.IRIS_DATA) -> bytes:
    return hostile.safetensors_bytes(header, data)


# --------------------------------------------------------------------------- detect_format


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", Format.EMPTY, id="empty"),
        pytest.param(GOOD, Format.SAFETENSORS, id="safetensors"),
        pytest.param(hostile.valid_onnx(), Format.ONNX, id="onnx"),
        *(
            pytest.param(hostile.pickle_payload(p, "x"), Format.PICKLE, id=f"pickle-p{p}")
            for p in range(6)
        ),
        pytest.param(hostile.torch_legacy("x"), Format.TORCH_LEGACY, id="torch-legacy"),
        pytest.param(hostile.joblib_like("x"), Format.JOBLIB, id="joblib"),
        pytest.param(hostile.npy_object("x"), Format.NUMPY, id="npy"),
        pytest.param(hostile.HDF5, Format.HDF5, id="hdf5"),
        pytest.param(b"\0" * 512 + hostile.HDF5, Format.HDF5, id="hdf5-user-block"),
        pytest.param(b"GGUF\x03\x00\x00\x00", Format.GGUF, id="gguf"),
        pytest.param(b"\x1f\x8b\x08\x00" + b"\0" * 20, Format.COMPRESSED, id="gzip"),
        pytest.param(
            hostile.zip_of([("archive/data.pkl", b"."), ("archive/version", b"3")]),
            Format.TORCH_ZIP,
            id="torch-zip",
        ),
        pytest.param(
            hostile.zip_of([("config.json", b"{}"), ("model.weights.h5", hostile.HDF5)]),
            Format.KERAS,
            id="keras",
        ),
        pytest.param(hostile.zip_of([("a.npy", b""), ("b.npy", b"")]), Format.NUMPY_ZIP, id="npz"),
        pytest.param(hostile.zip_of([("readme.txt", b"hi")]), Format.ZIP, id="zip"),
        pytest.param(b"PK\x03\x04 broken", Format.ZIP, id="broken-zip"),
        pytest.param(b'{"format": "json"}', Format.UNKNOWN, id="json"),
        pytest.param(b"hello world.", Format.UNKNOWN, id="text-ending-with-dot"),
        pytest.param(b"\x80\x09garbage", Format.UNKNOWN, id="proto-byte-out-of-range"),
        pytest.param(b"\x08\x01\x12\x00", Format.UNKNOWN, id="protobuf-without-graph"),
    ],
)
def test_detect_format_judges_bytes(data, expected):
    """Each format is recognised from its bytes alone."""
    assert detect_format(data) is expected


def test_detect_format_accepts_memoryview():
    """A memoryview is judged like the bytes it shows."""
    assert detect_format(memoryview(GOOD)) is Format.SAFETENSORS


def test_detect_format_safetensors_length_that_looks_like_a_pickle():
    """A header length whose first bytes read as PROTO 2 + opcode is still safetensors."""
    data = struct.pack("<Q", 0x4B0280) + b"{" + b" " * 16
    assert data[:3] == b"\x80\x02K"
    assert detect_format(data) is Format.SAFETENSORS


def test_detect_format_pickle_under_any_name_is_pickle():
    """The model.pkl-style payload is a pickle whatever it is called (no names involved)."""
    assert detect_format(hostile.pickle_payload(2, "model.safetensors")) is Format.PICKLE


@given(st.binary(max_size=256))
@settings(max_examples=300, deadline=None)
def test_detect_format_never_raises(data):
    """Arbitrary bytes always get a verdict, never an exception."""
    assert isinstance(detect_format(data), Format)


def test_format_description_covers_every_member():
    """Every format has a phrase for messages."""
    assert all(fmt.description for fmt in Format)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(hostile.npy_object("x"), True, id="object"),
        pytest.param(
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            False,
            id="float32",
        ),
    ],
)
def test_numpy_has_objects_reads_descr(data, expected):
    """Object dtypes are found in the .npy header without numpy.load."""
    assert numpy_has_objects(data) is expected


# --------------------------------------------------------------------------- safetensors


def test_validate_safetensors_header_returns_specs():
    """A valid header yields one spec per tensor, metadata excluded."""
    specs = validate_safetensors_header(GOOD)
    assert specs == {
        "W": TensorSpec(dtype="F32", shape=(4, 3), begin=0, end=48),
        "b": TensorSpec(dtype="F32", shape=(3,), begin=48, end=60),
    }


def test_validate_safetensors_header_empty_model():
    """A header with no tensors and no data is consistent."""
    assert validate_safetensors_header(_st({}, b"")) == {}


def test_validate_safetensors_header_zero_sized_tensors():
    """Zero-sized tensors may share an offset without counting as an overlap."""
    header = {
        "a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "z": {"dtype": "U8", "shape": [0, 5], "data_offsets": [0, 0]},
        "w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
    }
    assert set(validate_safetensors_header(_st(header, b"ab"))) == {"a", "z", "w"}


@pytest.mark.parametrize(
    "dtype",
    ["BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64", "F64", "C64"],
)
def test_validate_safetensors_header_accepts_numpy_dtypes(dtype):
    """Every dtype that safetensors.numpy can return is accepted."""
    from secureserve.formats import SAFETENSORS_DTYPES

    size = SAFETENSORS_DTYPES[dtype] * 2
    header = {"t": {"dtype": dtype, "shape": [2], "data_offsets": [0, size]}}
    assert validate_safetensors_header(_st(header, b"\0" * size))["t"].dtype == dtype


def _entry(**over):
    return hostile.iris_header(**over)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\x08\x00\x00", "safetensors-header-length", id="no-length"),
        pytest.param(
            struct.pack("<Q", MAX_SAFETENSORS_HEADER_BYTES + 1) + b"{}",
            "safetensors-header-length",
            id="over-limit",
        ),
        pytest.param(struct.pack("<Q", 100) + b"{}", "safetensors-header-length", id="past-end"),
        pytest.param(GOOD[:30], "safetensors-header-length", id="truncated-header"),
        pytest.param(struct.pack("<Q", 8) + b"[1, 2]  ", "safetensors-header", id="not-object"),
        pytest.param(struct.pack("<Q", 8) + b'"text"  ', "safetensors-header", id="string"),
        pytest.param(struct.pack("<Q", 4) + b"{'a'", "safetensors-header-json", id="not-json"),
        pytest.param(struct.pack("<Q", 4) + b"{\xff}\x00", "safetensors-header-json", id="utf8"),
        pytest.param(
            hostile.safetensors_bytes(None, b"", raw_header=b'{"a": NaN}'),
            "safetensors-header-json",
            id="nan",
        ),
        pytest.param(
            hostile.safetensors_bytes(
                None, b"", raw_header=b'{"__metadata__": {}, "__metadata__": {}}'
            ),
            "safetensors-header-json",
            id="duplicate-keys",
        ),
        pytest.param(
            hostile.safetensors_bytes(None, b"", raw_header=b"{" + b"[" * 5000 + b"}"),
            "safetensors-header-json",
            id="deep-nesting",
        ),
        pytest.param(
            hostile.safetensors_bytes(
                None, b"", raw_header=b'{"a": 1, "a": ' + b"[" * 3000 + b"]" * 3000 + b"}"
            ),
            "safetensors-header-json",
            id="duplicate-hides-deep-value",
        ),
        pytest.param(_st(_entry(__metadata__=[])), "safetensors-header", id="metadata-list"),
        pytest.param(_st(_entry(__metadata__={"a": 1})), "safetensors-header", id="metadata-int"),
        pytest.param(_st(_entry(b=[1])), "safetensors-header", id="entry-not-object"),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [3]})), "safetensors-header", id="missing-key"
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [3], "data_offsets": [48, 60], "x": 0})),
            "safetensors-header",
            id="extra-key",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "BF16", "shape": [6], "data_offsets": [48, 60]})),
            "safetensors-dtype",
            id="bf16",
        ),
        pytest.param(
            _st(_entry(b={"dtype": 4, "shape": [3], "data_offsets": [48, 60]})),
            "safetensors-dtype",
            id="dtype-int",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": 3, "data_offsets": [48, 60]})),
            "safetensors-shape",
            id="shape-not-list",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [-3], "data_offsets": [48, 60]})),
            "safetensors-shape",
            id="shape-negative",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [1.5], "data_offsets": [48, 60]})),
            "safetensors-shape",
            id="shape-float",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [True, 3], "data_offsets": [48, 60]})),
            "safetensors-shape",
            id="shape-bool",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [4], "data_offsets": [48, 60]})),
            "safetensors-shape",
            id="size-mismatch",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [3], "data_offsets": [48]})),
            "safetensors-offsets",
            id="offsets-one",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [3], "data_offsets": [60, 48]})),
            "safetensors-offsets",
            id="offsets-reversed",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [3], "data_offsets": [48, 61]})),
            "safetensors-offsets",
            id="offsets-past-end",
        ),
        pytest.param(
            _st(_entry(b={"dtype": "F32", "shape": [3], "data_offsets": [-12, 0]})),
            "safetensors-offsets",
            id="offsets-negative",
        ),
        pytest.param(
            _st(
                _entry(b={"dtype": "F32", "shape": [3], "data_offsets": [36, 48]}),
                hostile.IRIS_DATA[:48],
            ),
            "safetensors-offsets",
            id="overlap",
        ),
        pytest.param(
            _st(
                _entry(b={"dtype": "F32", "shape": [3], "data_offsets": [52, 64]}),
                hostile.IRIS_DATA + b"\0" * 4,
            ),
            "safetensors-offsets",
            id="hole",
        ),
        pytest.param(
            _st(_entry(), hostile.IRIS_DATA + b"\0"), "safetensors-offsets", id="trailing"
        ),
        pytest.param(GOOD[:-1], "safetensors-offsets", id="truncated-data"),
    ],
)
def test_validate_safetensors_header_refuses(data, reason):
    """Each malformed header or layout is refused with its own reason code."""
    with pytest.raises(FormatError) as caught:
        validate_safetensors_header(data)
    assert caught.value.reason == reason
    assert str(caught.value) == caught.value.message


def test_validate_safetensors_header_checks_length_before_slicing():
    """A huge declared length is refused from the 8-byte prefix alone."""
    data = struct.pack("<Q", 2**63) + b"{}"
    with pytest.raises(FormatError, match="limit"):
        validate_safetensors_header(data)


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_validate_safetensors_header_only_raises_format_error(data):
    """Arbitrary bytes either validate or raise FormatError, nothing else."""
    with contextlib.suppress(FormatError):
        validate_safetensors_header(data)


@given(
    st.dictionaries(
        st.text(max_size=5),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "U8", "BF16", "X", 3]),
                "shape": st.lists(st.integers(-2, 4), max_size=3),
                "data_offsets": st.lists(st.integers(-2, 70), max_size=3),
            }
        ),
        max_size=3,
    ),
    st.integers(0, 70),
)
@settings(max_examples=300, deadline=None)
def test_validate_safetensors_header_random_headers(header, data_len):
    """Random headers either validate (and then tile the data) or raise FormatError."""
    data = _st(header, b"\0" * data_len)
    try:
        specs = validate_safetensors_header(data)
    except FormatError:
        return
    assert sum(s.end - s.begin for s in specs.values()) == data_len
    json.dumps(header)  # the header really was JSON
