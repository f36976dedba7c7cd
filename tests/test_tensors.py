"""The OIP v2 tensor codec: JSON and binary requests in, validated numpy out, and back.

Expected bytes follow what ``tritonclient.http`` 2.x sends and reads (its
``_get_inference_request``, ``serialize_byte_tensor`` and ``InferResult.as_numpy``);
the literal request bodies below were produced by it.
"""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secureserve.errors import ModelError, RequestRejected
from secureserve.tensors import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    datatype_of,
    decode_request,
    encode_response,
    numpy_dtype,
    parse_header_length,
)

LIMIT = 10_000

# tritonclient.http: inputs x (FP32 [2,2], binary), s (BYTES [3], binary), k (INT64 [1,3],
# JSON), f (BOOL [2], binary); request id "r1"; outputs y (binary) and z (JSON).
TRITON_BINARY = (
    b'{"id":"r1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":'
    b'{"binary_data_size":16}},{"name":"s","shape":[3],"datatype":"BYTES","parameters":'
    b'{"binary_data_size":17}},{"name":"k","shape":[1,3],"datatype":"INT64","data":[1,-2,3]},'
    b'{"name":"f","shape":[2],"datatype":"BOOL","parameters":{"binary_data_size":2}}],'
    b'"outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z","parameters":'
    b'{"binary_data":false}}]}'
    b"\x00\x00\x80?\x00\x00 @\x00\x00@\xc0\x00\x00\x00>"
    b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00h\xc3\xa9"
    b"\x01\x00"
)
TRITON_BINARY_HEADER = 433
# tritonclient.http, no outputs named: it asks for binary outputs.
TRITON_JSON = (
    b'{"inputs":[{"name":"k","shape":[1,3],"datatype":"INT64","data":[1,-2,3]}],'
    b'"parameters":{"binary_data_output":true}}'
)
# tritonclient.http with sequence_id=7, priority=2, timeout=100, parameters={"custom": "v"}.
TRITON_SEQUENCE = (
    b'{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["ab","h\\u00E9"]}],'
    b'"parameters":{"sequence_id":7,"sequence_start":true,"sequence_end":false,"priority":2,'
    b'"timeout":100,"binary_data_output":true,"custom":"v"}}'
)

SAMPLES: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, 0, 127], [1, -1, 5]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, -1, 5]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -1, 5]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, -1, 5]], dtype=np.int64),
    "UINT8": np.array([[0, 255, 7], [1, 2, 3]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535, 7], [1, 2, 3]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7], [1, 2, 3]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7], [1, 2, 3]], dtype=np.uint64),
    "FP16": np.array([[-65504, 0.1, 6e-8], [1, -0.0, 2.5]], dtype=np.float16),
    "FP32": np.array([[-3.4028235e38, 0.1, 1e-45], [1, -0.0, 3.4028235e38]], dtype=np.float32),
    "FP64": np.array([[-1.7976931348623157e308, 0.1, 5e-324], [1, -0.0, 2.5]]),
    "BYTES": np.array([[b"", b"a,b", "h\u00e9".encode()], [b'"q"', b"\\", b"x" * 300]], object),
}
JSON_TYPES = [datatype for datatype in DATATYPES if datatype != "FP16"]


# ---- helpers --------------------------------------------------------------------------------


