"""Strict request decoding, duplicate keys, safe validation details, output round-trip checks."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
import pytest

from secureserve.errors import ModelError, RequestRejected
from secureserve.schema import WRAPPER_HINT, ModelSchema, quote_name, validation_detail


class Flower(msgspec.Struct, forbid_unknown_fields=True):
    features: Annotated[
        list[Annotated[float, msgspec.Meta(ge=0, le=50)]], msgspec.Meta(min_length=4, max_length=4)
    ]


class Species(msgspec.Struct):
    label: str
    score: float


class Maybe(msgspec.Struct):
    score: float | None


class Kind(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal["a", "b"]


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
            "$.instances[0]: unknown field 'secret_field'",
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


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "the body is empty: send one JSON object"),
        (b" \n", "the body is empty: send one JSON object"),
        (b'{"instances": [{"features": [1, 2', "the body ends before its JSON does"),
        (
            b'{"instances": [{"features": [1, 2, 3, 4]}]} {}',
            "more data after the JSON object, at byte 45",
        ),
        (b'{"instances": [{"features": [NaN, 2, 3, 4]}]}', "not valid JSON at byte 29"),
        (b'{"instances": [{"features": [1, 2, 3, 1e400]}]}', "a number is out of range"),
        (b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "the JSON is nested too deeply"),
        (b'{"instances": [{"features": [1, 2, 3, 4]}], "x": "\xff"}', "the body is not UTF-8"),
    ],
)
def test_decode_request_malformed_says_what_kind(schema, body, detail):
    """A body that is not JSON gets a 400 naming the kind of fault (and where), not one text.

    The words are secureserve's own: only a byte offset comes from the parser.
    """
    with pytest.raises(RequestRejected) as info:
        schema.decode_request(body)
    assert (info.value.status, info.value.slug) == (400, "malformed-json")
    assert info.value.detail.startswith(detail), info.value.detail


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


def _detail(schema: ModelSchema, body: bytes) -> str:
    """The detail of the 422 that decoding ``body`` raises."""
    with pytest.raises(RequestRejected) as info:
        schema.decode_request(body)
    assert info.value.status == 422
    return info.value.detail or ""


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("colour", "'colour'"),
        ("a\nb\rc\td", "'a\\nb\\rc\\td'"),
        ("\x1b[31mred\x1b[0m", "'\\x1b[31mred\\x1b[0m'"),  # an ANSI colour sequence
        ('it\'s "quoted"', "'it\\'s \\\"quoted\\\"'"),
        ("back\\slash", "'back\\\\slash'"),
        ("nul\x00 del\x7f", "'nul\\x00 del\\x7f'"),
        ("\u202eevil\u200b\u2028", "'\\u202eevil\\u200b\\u2028'"),  # bidi, zero-width, LS
        ("caf\u00e9 \U0001f600", "'caf\u00e9 \U0001f600'"),  # printable text stays as it is
        ("\U000e0001", "'\\U000e0001'"),  # a tag character, not printable
        ("", "''"),
    ],
)
def test_quote_name_escapes_what_is_not_plain_text(name, shown):
    """Quotes, backslashes, control and format characters are escaped; letters are not."""
    assert quote_name(name) == shown
    assert shown.isprintable()


def test_quote_name_keeps_64_characters_then_marks_the_cut():
    """64 characters are shown whole; more are cut to 64, with ``...`` after the quote."""
    assert quote_name("x" * 64) == f"'{'x' * 64}'"
    assert quote_name("x" * 65) == f"'{'x' * 64}'..."
    assert quote_name("y" * 200) == f"'{'y' * 64}'..."
    # escaping works on the 64 characters kept: bounded at 10 characters each
    assert quote_name("\x1b" * 1000) == "'" + "\\x1b" * 64 + "'..."


def test_decode_request_names_an_unknown_field(schema):
    """An unknown field of an instance is named (quoted) at the instance's path."""
    body = b'{"instances": [{"features": [1,2,3,4]}, {"features": [1,2,3,4], "colour": 1}]}'
    assert _detail(schema, body) == "$.instances[1]: unknown field 'colour'"


def test_decode_request_cuts_a_long_unknown_field_name_to_64_characters(schema):
    """A 200-character name is shown by its first 64 characters and ``...``."""
    body = b'{"instances": [{"features": [1,2,3,4], "' + b"n" * 200 + b'": 1}]}'
    assert _detail(schema, body) == f"$.instances[0]: unknown field '{'n' * 64}'..."


