"""Strict request decoding, duplicate keys, safe validation details, output round-trip checks."""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
import pytest

from secureserve.errors import ModelError, RequestRejected
from secureserve.schema import ModelSchema, validation_detail


class Flower(msgspec.Struct, forbid_unknown_fields=True):
    features: Annotated[
        list[Annotated[float, msgspec.Meta(ge=0, le=50)]], msgspec.Meta(min_length=4, max_length=4)
    ]


class Species(msgspec.Struct):
    label: str
    score: float


class Maybe(msgspec.Struct):
    score: float | None


@pytest.fixture
def schema():
    return ModelSchema(Flower, Species, max_instances=2)


def test_decode_request_returns_typed_instances(schema):
    """A valid body decodes into the declared input type."""
    (flower,) = schema.decode_request(b'{"instances": [{"features": [1, 2, 3, 4]}]}')
    assert flower == Flower([1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"instances": [{"features": [1, 2, 3, 4]}', 400, None),
        (b'{"instances": [{"features": [NaN, 2, 3, 4]}]}', 400, None),
        (b'{"instances": [{"features": [1, 2, 3, 4]}]} {}', 400, None),
        (b"", 400, None),
        (b'{"instances": []}', 422, "$.instances: length must be >= 1"),
        (
            (
                b'{"instances": [{"features": [1,2,3,4]}, {"features": [1,2,3,4]},'
                b' {"features": [1,2,3,4]}]}'
            ),
            422,
            "$.instances: length must be <= 2",
        ),
        (
            b'{"instances": [{"features": [1, 2, 3, 51]}]}',
            422,
            "$.instances[0].features[3]: must be <= 50.0",
        ),
        (
            b'{"instances": [{"features": ["1", 2, 3, 4]}]}',
            422,
            "$.instances[0].features[0]: expected float, got str",
        ),
        (b'{"instances": [{}]}', 422, "$.instances[0]: missing required field 'features'"),
        (
            b'{"instances": [{"features": [1,2,3,4], "secret_field": 1}]}',
            422,
            "$.instances[0]: unknown field",
        ),
        (b'{"instances": [{"features": [1, 2, 3, 1e400]}]}', 400, None),  # not a float64
        (b'{"instances": [{"features": [1, 2, 3, 4], "features": [5, 6, 7, 8]}]}', 422, None),
        (
            b'{"instances": [{"features": [1,2,3,4]}], "instances": [{"features": [1,2,3,4]}]}',
            422,
            None,
        ),
        (b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, None),
        (b'{"instances": [[[[', 400, None),
    ],
)
def test_decode_request_refusals(schema, body, status, detail):
    """Malformed JSON is 400; schema violations (and duplicate keys) 422 with a safe field path."""
    with pytest.raises(RequestRejected) as info:
        schema.decode_request(body)
    assert info.value.status == status
    if detail is not None:
        assert info.value.detail == detail


class Lenient(msgspec.Struct):
    """An input that skips unknown fields (msgspec's default, common in user handlers)."""

    x: float


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"x": 1, "junk": {"\xb6\\u0061": 1}}]}',  # used to be a 500
        b'{"instances": [{"x": 1, "junk": "\xff"}]}',  # used to be accepted
        b'{"instances": [{"x": 1, "junk": "\xed\xa0\x80"}]}',  # an encoded surrogate
    ],
)
def test_decode_request_refuses_invalid_utf8_in_skipped_members(body):
    """Invalid UTF-8 in a member msgspec skips is malformed JSON (400), never a crash.

    Found by fuzzing (fuzz/targets.py): msgspec does not check the UTF-8 of skipped
    members, and the duplicate-key scan failed on such a key.
    """
    with pytest.raises(RequestRejected) as info:
        ModelSchema(Lenient, Species, max_instances=2).decode_request(body)
    assert info.value.status == 400


def test_decode_request_never_echoes_unknown_field_names(schema):
    """An attacker-chosen field name is not reflected back in the detail."""
    with pytest.raises(RequestRejected) as info:
        schema.decode_request(b'{"instances": [{"features": [1,2,3,4], "<script>": 1}]}')
    assert "script" not in (info.value.detail or "")


@pytest.mark.parametrize(
    "message",
    [
        "Expected `float`, got `evil<script>` - at `$.a`",
        "Something new from the library: /usr/lib/python3/site-packages - at `$.a`",
        "Expected `int` - at `$[...]; rm -rf /`",
    ],
)
def test_validation_detail_never_passes_unmapped_text(message):
    """Unknown wording, odd type names and odd paths are replaced by fixed phrases."""
    detail = validation_detail(message)
    assert "script" not in detail
    assert "/usr" not in detail
    assert "rm -rf" not in detail


def test_encode_predictions_accepts_valid_outputs(schema):
    """Valid outputs become the predictions envelope."""
    body = schema.encode_predictions([Species("setosa", 0.9)], 1)
    assert msgspec.json.decode(body) == {"predictions": [{"label": "setosa", "score": 0.9}]}


@pytest.mark.parametrize(
    "outputs",
    [
        [Species("a", 0.1), Species("b", 0.2)],  # wrong count
        "not a list",
        [{"label": 1, "score": 0.5}],  # wrong field type
        [Species("a", math.nan)],
        [Species("a", math.inf)],
        [object()],
    ],
)
def test_encode_predictions_refuses_contract_violations(schema, outputs):
    """Wrong count, wrong type or non-finite floats are model errors, never a response."""
    with pytest.raises(ModelError):
        schema.encode_predictions(outputs, 1)


def test_encode_predictions_refuses_nan_even_where_null_is_allowed():
    """NaN would be written as null; an Optional[float] output must not hide it."""
    schema = ModelSchema(Flower, Maybe, max_instances=1)
    assert msgspec.json.decode(schema.encode_predictions([Maybe(None)], 1)) == {
        "predictions": [{"score": None}]
    }
    with pytest.raises(ModelError, match="non-finite"):
        schema.encode_predictions([Maybe(math.nan)], 1)