def tensor(
    name: str = "x",
    shape: list[int] | None = None,
    datatype: str = "FP32",
    data: Any = None,
    parameters: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One entry of ``inputs``; ``data``, ``parameters`` and ``extra`` only when given."""
    entry: dict[str, Any] = {"name": name, "shape": [2] if shape is None else shape}
    entry["datatype"] = datatype
    if parameters is not None:
        entry["parameters"] = parameters
    if data is not None:
        entry["data"] = data
    return {**entry, **extra}


def json_body(*inputs: dict[str, Any], **top: Any) -> bytes:
    """A JSON request body with ``inputs`` (default: one valid FP32 input)."""
    return msgspec.json.encode({"inputs": list(inputs or [tensor(data=[1, 2])]), **top})


def binary_body(*inputs: tuple[dict[str, Any], bytes], **top: Any) -> tuple[bytes, int]:
    """A body with binary tensors (entry, bytes) after the JSON header, and its length."""
    entries = []
    for entry, chunk in inputs:
        parameters = {**entry.get("parameters", {}), "binary_data_size": len(chunk)}
        entries.append({**entry, "parameters": parameters})
    header = msgspec.json.encode({"inputs": entries, **top})
    return header + b"".join(chunk for _, chunk in inputs), len(header)


def serialize_bytes(items: list[bytes]) -> bytes:
    """BYTES as tritonclient's serialize_byte_tensor writes them: 4-byte length, bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def raw_bytes(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """An array as tritonclient sends it in binary (``tobytes``, BYTES length-prefixed)."""
    if datatype == "BYTES":
        return serialize_bytes(list(array.ravel()))
    return array.tobytes()


def decode(body: bytes, header_length: int | None = None, **limits: int) -> InferRequest:
    """``decode_request`` with the test limit unless told otherwise."""
    limits.setdefault("max_elements", LIMIT)
    return decode_request(body, header_length, **limits)


def refusal(body: bytes, header_length: int | None = None, **limits: int) -> RequestRejected:
    """The ``RequestRejected`` that decoding ``body`` raises."""
    with pytest.raises(RequestRejected) as info:
        decode(body, header_length, **limits)
    return info.value


def read_response(
    body: bytes, header_length: int | None
) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """The response as tritonclient's InferResult reads it: header and arrays by name."""
    header = msgspec.json.decode(body if header_length is None else body[:header_length])
    rest = b"" if header_length is None else body[header_length:]
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for output in header["outputs"]:
        dtype = numpy_dtype(output["datatype"])
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            array = np.array(output["data"], dtype=dtype)
        elif output["datatype"] == "BYTES":
            chunk, items, at = rest[offset : offset + size], [], 0
            while at < len(chunk):
                (length,) = struct.unpack_from("<I", chunk, at)
                items.append(chunk[at + 4 : at + 4 + length])
                at += 4 + length
            array = np.array(items, dtype=object)
        else:
            array = np.frombuffer(rest[offset : offset + size], dtype=dtype.newbyteorder("<"))
        offset += size or 0
        arrays[output["name"]] = array.reshape(output["shape"])
    assert offset == len(rest)
    return header, arrays


def assert_same(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    """Same shape, dtype and values (bit for bit for floats, -0.0 included)."""
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    if want.dtype.kind == "f":
        assert got.tobytes() == want.tobytes()
    else:
        assert got.tolist() == want.tolist()


# ---- datatypes ------------------------------------------------------------------------------


def test_numpy_dtype_maps_every_datatype():
    """Every OIP datatype has its numpy dtype; BYTES is an object array."""
    assert DATATYPES == (
        "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
        "FP16", "FP32", "FP64", "BYTES",
    )  # fmt: skip
    assert numpy_dtype("FP32") == np.float32
    assert numpy_dtype("UINT64") == np.uint64
    assert numpy_dtype("BOOL") == np.bool_
    assert numpy_dtype("BYTES") == np.dtype(object)
    for datatype, sample in SAMPLES.items():
        assert numpy_dtype(datatype) == sample.dtype


@pytest.mark.parametrize("name", ["BF16", "FP8", "fp32", ""])
def test_numpy_dtype_refuses_unknown_names(name):
    """BF16 and names that are not OIP datatypes raise ValueError."""
    with pytest.raises(ValueError, match="not a supported OIP datatype"):
        numpy_dtype(name)


@pytest.mark.parametrize(
    ("onnx_type", "datatype"),
    [
        ("tensor(float)", "FP32"),
        ("tensor(double)", "FP64"),
        ("tensor(float16)", "FP16"),
        ("tensor(int64)", "INT64"),
        ("tensor(int8)", "INT8"),
        ("tensor(uint8)", "UINT8"),
        ("tensor(uint64)", "UINT64"),
        ("tensor(bool)", "BOOL"),
        ("tensor(string)", "BYTES"),
        ("tensor(bfloat16)", None),
        ("tensor(complex64)", None),
        ("seq(tensor(float))", None),
        ("map(int64,tensor(float))", None),
    ],
)
def test_datatype_of_maps_onnxruntime_types(onnx_type, datatype):
    """Onnxruntime type strings map to OIP datatypes; unsupported ones to None."""
    assert datatype_of(onnx_type) == datatype


# ---- what tritonclient sends ----------------------------------------------------------------


def test_decode_tritonclient_binary_request():
    """Tritonclient's mixed binary/JSON body decodes to its arrays, id and output choices."""
    request = decode(TRITON_BINARY, TRITON_BINARY_HEADER)
    assert request.id == "r1"
    assert list(request.inputs) == ["x", "s", "k", "f"]
    assert request.datatypes == {"x": "FP32", "s": "BYTES", "k": "INT64", "f": "BOOL"}
    assert_same(request.inputs["x"], np.array([[1, 2.5], [-3, 0.125]], dtype=np.float32))
    assert_same(request.inputs["s"], np.array([b"ab", b"", "h\u00e9".encode()], object))
    assert_same(request.inputs["k"], np.array([[1, -2, 3]], dtype=np.int64))
    assert_same(request.inputs["f"], np.array([True, False]))
    assert request.requested == [RequestedOutput("y", True), RequestedOutput("z", False)]
    assert request.binary_output is False
    assert request.wants_binary("y") is True
    assert request.wants_binary("z") is False


def test_decode_tritonclient_json_request_asks_for_binary_outputs():
    """Without outputs named, tritonclient sets binary_data_output: every output is binary."""
    request = decode(TRITON_JSON)
    assert request.id is None
    assert request.requested is None
    assert request.binary_output is True
    assert request.wants_binary("anything") is True
    assert_same(request.inputs["k"], np.array([[1, -2, 3]], dtype=np.int64))


def test_decode_tritonclient_sequence_request_is_refused():
    """A stateful sequence (tritonclient's sequence_id) is refused as not supported."""
    rejected = refusal(TRITON_SEQUENCE)
    assert (rejected.status, rejected.slug) == (400, "unsupported")
    assert rejected.detail == "$.parameters.sequence_id: a stateful sequence is not supported"


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", JSON_TYPES)
@pytest.mark.parametrize("form", ["nested", "flat"])
def test_decode_json_every_datatype(datatype, form):
    """Every datatype but FP16 decodes from nested and from flat JSON, exactly."""
    array = SAMPLES[datatype]
    values = array.tolist() if form == "nested" else array.ravel().tolist()
    if datatype == "BYTES":
        array = np.array([[b"", b"a,b", "h\u00e9".encode()], [b'"q"', b"\\", b"{}"]], object)
        values = np.vectorize(bytes.decode, otypes=[object])(array)
        values = values.tolist() if form == "nested" else values.ravel().tolist()
    body = json_body(tensor("t", [2, 3], datatype, values))
    assert_same(decode(body).inputs["t"], array)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_decode_binary_every_datatype(datatype):
    """Every datatype decodes from binary data, as tritonclient serializes it, exactly."""
    array = SAMPLES[datatype]
    body, length = binary_body((tensor("t", [2, 3], datatype), raw_bytes(array, datatype)))
    assert_same(decode(body, length).inputs["t"], array)


def test_decode_binary_arrays_are_fresh_writable_copies():
    """Arrays never alias the request body: they are writable and own their memory."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = binary_body((tensor("t", [2, 3], "FP32"), array.tobytes()))
    got = decode(body, length).inputs["t"]
    assert got.flags.writeable
    assert not np.shares_memory(got, np.frombuffer(body, dtype=np.uint8))
    got[0, 0] = 42
    assert decode(body, length).inputs["t"][0, 0] == 0


def test_decode_json_floats_take_integers_and_round_to_fp32():
    """FP32 and FP64 take JSON integers; FP32 values are rounded to float32."""
    body = json_body(tensor("a", [3], "FP32", [1, 0.1, 2**40]), tensor("b", [1], "FP64", [7]))
    request = decode(body)
    assert_same(request.inputs["a"], np.array([1, 0.1, 2**40], dtype=np.float32))
    assert_same(request.inputs["b"], np.array([7.0]))


def test_decode_json_bytes_are_utf8_encoded():
    """BYTES strings (escapes included) become the UTF-8 bytes of the text."""
    body = b'{"inputs":[{"name":"s","shape":[3],"datatype":"BYTES","data":["\\u00e9","a\\"b",""]}]}'
    assert_same(decode(body).inputs["s"], np.array(["é".encode(), b'a"b', b""], object))


@pytest.mark.parametrize(
    ("shape", "data"),
    [([0], []), ([2, 0], [[], []]), ([2, 0], []), ([1, 0, 3], [[]]), ([3, 1], [[1], [2], [3]])],
)
def test_decode_json_edge_shapes(shape, data):
    """Empty tensors and unit dimensions decode, nested and flat."""
    got = decode(json_body(tensor("t", shape, "INT32", data))).inputs["t"]
    assert got.shape == tuple(shape)
    assert got.dtype == np.int32


def test_decode_binary_empty_tensors():
    """Empty tensors take zero binary bytes, BYTES included."""
    body, length = binary_body((tensor("a", [0, 4], "FP32"), b""), (tensor("b", [0], "BYTES"), b""))
    request = decode(body, length)
    assert request.inputs["a"].shape == (0, 4)
    assert request.inputs["b"].shape == (0,)


def test_decode_mixes_json_and_binary_inputs_in_order():
    """Binary chunks belong to binary inputs in order; JSON inputs in between take none."""
    first, second = np.array([1, 2], np.int16), np.array([b"x", b"yz"], object)
    header = {
        "inputs": [
            tensor("a", [2], "INT16", parameters={"binary_data_size": 4}),
            tensor("j", [1], "BOOL", [True]),
            tensor("b", [2], "BYTES", parameters={"binary_data_size": 11}),
        ]
    }
    head = msgspec.json.encode(header)
    request = decode(head + first.tobytes() + serialize_bytes(list(second)), len(head))
    assert list(request.inputs) == ["a", "j", "b"]
    assert_same(request.inputs["a"], first)
    assert_same(request.inputs["j"], np.array([True]))
    assert_same(request.inputs["b"], second)


def test_decode_header_length_equal_to_the_body_is_all_json():
    """A header length covering the whole body (no binary inputs) is accepted."""
    body = json_body()
    assert decode(body, len(body)).inputs["x"].tolist() == [1, 2]


def test_decode_outputs_and_their_binary_choice():
    """Requested outputs keep order; binary_data overrides binary_data_output per output."""
    body = json_body(
        outputs=[
            {"name": "a"},
            {"name": "b", "parameters": {"binary_data": False}},
            {"name": "c", "parameters": {"binary_data": True}},
        ],
        parameters={"binary_data_output": True},
    )
    request = decode(body)
    assert request.requested == [
        RequestedOutput("a", None),
        RequestedOutput("b", False),
        RequestedOutput("c", True),
    ]
    assert [request.wants_binary(name) for name in "abcd"] == [True, False, True, True]


def test_decode_empty_outputs_list_means_every_output():
    """``"outputs": []`` is the same as no outputs named."""
    assert decode(json_body(outputs=[])).requested is None


@pytest.mark.parametrize(
    "parameters",
    [
        {"priority": 2, "timeout": 100},
        {"custom": "v", "triton_anything": 1.5, "flag": False},
        {},
    ],
)
def test_decode_ignores_other_request_parameters(parameters):
    """priority, timeout and custom parameters are accepted and ignored."""
    assert decode(json_body(parameters=parameters)).binary_output is False


def test_decode_ignores_other_input_and_output_parameters():
    """Unknown input and output parameters (e.g. KServe's content_type) are ignored."""
    body = json_body(
        tensor(data=[1, 2], parameters={"content_type": "np"}),
        outputs=[{"name": "y", "parameters": {"content_type": "np"}}],
    )
    assert decode(body).requested == [RequestedOutput("y", None)]


def test_decode_keeps_the_id():
    """The request id is returned as sent (for the response to echo)."""
    assert decode(json_body(id="req-\u00e9 1")).id == "req-\u00e9 1"
    assert decode(json_body(id="")).id == ""


# ---- refusals -------------------------------------------------------------------------------

MALFORMED = "malformed-json"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"inputs": [',
        json_body() + b" trailing",
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[NaN]}]}',
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[Infinity]}]}',
        b'{"id": "\xff", "inputs": []}',
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["\xff"]}]}',
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=[
        "empty",
        "text",
        "unclosed",
        "trailing",
        "nan",
        "infinity",
        "not-utf8",
        "not-utf8-data",
        "deep",
    ],
)
def test_decode_refuses_what_is_not_json(body):
    """Bytes that are not one JSON object are 400 malformed-json, with a fixed detail."""
    rejected = refusal(body)
    assert (rejected.status, rejected.slug) == (400, MALFORMED)
    assert "Inference-Header-Content-Length" in (rejected.detail or "")