def test_decode_request_escapes_control_characters_ansi_and_quotes_in_a_name(schema):
    """A name with ESC, a newline, quotes and a backslash is shown escaped, on one line."""
    name = b"\\u001b[2J\\n\\r'\\\"\\\\<script>"  # JSON escapes: ESC [2J LF CR ' " \ <script>
    detail = _detail(schema, b'{"instances": [{"features": [1,2,3,4], "' + name + b'": 7}]}')
    assert detail == "$.instances[0]: unknown field '\\x1b[2J\\n\\r\\'\\\"\\\\<script>'"
    assert detail.isprintable()


def test_decode_request_never_echoes_a_value(schema):
    """Values (an unknown field's, a wrong one, an enum's) are never in the detail."""
    detail = _detail(schema, b'{"instances": [{"features": [1,2,3,4], "k": "SECRET-VALUE"}]}')
    assert "SECRET" not in detail
    detail = _detail(schema, b'{"instances": [{"features": ["SECRET-VALUE", 2, 3, 4]}]}')
    assert detail == "$.instances[0].features[0]: expected float, got str"
    detail = _detail(
        ModelSchema(Kind, Species, max_instances=1), b'{"instances": [{"kind": "SECRET\\n"}]}'
    )
    assert detail == "$.instances[0].kind: not one of the allowed values"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"features": [1, 2, 3, 4]}', "$: unknown field 'features'"),  # a bare instance
        (b'[{"features": [1, 2, 3, 4]}]', "$: expected object, got array"),  # a bare list
        (b"{}", "$: missing required field 'instances'"),
        (b'"instances"', "$: expected object, got str"),
        (
            b'{"instances": [{"features": [1,2,3,4]}], "debug": true}',
            "$: unknown field 'debug'",
        ),
        (  # a member that reads like msgspec's path is still the wrapper's own
            b'{"instances": [{"features": [1,2,3,4]}], "x` - at `$.instances[0]": 1}',
            "$: unknown field 'x` - at `$.instances[0]'",
        ),
    ],
)
def test_decode_request_hints_at_the_wrapper(schema, body, problem):
    """A body that is not ``{"instances": [...]}`` is told what the body must be."""
    assert _detail(schema, body) == f"{problem}; {WRAPPER_HINT}"
    assert WRAPPER_HINT.startswith('the body must be {"instances": [...]}')


def test_decode_request_gives_no_wrapper_hint_inside_the_wrapper(schema):
    """Errors below ``instances`` name their path and do not talk about the wrapper."""
    for body in (b'{"instances": {}}', b'{"instances": [[1, 2, 3, 4]]}'):
        assert "the body must be" not in _detail(schema, body)


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        # a name that holds msgspec's own separator: the real path (the last) is used
        (
            "Object contains unknown field `a` - at `$.b` - at `$.instances[0]`",
            "$.instances[0]: unknown field 'a` - at `$.b'",
        ),
        ("Invalid enum value 'x - at `$.a`' - at `$.instances[0].kind`", None),
        ("Invalid value 'ev\nil' - at `$.instances[0].type`", None),  # a tag
        (
            "Object contains unknown field `\x1b]0;title\x07`",
            "$: unknown field '\\x1b]0;title\\x07'",
        ),
    ],
)
def test_validation_detail_reads_the_path_from_the_end(message, detail):
    """The path is msgspec's last `` - at ``; client text before it never becomes the path."""
    shown = validation_detail(message)
    if detail is not None:
        assert shown == detail
    else:
        assert shown.startswith("$.instances[0].")
        assert "evil" not in shown
        assert "ev\nil" not in shown
        assert "$.a" not in shown


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


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_predictions_names_a_non_finite_float_not_a_null(schema, value):
    """A NaN where a float is required is reported as NaN, not as the null it encodes to."""
    with pytest.raises(ModelError, match="non-finite float") as caught:
        schema.encode_predictions([Species("a", value)], 1)
    assert "null" not in str(caught.value)


def test_encode_predictions_refuses_nan_even_where_null_is_allowed():
    """NaN would be written as null; an Optional[float] output must not hide it."""
    schema = ModelSchema(Flower, Maybe, max_instances=1)
    assert msgspec.json.decode(schema.encode_predictions([Maybe(None)], 1)) == {
        "predictions": [{"score": None}]
    }
    with pytest.raises(ModelError, match="non-finite"):
        schema.encode_predictions([Maybe(math.nan)], 1)
