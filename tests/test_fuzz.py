"""The fuzz targets of fuzz/targets.py, driven by hypothesis for a few seconds (the CI run).

Each parser gets arbitrary bytes and structure-aware inputs (valid-looking JSON, safetensors
headers and locks, then mutated); the invariants live in the targets. The coverage-guided
run is atheris (``python -m fuzz.run``): a short one runs here when atheris is installed,
the long one by hand (fuzz/README.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.run import TARGET_NAMES
from fuzz.targets import (
    MAX_INSTANCES,
    SEEDS,
    TARGETS,
    _schemas,
    lock_parser,
    peak_allocation,
    request_decoder,
    safetensors_header,
)
from secureserve.errors import RequestRejected
from secureserve.formats import (
    MAX_SAFETENSORS_HEADER_BYTES,
    SAFETENSORS_DTYPES,
    validate_safetensors_header,
)
from secureserve.lockfile import LOCK_FORMAT, parse_lock_file

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw, documents):
    """A document from ``documents``, often with a few bytes inserted, dropped or changed."""
    data = bytearray(draw(documents))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        chunk = draw(st.binary(min_size=1, max_size=4) | st.sampled_from(TOKENS))
        if action == "insert":
            data[at:at] = chunk
        elif action == "delete":
            del data[at : at + len(chunk)]
        elif action == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


#: Bytes that matter to JSON parsers: escapes, surrogates, invalid UTF-8, non-JSON numbers.
TOKENS = [
    b'"',
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"NaN",
    b"Infinity",
    b"-0",
    b"1e999",
    b"9" * 30,
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
]

# --------------------------------------------------------------------------- JSON as bytes


#: Pieces of JSON strings: plain text, escapes, raw UTF-8, surrogates, invalid UTF-8.
STRING_PIECES = [
    b"a",
    b"features",
    b"x",
    b"#00ff00",
    b"polygon",
    b'\\"',
    b"\\\\",
    b"\\/",
    b"\\n",
    b"\\u0061",
    b"\\u00e9",
    b"\\ud83d\\ude00",
    b"\\ud800",
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
    b"\xed\xa0\x80",
    b"\xff",
    b"\x80",
    b"\x00",
]
JSON_STRINGS = st.lists(st.sampled_from(STRING_PIECES), max_size=4).map(
    lambda pieces: b'"' + b"".join(pieces) + b'"'
)
#: Names of extra members: where the duplicate-key scan works, so escapes and raw bytes first.
MEMBER_NAMES = st.lists(
    st.sampled_from([b"\\u0061", b"\xff", b"a", b"\\n", b"\xc3\xa9", b"\x80", *STRING_PIECES]),
    min_size=1,
    max_size=3,
).map(lambda pieces: b'"' + b"".join(pieces) + b'"')
NUMBERS = st.one_of(
    st.sampled_from(
        [b"0", b"50", b"50.0000001", b"-1e-9", b"1e400", b"NaN", b"-0.0", b"1" * 25, b"2.5E-1"]
    ),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.floats(allow_nan=False).map(lambda f: json.dumps(f).encode()),
)
SCALARS = st.one_of(NUMBERS, JSON_STRINGS, st.sampled_from([b"true", b"false", b"null"]))


def json_array(items, min_size=0, max_size=4):
    """A JSON array of ``items``."""
    return st.lists(items, min_size=min_size, max_size=max_size).map(
        lambda xs: b"[" + b",".join(xs) + b"]"
    )


ANY_JSON = SCALARS | json_array(SCALARS) | st.sampled_from([b"{}", b'{"k": [1, {"k": 2}]}'])


def json_object(fields, extra_one_in=8):
    """A JSON object with ``fields`` (name to value strategy); members dropped or repeated.

    One object in ``extra_one_in`` gets an extra member with an arbitrary name.
    """

    @st.composite
    def build(draw):
        members = [
            json.dumps(name).encode() + b": " + draw(value)
            for name, value in fields.items()
            if draw(st.integers(0, 19)) != 19  # one in twenty dropped
        ]
        if draw(st.integers(1, extra_one_in)) == extra_one_in:
            members.append(draw(MEMBER_NAMES) + b":" + draw(ANY_JSON))
        if members and draw(st.integers(0, 19)) == 19:
            members.append(members[0])  # a repeated key
        return b"{" + b", ".join(draw(st.permutations(members))) + b"}"

    return build()


def mostly(valid, other):
    """``valid`` about four times in five, else ``other`` (deep paths need valid outer layers)."""
    return st.integers(0, 4).flatmap(lambda n: other if n == 4 else valid)


def _floats(low, high):
    return st.floats(low, high).map(lambda f: json.dumps(f).encode())


FEATURE = mostly(_floats(0, 50), NUMBERS)
FLOWER = json_object(
    {"features": mostly(json_array(FEATURE, 4, 4), json_array(FEATURE, max_size=5) | ANY_JSON)}
)
POINT = json_object(
    {"x": mostly(_floats(-1000, 1000), NUMBERS), "y": mostly(_floats(-9, 9), NUMBERS)}
)
STYLE = mostly(
    json_object(
        {
            "color": mostly(st.just(b'"#00ff00"'), JSON_STRINGS),
            "width": mostly(st.integers(1, 16).map(lambda n: str(n).encode()), NUMBERS),
        },
        extra_one_in=2,  # Style skips unknown members: a path of its own in msgspec
    ),
    st.just(b"null"),
)
SHAPE = json_object(
    {
        "name": mostly(st.just(b'"tri"'), JSON_STRINGS),
        "kind": mostly(st.sampled_from([b'"polygon"', b'"line"']), st.just(b'"circle"')),
        "points": mostly(json_array(POINT, 1, 2), json_array(POINT, max_size=17) | ANY_JSON),
        "tags": json_object({"a": mostly(st.just(b"3"), NUMBERS), "b": st.just(b"1")}),
        "style": STYLE,
        "closed": st.sampled_from([b"true", b"false", b"1"]),
    }
)
REQUESTS = json_object(
    {
        "instances": mostly(
            json_array(FLOWER, 1, 2) | json_array(SHAPE, 1, 2),
            json_array(FLOWER | SHAPE | ANY_JSON, max_size=MAX_INSTANCES + 2),
        )
    }
)


# --------------------------------------------------------------------------- the targets


@given(st.binary(max_size=512) | st.sampled_from(SEEDS["request_decoder"]))
@FUZZ
def test_fuzz_request_decoder_bytes(data):
    """Any bytes: typed instances, or a 400/413/422 whose detail is a fixed phrase."""
    request_decoder(data)


@given(mutated(REQUESTS) | mutated(st.sampled_from(SEEDS["request_decoder"])))
@FUZZ
def test_fuzz_request_decoder_structured(data):
    """Valid-looking requests for the Iris and a nested model, mutated: the same invariant."""
    request_decoder(data)


@pytest.mark.parametrize(
    "body",
    [
        # Found by atheris: msgspec skips a member of a struct that allows unknown fields
        # without checking its UTF-8, so the duplicate-key scan met an invalid key and
        # crashed (a 500), and an invalid value was accepted; both are now a 400.
        (
            b'{"instances": [{"name": "n", "kind": "line", "points": [{"x": 0, "y": 0}],'
            b' "style": {"\xb6\\u0061": 1}}]}'
        ),
        (
            b'{"instances": [{"name": "n", "kind": "line", "points": [{"x": 0, "y": 0}],'
            b' "style": {"junk": "\xff"}}]}'
        ),
    ],
)
def test_fuzz_request_decoder_regressions(body):
    """Inputs the fuzzer once broke the decoder with keep the invariant."""
    request_decoder(body)


def _safetensors(header, payload=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + payload


DTYPES = st.sampled_from([*SAFETENSORS_DTYPES, "BF16", "F8_E4M3", "f32", ""])
SHAPES = (
    st.lists(st.integers(0, 5), max_size=4)
    | st.lists(st.integers(0, 2**64), max_size=4)
    | st.lists(st.integers(2**62, 2**64), min_size=240, max_size=260)  # products > 10**4300
)


@st.composite
def safetensors_files(draw):
    """A header of tensors (mostly laid out consistently) with its data, or near misses."""
    header, offset = {}, 0
    for name in draw(st.lists(st.text(max_size=4), max_size=4, unique=True)):
        dtype, shape = draw(DTYPES), draw(SHAPES)
        size = 1
        for d in shape:
            size *= d
        size = min(size * SAFETENSORS_DTYPES.get(dtype, 1), 64)
        offsets = draw(st.just([offset, offset + size]) | st.lists(st.integers(-1, 80), max_size=3))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3)))
    payload = b"\1" * (offset + draw(st.sampled_from([0, 0, 0, 1, -1])) if offset else 0)
    return _safetensors(header, payload)


@given(st.binary(max_size=512) | mutated(safetensors_files()))
@FUZZ
def test_fuzz_safetensors_header(data):
    """Any bytes: tensors the safetensors library loads the same way, or FormatError."""
    safetensors_header(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param((2**63).to_bytes(8, "little") + b"{}", id="header-length-2**63"),
        pytest.param(
            MAX_SAFETENSORS_HEADER_BYTES.to_bytes(8, "little") + b"{}", id="header-length-limit"
        ),
        pytest.param(
            _safetensors({"t": {"dtype": "F64", "shape": [2**40], "data_offsets": [0, 2**43]}}),
            id="tensor-size-2**43",
        ),
        pytest.param(
            _safetensors(
                {"t": {"dtype": "U8", "shape": [2**60], "data_offsets": [0, 8]}}, b"\0" * 8
            ),
            id="shape-2**60",
        ),
        # Found writing the structure-aware strategy (SHAPES): a byte size of over 4,300
        # digits made the refusal message fail (int-to-str limit): ValueError, not
        # FormatError, after quadratic work on the product.
        pytest.param(
            _safetensors(
                {"t": {"dtype": "F32", "shape": [2**63] * 250, "data_offsets": [0, 4]}}, b"\0" * 4
            ),
            id="shape-product-over-4300-digits",
        ),
    ],
)
def test_fuzz_safetensors_memory_follows_actual_size(data):
    """Claimed lengths and sizes are refused without allocating them (memory ~ len(data))."""
    assert peak_allocation(safetensors_header, data) < 100 * len(data) + 2**20


SHA = st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 31, "zz" * 32, ""])
NAMES = st.sampled_from(
    ["m.onnx", "a/b.bin", "../x", "/abs", "a//b", "./a", "a/./b", "a\\b", "a\x00", ".", "", "é"]
) | st.text(max_size=6)


@st.composite
def locks(draw):
    """A lock document, mostly well formed, as bytes."""
    files = draw(
        st.dictionaries(
            NAMES,
            st.fixed_dictionaries(
                {"sha256": SHA, "size": st.integers(-1, 2**64), "format": st.text(max_size=4)},
                optional={"extra": st.integers()},
            ),
            max_size=3,
        )
    )
    document = {
        "format": draw(st.sampled_from([LOCK_FORMAT, "secureserve-lock/v2"])),
        "files": files,
    }
    return json.dumps(document, indent=draw(st.sampled_from([None, 2]))).encode()


@given(st.binary(max_size=512) | mutated(locks()) | mutated(st.sampled_from(SEEDS["lock_parser"])))
@FUZZ
def test_fuzz_lock_parser(data):
    """Any bytes: ConfigError, or a valid v1 lock whose canonical form parses back the same."""
    lock_parser(data)


def test_fuzz_seeds_are_valid_inputs():
    """Every seed parses (so runs start from inputs that reach deep into each parser)."""
    for seed in SEEDS["request_decoder"]:
        decoded = []
        for schema in _schemas():
            with contextlib.suppress(RequestRejected):
                decoded.append(schema.decode_request(seed))
        assert decoded, seed
    for seed in SEEDS["safetensors_header"]:
        validate_safetensors_header(seed)
    for seed in SEEDS["lock_parser"]:
        parse_lock_file(seed)  # v1 or v2


# --------------------------------------------------------------------------- atheris


def test_fuzz_run_knows_every_target():
    """``python -m fuzz.run`` offers exactly the targets of fuzz/targets.py."""
    assert sorted(TARGET_NAMES) == sorted(TARGETS)


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (wheels exist for x86-64 Linux only); hypothesis above",
)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_atheris_short_run(tmp_path, name):
    """A short coverage-guided atheris run of each target finds nothing (fixed input count)."""
    result = subprocess.run(
        [sys.executable, "-m", "fuzz.run", name, "--runs", "2000", "--corpus", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 2000 runs" in result.stderr