def test_decode_refuses_binary_without_the_header_length():
    """Binary data sent without Inference-Header-Content-Length is trailing data: 400."""
    body, _ = binary_body((tensor(), np.ones(2, np.float32).tobytes()))
    assert refusal(body).slug == MALFORMED


V = "validation"
DUPLICATE = "$: a JSON object repeats a key; send each key once"
NAME_RULE = "1 to 256 printable characters"
NESTING = "nesting does not match shape {}; send lists nested {} deep or one flat list"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[1]", "$: expected object, got array"),
        (b"{}", "$: missing required field 'inputs'"),
        (json_body(extra=1), "$: unknown field 'extra'"),
        (json_body(tensor(data=[1, 2], extra=1)), "$.inputs[0]: unknown field 'extra'"),
        (json_body(outputs=[{"name": "y", "extra": 1}]), "$.outputs[0]: unknown field 'extra'"),
        (
            b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"name":"y"}]}',
            DUPLICATE,
        ),
        (
            b'{"id":"a","inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"id":"b"}',
            DUPLICATE,
        ),
        (
            (
                b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],'
                b'"parameters":{"p":1,"\\u0070":2}}'
            ),
            DUPLICATE,
        ),
        (json_body(id="x" * 257), "$.id: at most 256 printable characters"),
        (json_body(id="a\nb"), "$.id: at most 256 printable characters"),
        (json_body(id=5), "$.id: expected str, got int"),
        (b'{"inputs": []}', "$.inputs: 1 to 64 inputs"),
        (b'{"inputs": {}}', "$.inputs: expected array, got object"),
        (json_body(tensor(name="", data=[1, 2])), f"$.inputs[0].name: {NAME_RULE}"),
        (json_body(tensor(name="x" * 257, data=[1, 2])), f"$.inputs[0].name: {NAME_RULE}"),
        (json_body(tensor(name="a\x00", data=[1, 2])), f"$.inputs[0].name: {NAME_RULE}"),
        (json_body(tensor(name=7, data=[1, 2])), "$.inputs[0].name: expected str, got int"),
        (
            json_body(tensor(data=[1, 2]), tensor(data=[1, 2])),
            "$.inputs[1].name: 'x' repeats an earlier input",
        ),
        (
            json_body(tensor(datatype="BF16", data=[1, 2])),
            "$.inputs[0].datatype: BF16 is not supported; send FP32",
        ),
        (
            json_body(tensor(datatype="fp32", data=[1, 2])),
            (
                "$.inputs[0].datatype: unknown; one of BOOL, INT8, INT16, INT32, INT64, UINT8, "
                "UINT16, UINT32, UINT64, FP16, FP32, FP64, BYTES"
            ),
        ),
        (json_body(tensor(shape=[], data=[1])), "$.inputs[0].shape: 1 to 8 dimensions"),
        (json_body(tensor(shape=[1] * 9, data=[1])), "$.inputs[0].shape: 1 to 8 dimensions"),
        (
            json_body(tensor(shape=[2, -1], data=[])),
            "$.inputs[0].shape[1]: dimensions are non-negative integers",
        ),
        (
            json_body(tensor(shape=[2.0], data=[1, 2])),
            "$.inputs[0].shape[0]: expected int, got float",
        ),
        (json_body(tensor(shape=[True], data=[1])), "$.inputs[0].shape[0]: expected int, got bool"),
        (json_body(tensor(shape="2", data=[1, 2])), "$.inputs[0].shape: expected array, got str"),
        (json_body(tensor()), "$.inputs[0]: needs data or parameters.binary_data_size"),
        (
            json_body(tensor(data=[1, 2], parameters={"binary_data_size": 8})),
            "$.inputs[0]: data or parameters.binary_data_size, not both",
        ),
        (
            json_body(tensor(parameters={"binary_data_size": 8})),
            (
                "$.inputs[0].parameters.binary_data_size: binary data needs the "
                "Inference-Header-Content-Length header"
            ),
        ),
    ],
)
def test_decode_refuses_bad_structure(body, detail):
    """Each structural fault is a 400 validation naming the path and the rule."""
    rejected = refusal(body)
    assert (rejected.status, rejected.slug, rejected.detail) == (400, V, detail)


@pytest.mark.parametrize(
    ("entry", "detail"),
    [
        (
            tensor(shape=[3, 5], data=list(range(12))),
            "$.inputs[0].data: 12 values for shape [3, 5] (15)",
        ),
        (tensor(shape=[2], data=[1, 2, 3]), "$.inputs[0].data: 3 values for shape [2] (2)"),
        (tensor(shape=[2], data=[]), "$.inputs[0].data: 0 values for shape [2] (2)"),
        (
            tensor(shape=[3, 5], data=[[0] * 5, [0] * 4, [0] * 5]),
            "$.inputs[0].data[1]: 4 values where shape [3, 5] has 5 (dimension 1)",
        ),
        (
            tensor(shape=[2, 2, 2], data=[[[0, 0], [0, 0]], [[0, 0], [0]]]),
            "$.inputs[0].data[1][1]: 1 values where shape [2, 2, 2] has 2 (dimension 2)",
        ),
        (
            tensor(shape=[3, 2], data=[[0, 0], [0, 0]]),
            "$.inputs[0].data: 2 values where shape [3, 2] has 3 (dimension 0)",
        ),
        (
            tensor(shape=[2, 2], data=[[[1]], [2]]),
            "$.inputs[0].data[0][0]: " + NESTING.format([2, 2], 2),
        ),
        (
            tensor(shape=[2, 2], data=[[1, 2], 3, 4]),
            "$.inputs[0].data[1]: " + NESTING.format([2, 2], 2),
        ),
        (tensor(shape=[2], data=[[1], [2]]), "$.inputs[0].data[0]: " + NESTING.format([2], 1)),
        (tensor(data=5), "$.inputs[0].data: must be an array"),
        (tensor(data={"a": 1}), "$.inputs[0].data: must be an array"),
        (tensor(data="[1, 2]"), "$.inputs[0].data: must be an array"),
        (
            tensor(datatype="FP16", data=[1, 2]),
            "$.inputs[0].data: FP16 tensors are sent as binary data",
        ),
        (tensor(datatype="BOOL", data=[True, 1]), "$.inputs[0].data[1]: BOOL takes true or false"),
        (
            tensor(datatype="BOOL", data=[True, "true"]),
            "$.inputs[0].data[1]: BOOL takes true or false",
        ),
        (
            tensor(datatype="INT32", data=[1, 1.0]),
            "$.inputs[0].data[1]: INT32 takes an integer from -2147483648 to 2147483647",
        ),
        (
            tensor(datatype="INT32", data=[1, True]),
            "$.inputs[0].data[1]: INT32 takes an integer from -2147483648 to 2147483647",
        ),
        (
            tensor(datatype="INT8", data=[1, 128]),
            "$.inputs[0].data[1]: INT8 takes an integer from -128 to 127",
        ),
        (
            tensor(datatype="INT8", data=[-129, 1]),
            "$.inputs[0].data[0]: INT8 takes an integer from -128 to 127",
        ),
        (
            tensor(datatype="UINT8", data=[1, -1]),
            "$.inputs[0].data[1]: UINT8 takes an integer from 0 to 255",
        ),
        (
            tensor(datatype="UINT64", data=[1, 2**64]),
            "$.inputs[0].data[1]: UINT64 takes an integer from 0 to 18446744073709551615",
        ),
        (
            tensor(datatype="UINT64", shape=[2, 2], data=[[1, 2], [2**64, 1]]),
            "$.inputs[0].data[1][0]: UINT64 takes an integer from 0 to 18446744073709551615",
        ),
        (
            tensor(datatype="UINT64", data=[1, -1]),
            "$.inputs[0].data[1]: UINT64 takes an integer from 0 to 18446744073709551615",
        ),
        (
            tensor(datatype="UINT64", data=[1, 10**400]),
            "$.inputs[0].data[1]: UINT64 takes an integer from 0 to 18446744073709551615",
        ),
        (
            tensor(datatype="INT64", data=[1, 2**63]),
            (
                "$.inputs[0].data[1]: INT64 takes an integer from -9223372036854775808 to "
                "9223372036854775807"
            ),
        ),
        (
            tensor(datatype="FP32", data=[1, 3.5e38]),
            "$.inputs[0].data[1]: FP32 takes a number of magnitude at most 3.4028235e+38",
        ),
        (
            tensor(datatype="FP32", data=[-1e39, 1]),
            "$.inputs[0].data[0]: FP32 takes a number of magnitude at most 3.4028235e+38",
        ),
        (
            tensor(datatype="FP32", data=[1, None]),
            "$.inputs[0].data[1]: FP32 takes a number of magnitude at most 3.4028235e+38",
        ),
        (tensor(datatype="FP64", data=[1, "2"]), "$.inputs[0].data[1]: FP64 takes a finite number"),
        (tensor(datatype="BYTES", data=["a", 1]), "$.inputs[0].data[1]: BYTES takes a string"),
    ],
)
def test_decode_refuses_json_data_that_breaks_the_rules(entry, detail):
    """Data of the wrong count, nesting or value type is a 400 naming the element's path."""
    rejected = refusal(json_body(entry))
    assert (rejected.status, rejected.slug, rejected.detail) == (400, V, detail)


def test_decode_refuses_fp64_overflow_to_infinity():
    """A JSON number too large for a double (1e400) is refused, never read as infinity."""
    body = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP64","data":[1,1e400]}]}'
    assert refusal(body).detail == "$.inputs[0].data[1]: FP64 takes a finite number"


def test_decode_refuses_the_second_bad_input_by_its_index():
    """The path names the input that is wrong, not the first one."""
    body = json_body(tensor("a", data=[1, 2]), tensor("b", datatype="INT8", data=[1, 999]))
    assert refusal(body).detail == "$.inputs[1].data[1]: INT8 takes an integer from -128 to 127"


# ---- binary refusals ------------------------------------------------------------------------

FP32_PAIR = np.array([1, 2], np.float32).tobytes()


@pytest.mark.parametrize(
    ("chunk", "detail"),
    [
        (
            FP32_PAIR + b"\x00",
            "$.inputs[0].parameters.binary_data_size: 9 bytes for shape [2] of FP32 (8 expected)",
        ),
        (
            FP32_PAIR[:7],
            "$.inputs[0].parameters.binary_data_size: 7 bytes for shape [2] of FP32 (8 expected)",
        ),
        (
            b"",
            "$.inputs[0].parameters.binary_data_size: 0 bytes for shape [2] of FP32 (8 expected)",
        ),
    ],
)
def test_decode_refuses_binary_sizes_that_do_not_fit_the_shape(chunk, detail):
    """A fixed-size tensor's binary_data_size must be prod(shape) * itemsize exactly."""
    body, length = binary_body((tensor(), chunk))
    rejected = refusal(body, length)
    assert (rejected.status, rejected.slug, rejected.detail) == (400, V, detail)


@pytest.mark.parametrize(
    ("size", "appended", "detail"),
    [
        (8, b"", None),
        (
            8,
            b"\x00",
            (
                "$.inputs: the binary_data_size values add up to 8 bytes, but 9 bytes "
                "follow the JSON header"
            ),
        ),
        (
            16,
            FP32_PAIR,
            "$.inputs[0].parameters.binary_data_size: 16 bytes for shape [2] of FP32 (8 expected)",
        ),
        (
            10**30,
            FP32_PAIR,
            "$.inputs[0].parameters.binary_data_size: more than the 16 bytes after the JSON header",
        ),
        (-8, b"", "$.inputs[0].parameters.binary_data_size: a non-negative integer"),
        (True, b"", "$.inputs[0].parameters.binary_data_size: a non-negative integer"),
        ("8", b"", "$.inputs[0].parameters.binary_data_size: a non-negative integer"),
        (8.0, b"", "$.inputs[0].parameters.binary_data_size: a non-negative integer"),
    ],
)
def test_decode_refuses_binary_sizes_that_lie(size, appended, detail):
    """A binary_data_size that is not a count, or sizes that do not add up, is a 400."""
    header = msgspec.json.encode({"inputs": [tensor(parameters={"binary_data_size": size})]})
    body = header + FP32_PAIR + appended
    if detail is None:
        assert decode(body, len(header)).inputs["x"].tolist() == [1, 2]
        return
    rejected = refusal(body, len(header))
    assert (rejected.status, rejected.slug, rejected.detail) == (400, V, detail)


def test_decode_refuses_binary_bytes_after_a_json_only_header():
    """Bytes after the header that no input claims are refused."""
    header = json_body()
    rejected = refusal(header + b"\x00" * 4, len(header))
    assert rejected.detail == (
        "$.inputs: the binary_data_size values add up to 0 bytes, but 4 bytes follow the JSON "
        "header"
    )


@pytest.mark.parametrize("length", [0, -1, 10**6])
def test_decode_refuses_a_header_length_outside_the_body(length):
    """Inference-Header-Content-Length must be 1 to the body's length."""
    body, _ = binary_body((tensor(), FP32_PAIR))
    rejected = refusal(body, length)
    assert rejected.status == 400
    assert rejected.detail == (
        f"Inference-Header-Content-Length: {length} is not within the body of {len(body)} bytes"
    )


def test_decode_refuses_a_header_length_inside_the_json():
    """A header length that cuts the JSON short makes it malformed."""
    body, length = binary_body((tensor(), FP32_PAIR))
    assert refusal(body, length - 1).slug == MALFORMED


@pytest.mark.parametrize(
    ("chunk", "count", "detail"),
    [
        (
            serialize_bytes([b"ab", b"c"])[:-1] + b"",
            2,
            "$.inputs[0].parameters.binary_data_size: element 1 claims 1 bytes; 0 remain",
        ),
        (
            struct.pack("<I", 2**32 - 1) + b"abcd",
            2,
            "$.inputs[0].parameters.binary_data_size: element 0 claims 4294967295 bytes; 4 remain",
        ),
        (
            serialize_bytes([b"ab"]) + b"\x01\x00",
            3,
            (
                "$.inputs[0].parameters.binary_data_size: 8 bytes cannot hold 3 BYTES elements "
                "(each has a 4-byte length)"
            ),
        ),
        (
            serialize_bytes([b"ab", b""]) + b"\x01\x00",
            2,
            "$.inputs[0].parameters.binary_data_size: 2 bytes left after the 2 elements",
        ),
        (
            serialize_bytes([b"a", b"b", b"c"]),
            2,
            "$.inputs[0].parameters.binary_data_size: 5 bytes left after the 2 elements",
        ),
        (
            serialize_bytes([b"abcd"]) + b"\x00\x00\x00",
            2,
            "$.inputs[0].parameters.binary_data_size: the data ends inside the length of element 1",
        ),
    ],
)
def test_decode_refuses_bytes_elements_that_overrun(chunk, count, detail):
    """BYTES binary data must hold exactly prod(shape) length-prefixed elements that fit."""
    body, length = binary_body((tensor("s", [count], "BYTES"), chunk))
    rejected = refusal(body, length)
    assert (rejected.status, rejected.slug, rejected.detail) == (400, V, detail)


def test_decode_refuses_bool_bytes_other_than_zero_and_one():
    """Binary BOOL data holds 0 or 1 per element, nothing else."""
    body, length = binary_body((tensor("b", [3], "BOOL"), b"\x01\x00\x02"))
    assert refusal(body, length).detail == (
        "$.inputs[0]: BOOL binary data holds a byte other than 0 or 1"
    )


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_decode_refuses_non_finite_binary_floats(datatype, value):
    """NaN and Infinity are refused in binary data as JSON cannot carry them either."""
    array = np.array([1, value], dtype=numpy_dtype(datatype))
    body, length = binary_body((tensor(datatype=datatype), array.tobytes()))
    assert refusal(body, length).detail == (
        "$.inputs[0]: binary data holds NaN or Infinity; send finite values"
    )


# ---- parameters and outputs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("top", "status", "slug", "detail"),
    [
        (
            {"parameters": {"binary_data_output": 1}},
            400,
            V,
            "$.parameters.binary_data_output: must be true or false",
        ),
        (
            {"parameters": {"binary_data_output": "true"}},
            400,
            V,
            "$.parameters.binary_data_output: must be true or false",
        ),
        (
            {"parameters": {"shared_memory_region": "r"}},
            400,
            "unsupported",
            "$.parameters.shared_memory_region: shared memory is not supported",
        ),
        (
            {"parameters": {"classification": 3}},
            400,
            "unsupported",
            "$.parameters.classification: classification is not supported",
        ),
        (
            {"parameters": {"sequence_end": True}},
            400,
            "unsupported",
            "$.parameters.sequence_end: a stateful sequence is not supported",
        ),
        (
            {"parameters": {"x": [1]}},
            400,
            V,
            "$.parameters[...]: a parameter's value is a boolean, a number or a string",
        ),
        (
            {"parameters": {"x": {"a": 1}}},
            400,
            V,
            "$.parameters[...]: a parameter's value is a boolean, a number or a string",
        ),
        (
            {"parameters": {"x": None}},
            400,
            V,
            "$.parameters[...]: a parameter's value is a boolean, a number or a string",
        ),
        ({"parameters": {"x": "v" * 1025}}, 400, V, "$.parameters[...]: length must be <= 1024"),
        (
            {"parameters": {"k" * 257: 1}},
            400,
            V,
            "$.parameters: a parameter's name is at most 256 characters",
        ),
        (
            {"parameters": {f"p{i}": i for i in range(65)}},
            400,
            V,
            "$.parameters: length must be <= 64",
        ),
        ({"parameters": [1]}, 400, V, "$.parameters: expected object, got array"),
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            400,
            V,
            "$.outputs[0].parameters.binary_data: must be true or false",
        ),
        (
            {"outputs": [{"name": "y", "parameters": {"classification": 2}}]},
            400,
            "unsupported",
            "$.outputs[0].parameters.classification: classification is not supported",
        ),
        (
            {"outputs": [{"name": "y", "parameters": {"shared_memory_byte_size": 8}}]},
            400,
            "unsupported",
            "$.outputs[0].parameters.shared_memory_byte_size: shared memory is not supported",
        ),
        (
            {"outputs": [{"name": "y"}, {"name": "y"}]},
            400,
            V,
            "$.outputs[1].name: 'y' repeats an earlier output",
        ),
        ({"outputs": [{"name": ""}]}, 400, V, f"$.outputs[0].name: {NAME_RULE}"),
        (
            {"outputs": [{"name": f"o{i}"} for i in range(65)]},
            400,
            V,
            "$.outputs: at most 64 outputs",
        ),
        ({"outputs": [{}]}, 400, V, "$.outputs[0]: missing required field 'name'"),
    ],
)
def test_decode_refuses_bad_parameters_and_outputs(top, status, slug, detail):
    """Parameters and outputs are checked; shared memory, classification, sequences refused."""
    rejected = refusal(json_body(**top))
    assert (rejected.status, rejected.slug, rejected.detail) == (status, slug, detail)


@pytest.mark.parametrize(
    "parameters",
    [
        {"shared_memory_region": "r", "shared_memory_byte_size": 8},
        {"shared_memory_offset": 0},
        {"shared_memory_\nSECRET": 0},
    ],
)
def test_decode_refuses_shared_memory_inputs(parameters):
    """Inputs in shared memory (tritonclient's set_shared_memory) are not supported."""
    rejected = refusal(json_body(tensor(parameters=parameters)))
    assert (rejected.status, rejected.slug) == (400, "unsupported")
    assert rejected.detail is not None
    assert rejected.detail.startswith("$.inputs[0].parameters.shared_memory_")
    assert rejected.detail.endswith(": shared memory is not supported")
    assert "SECRET" not in rejected.detail


def test_decode_limits_inputs_and_outputs_as_told():
    """max_inputs and max_outputs bound the two lists."""
    body = json_body(tensor("a", data=[1, 2]), tensor("b", data=[1, 2]), outputs=[{"name": "y"}])
    assert refusal(body, max_inputs=1).detail == "$.inputs: 1 to 1 inputs"
    assert refusal(body, max_outputs=0).detail == "$.outputs: at most 0 outputs"
    assert len(decode(body, max_inputs=2, max_outputs=1).inputs) == 2
    many = json_body(*(tensor(f"i{i}", data=[1, 2]) for i in range(65)))
    assert refusal(many).detail == "$.inputs: 1 to 64 inputs"


# ---- what is echoed -------------------------------------------------------------------------


def test_decode_echoes_at_most_64_characters_of_a_name():
    """A long name in a detail is cut to 64 characters, with ``...`` after the quote."""
    name = "n" * 200
    rejected = refusal(json_body(tensor(name, data=[1, 2]), tensor(name, data=[1, 2])))
    assert rejected.detail == f"$.inputs[1].name: '{'n' * 64}'... repeats an earlier input"


def test_decode_names_an_unknown_member_escaped_and_cut_short():
    """An unknown member is named as /v1 names one: escaped, at most 64 characters of it."""
    rejected = refusal(json_body(tensor(data=[1, 2], **{"a\x1b[2J\n'" + "z" * 100: 1})))
    assert rejected.detail == "$.inputs[0]: unknown field 'a\\x1b[2J\\n\\'" + "z" * 57 + "'..."
    assert rejected.detail.isprintable()


@pytest.mark.parametrize(
    "body",
    [
        json_body(tensor(datatype="SECRET" * 50, data=[1, 2])),
        json_body(tensor(datatype="INT8", data=[1, 123456789123456789])),
        json_body(tensor(data=[1, "SECRET" * 50])),
        json_body(tensor(shape=[2, 10**30], data=[])),
        json_body(tensor(data=[1, 2]), id="SECRET" * 50),
        json_body(parameters={"x": "SECRET" * 500}),
    ],
)
def test_decode_details_never_echo_client_values(body):
    """Values and library wording never reach the detail (names: the test above)."""
    detail = refusal(body).detail or ""
    for leak in ("SECRET", "123456789123456789", "10000000000", "Expected", "msgspec", "`"):
        assert leak not in detail
    assert len(detail) < 200


# ---- limits and hostile bodies --------------------------------------------------------------

TOO_MANY = "too-many-elements"


@pytest.mark.parametrize(
    ("shape", "detail"),
    [
        ([10_001], "$.inputs[0].shape: more than 10000 elements (the limit)"),
        ([100, 101], "$.inputs[0].shape: more than 10000 elements (the limit)"),
        ([2**32, 2**32, 2**32], "$.inputs[0].shape: more than 10000 elements (the limit)"),
        ([2**63, 2], "$.inputs[0].shape: more than 10000 elements (the limit)"),
        ([10**30], "$.inputs[0].shape: more than 10000 elements (the limit)"),
        ([0, 10**30], "$.inputs[0].shape: more than 10000 elements (the limit)"),
        ([10_001, 0], "$.inputs[0].shape: more than 10000 elements (the limit)"),
    ],
)
def test_decode_refuses_shapes_over_the_element_limit(shape, detail):
    """A shape over max_elements (zeros counted as 1, no overflow) is a 413 before its data."""
    rejected = refusal(json_body(tensor(shape=shape, data=[])))
    assert (rejected.status, rejected.slug, rejected.detail) == (413, TOO_MANY, detail)


def test_decode_refuses_elements_over_the_limit_across_inputs():
    """The element counts of all inputs together are bounded by max_elements too."""
    body = json_body(tensor("a", [6000], data=[]), tensor("b", [6000], data=[]))
    rejected = refusal(body)
    assert (rejected.status, rejected.slug) == (413, TOO_MANY)
    assert rejected.detail == "$.inputs: more than 10000 elements in all (the limit per request)"


def test_decode_accepts_exactly_the_element_limit():
    """max_elements itself is allowed."""
    body, length = binary_body((tensor(shape=[100, 100], datatype="UINT8"), bytes(10_000)))
    assert decode(body, length).inputs["x"].shape == (100, 100)


@pytest.mark.parametrize("depth", [3, 9, 200])
def test_decode_refuses_data_nested_deeper_than_the_rank(depth):
    """Nesting past the rank stops at the first extra level, naming where it starts."""
    data = b"[" * depth + b"1" + b"]" * depth
    body = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":' + data + b"}]}"
    rejected = refusal(body)
    assert (rejected.status, rejected.slug) == (400, V)
    assert rejected.detail == "$.inputs[0].data[0][0]: " + NESTING.format([1, 1], 2)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_decode_refuses_json_nested_past_the_parser_limit(depth):
    """JSON nested past msgspec's recursion limit is malformed (no RecursionError escapes)."""
    data = b"[" * depth + b"]" * depth
    body = b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":' + data + b"}]}"
    assert refusal(body).slug == MALFORMED


def _peak_bytes(body: bytes, *, max_elements: int) -> tuple[RequestRejected, int]:
    """The refusal of ``body`` and the most memory decoding it took on the way."""
    tracemalloc.start()
    try:
        with pytest.raises(RequestRejected) as info:
            decode_request(body, None, max_elements=max_elements)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return info.value, peak


MILLION_ZEROS = b"[" + b"0," * 999_999 + b"0]"


def test_decode_refuses_a_shape_over_the_limit_before_reading_data():
    """10^6 + 1 declared elements over a 10^6 limit: 413 while memory stays small."""
    data = b"[" + b"0," * 1_000_000 + b"0]"
    body = b'{"inputs":[{"name":"x","shape":[1000001],"datatype":"FP32","data":' + data + b"}]}"
    rejected, peak = _peak_bytes(body, max_elements=1_000_000)
    assert (rejected.status, rejected.slug) == (413, TOO_MANY)
    assert peak < 256 * 1024


@pytest.mark.parametrize("datatype", ["FP32", "BOOL", "INT8"])
def test_decode_refuses_a_flood_of_values_before_building_them(datatype):
    """10^6 tiny values for a shape of 10 are refused without building them (no 30 MB)."""
    body = b'{"inputs":[{"name":"x","shape":[10],"datatype":"%s","data":%s}]}' % (
        datatype.encode(),
        MILLION_ZEROS,
    )
    rejected, peak = _peak_bytes(body, max_elements=1_000_000)
    assert rejected.detail == "$.inputs[0].data: more values than shape [10] holds (10)"
    assert peak < 256 * 1024


def test_decode_refuses_a_flood_of_strings_before_building_them():
    """10^6 strings for a BYTES shape of 10 are refused within a copy or two of the data."""
    data = b"[" + b'"",' * 999_999 + b'""]'
    body = b'{"inputs":[{"name":"s","shape":[10],"datatype":"BYTES","data":' + data + b"}]}"
    rejected, peak = _peak_bytes(body, max_elements=1_000_000)
    assert rejected.detail == "$.inputs[0].data: more values than shape [10] holds (10)"
    assert peak < 2.5 * len(body)


def test_decode_refuses_a_flood_of_empty_lists_before_building_them():
    """10^6 empty lists in nested data for a [10, 1] shape are refused before decoding."""
    data = b"[" + b"[]," * 999_999 + b"[]]"
    body = b'{"inputs":[{"name":"x","shape":[10,1],"datatype":"FP32","data":' + data + b"}]}"
    rejected, peak = _peak_bytes(body, max_elements=1_000_000)
    assert rejected.detail == "$.inputs[0].data: more values than shape [10, 1] holds (10)"
    assert peak < 256 * 1024


def test_decode_large_valid_data_with_strings_and_escapes():
    """Large data passes the pre-count exactly: commas and quotes inside strings are text."""
    items = ["a,b", 'q"x', "\\", 'e\\"', "", ",,,", '\\\\"'] * 3000
    body = json_body(tensor("s", [len(items)], "BYTES", items))
    assert len(body) > 65536
    got = decode(body, max_elements=len(items)).inputs["s"]
    assert got.tolist() == [item.encode() for item in items]
    nested = json_body(tensor("s", [3000, 7], "BYTES", [items[:7]] * 3000))
    assert decode(nested, max_elements=len(items)).inputs["s"].shape == (3000, 7)


def test_decode_large_valid_numeric_data():
    """A large flat and nested numeric tensor decodes (the pre-count allows exactly it)."""
    array = np.arange(40_000, dtype=np.int32).reshape(200, 200)
    for values in (array.tolist(), array.ravel().tolist()):
        body = json_body(tensor("x", [200, 200], "INT32", values))
        assert len(body) > 65536
        assert_same(decode(body, max_elements=40_000).inputs["x"], array)


# ---- the header length ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("433", 433), (b"12", 12), ("0", 0), ("9999999999", 9_999_999_999)],
)
def test_parse_header_length_reads_decimal_counts(value, expected):
    """The header value is read as a decimal count of bytes (None when absent)."""
    assert parse_header_length(value) == expected


@pytest.mark.parametrize(
    "value", ["", "-1", "+5", " 5", "5 ", "1_000", "0x10", "١٢", "12345678901"]
)
def test_parse_header_length_refuses_anything_else(value):
    """Signs, spaces, underscores, non-ASCII digits and 11+ digits are a 400."""
    with pytest.raises(RequestRejected) as info:
        parse_header_length(value)
    assert (info.value.status, info.value.slug) == (400, V)
    assert info.value.detail == "Inference-Header-Content-Length: must be a decimal byte count"


# ---- responses ------------------------------------------------------------------------------


def encode(
    outputs: list[tuple[str, str, np.ndarray[Any, Any]]],
    binary: Any = frozenset(),
    *,
    request_id: str | None = None,
    model_version: str | None = "1",
) -> tuple[bytes, int | None]:
    """``encode_response`` for model "m"."""
    return encode_response(
        model_name="m",
        model_version=model_version,
        request_id=request_id,
        outputs=outputs,
        binary=binary,
    )


def test_encode_json_response_exact_bytes():
    """A JSON response is the OIP object, data flat and row-major, no header length."""
    body, length = encode(
        [
            ("y", "FP32", np.array([[1.5, -2], [0.25, 8]], np.float32)),
            ("l", "BOOL", np.array([True, False])),
            ("s", "BYTES", np.array(["h\u00e9", b"a"], object)),
        ],
        request_id="r1",
    )
    assert length is None
    assert body == (
        b'{"model_name":"m","model_version":"1","id":"r1","outputs":['
        b'{"name":"y","datatype":"FP32","shape":[2,2],"data":[1.5,-2.0,0.25,8.0]},'
        b'{"name":"l","datatype":"BOOL","shape":[2],"data":[true,false]},'
        b'{"name":"s","datatype":"BYTES","shape":[2],"data":["h\xc3\xa9","a"]}]}'
    )


def test_encode_binary_response_exact_bytes():
    """Binary outputs carry binary_data_size; their bytes follow the header in order."""
    body, length = encode(
        [
            ("y", "FP32", np.array([1.5, -2], np.float32)),
            ("j", "INT8", np.array([3], np.int8)),
            ("s", "BYTES", np.array([b"ab", b""], object)),
        ],
        {"y", "s"},
    )
    header = (
        b'{"model_name":"m","model_version":"1","outputs":['
        b'{"name":"y","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}},'
        b'{"name":"j","datatype":"INT8","shape":[1],"data":[3]},'
        b'{"name":"s","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":10}}]}'
    )
    assert length == len(header)
    assert body == header + struct.pack("<2f", 1.5, -2) + serialize_bytes([b"ab", b""])


@pytest.mark.parametrize("datatype", JSON_TYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_encode_every_datatype_reads_back(datatype, binary):
    """Every datatype reads back exactly as tritonclient reads it, in JSON and in binary."""
    array = SAMPLES[datatype]
    if datatype == "BYTES" and not binary:
        array = np.array([["", "a,b", "h\u00e9"], ['"q"', "\\", "{}"]], object)
    body, length = encode([("t", datatype, array)], {"t"} if binary else set())
    assert (length is not None) is binary
    _, arrays = read_response(body, length)
    if datatype == "BYTES":
        assert arrays["t"].tolist() == array.tolist()
    else:
        assert_same(arrays["t"], array)


def test_encode_fp16_is_always_binary():
    """FP16 outputs go as binary data even when JSON was asked for."""
    array = SAMPLES["FP16"]
    body, length = encode([("h", "FP16", array), ("f", "FP32", SAMPLES["FP32"])])
    header, arrays = read_response(body, length)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert "data" in header["outputs"][1]
    assert_same(arrays["h"], array)


def test_encode_bytes_that_are_not_utf8_go_binary():
    """A BYTES output that is not valid UTF-8 is sent as binary data, never as bad JSON."""
    array = np.array([b"ok", b"\xff\xfe"], object)
    body, length = encode([("s", "BYTES", array)])
    header, arrays = read_response(body, length)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert arrays["s"].tolist() == [b"ok", b"\xff\xfe"]


def test_encode_accepts_onnxruntime_strings_and_numpy_bytes():
    """BYTES outputs may be object arrays of str (onnxruntime) or numpy S/U arrays."""
    for array in (
        np.array(["a", "bc"], object),
        np.array([b"a", b"bc"], dtype="S2"),
        np.array(["a", "bc"], dtype="U2"),
    ):
        body, length = encode([("s", "BYTES", array)], {"s"})
        assert read_response(body, length)[1]["s"].tolist() == [b"a", b"bc"]


def test_encode_row_major_whatever_the_memory_layout():
    """Transposed, sliced and big-endian arrays are written row-major, little-endian."""
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    for array in (base.T, base[:, ::2], base.astype(">f8"), np.asfortranarray(base)):
        for binary in ({"y"}, set()):
            body, length = encode([("y", "FP64", array)], binary)
            got = read_response(body, length)[1]["y"]
            assert got.tolist() == array.tolist()


def test_encode_id_and_version_only_when_known():
    """Id is echoed only when the request had one (an empty one too); version when known."""
    body, _ = encode([], model_version=None)
    assert body == b'{"model_name":"m","outputs":[]}'
    body, _ = encode([], request_id="")
    assert body == b'{"model_name":"m","model_version":"1","id":"","outputs":[]}'


def test_encode_takes_a_callable_such_as_wants_binary():
    """``binary`` may be the request's wants_binary."""
    request = decode(json_body(outputs=[{"name": "a", "parameters": {"binary_data": True}}]))
    body, length = encode(
        [("a", "INT32", np.array([1], np.int32)), ("b", "INT32", np.array([2], np.int32))],
        request.wants_binary,
    )
    header, arrays = read_response(body, length)
    assert "parameters" in header["outputs"][0]
    assert "data" in header["outputs"][1]
    assert arrays["a"].tolist() == [1]


def test_encode_empty_and_scalar_outputs():
    """Empty tensors and 0-d arrays encode with their shapes."""
    body, length = encode(
        [("e", "FP32", np.zeros((0, 3), np.float32)), ("s", "INT64", np.array(7))], {"e"}
    )
    header, arrays = read_response(body, length)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 0}
    assert header["outputs"][1]["shape"] == []
    assert arrays["e"].shape == (0, 3)
    assert arrays["s"].tolist() == 7


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_encode_refuses_non_finite_outputs(datatype, value, binary):
    """NaN or Infinity in an output is a ModelError (a bare 500), never a body."""
    array = np.array([1, value], dtype=numpy_dtype(datatype))
    with pytest.raises(ModelError, match="holds NaN or Infinity"):
        encode([("y", datatype, array)], {"y"} if binary else set())


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (("y", "FP32", np.array([1.0])), "is float64, not FP32"),
        (("y", "INT64", np.array([1], np.int32)), "is int32, not INT64"),
        (("y", "BOOL", np.array([1], np.uint8)), "is uint8, not BOOL"),
        (("y", "FP32", np.array([1.0], object)), "is object, not FP32"),
        (("y", "BYTES", np.array([1.0])), "is float64, not BYTES"),
        (("y", "BYTES", np.array([b"a", 3], object)), "holds a int, not bytes or str"),
        (("y", "BF16", np.array([1.0], np.float32)), "has no OIP datatype"),
    ],
)
def test_encode_refuses_outputs_that_do_not_match_their_datatype(output, message):
    """An array whose dtype does not match its datatype is a ModelError."""
    with pytest.raises(ModelError, match=message):
        encode([output])


def test_encode_refuses_an_output_twice():
    """Two outputs of one name are a ModelError."""
    array = np.array([1], np.int8)
    with pytest.raises(ModelError, match="appears twice"):
        encode([("y", "INT8", array), ("y", "INT8", array)])


# ---- properties -----------------------------------------------------------------------------

NUMERIC = [datatype for datatype in DATATYPES if datatype != "BYTES"]


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, np.ndarray[Any, Any]]:
    """A datatype and a finite array of it, of rank 1 to 4."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))
    if datatype == "BYTES":
        elements = st.binary(max_size=8)
        array = draw(hnp.arrays(object, shape, elements=elements))
    else:
        dtype = numpy_dtype(datatype)
        elements = (
            st.floats(allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
            if dtype.kind == "f"
            else None
        )
        array = draw(hnp.arrays(dtype, shape, elements=elements))
    return datatype, array


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors())
def test_property_binary_request_round_trip(item):
    """Any finite array sent as tritonclient sends binary data decodes to itself."""
    datatype, array = item
    entry = tensor("t", list(array.shape), datatype)
    body, length = binary_body((entry, raw_bytes(array, datatype)))
    assert_same(decode(body, length).inputs["t"], array)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors(), st.booleans())
def test_property_json_request_round_trip(item, nested):
    """Any finite array but FP16 sent as JSON (nested or flat) decodes to itself."""
    datatype, array = item
    if datatype == "FP16":
        return
    if datatype == "BYTES":
        array = np.vectorize(lambda b: b.hex().encode(), otypes=[object])(array)
        values = np.vectorize(bytes.decode, otypes=[object])(array)
    else:
        values = array
    data = values.tolist() if nested else values.ravel().tolist()
    got = decode(json_body(tensor("t", list(array.shape), datatype, data))).inputs["t"]
    assert got.shape == array.shape
    assert got.dtype == array.dtype
    assert got.tolist() == array.tolist()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors(), st.booleans())
def test_property_response_round_trip(item, binary):
    """Any finite output reads back as tritonclient reads it, in JSON or binary."""
    datatype, array = item
    body, length = encode([("t", datatype, array)], {"t"} if binary else set())
    got = read_response(body, length)[1]["t"]
    assert got.shape == array.shape
    if datatype == "BYTES":
        want = (
            array.tolist()
            if length is not None
            else np.vectorize(bytes.decode, otypes=[object])(array).tolist()
        )
        assert got.tolist() == want
    else:
        assert got.tobytes() == array.astype(array.dtype.newbyteorder("<")).tobytes()


def outcome(body: bytes, header_length: int | None = None) -> InferRequest | RequestRejected:
    """What decoding ``body`` gives: the request, or the refusal it raised."""
    try:
        return decode(body, header_length, max_elements=100)
    except RequestRejected as rejected:
        return rejected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(-5, 250)))
def test_property_arbitrary_bytes_are_refused_cleanly(body, header_length):
    """Random bytes either decode or raise RequestRejected 400/413, nothing else."""
    result = outcome(body, header_length)
    if isinstance(result, RequestRejected):
        assert result.status in {400, 413}
        assert result.detail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=5),
        lambda children: st.lists(children, max_size=4),
        max_leaves=20,
    ),
    st.lists(st.integers(-1, 4), min_size=0, max_size=4),
    st.sampled_from([*DATATYPES, "BF16"]),
)
def test_property_arbitrary_data_is_refused_cleanly(data, shape, datatype):
    """Any JSON data for any shape either decodes to that shape or is a 400/413."""
    result = outcome(json_body(tensor("t", shape, datatype, data if data is not None else [])))
    if isinstance(result, RequestRejected):
        assert result.status in {400, 413}
    else:
        assert result.inputs["t"].shape == tuple(shape)
        assert result.inputs["t"].dtype == numpy_dtype(datatype)
