"""Request decoding and response encoding for one model, built once per app.

Decoding is strict: msgspec refuses malformed JSON, NaN/Infinity, unknown fields,
wrong types and out-of-range values; :func:`find_duplicate_key` then refuses
objects that repeat a key (msgspec keeps the last value silently, and parsers
that disagree on which value wins are a classic smuggling vector).

A refusal's detail names the field path and says what is wrong in a fixed phrase
(:func:`validation_detail`). The one piece of the body it may quote is the name of an
unknown field, escaped and cut short by :func:`quote_name`; a body that is not the
``{"instances": [...]}`` wrapper gets a hint saying so.

Outputs are validated by a round trip through the declared output type, so a
handler that returns the wrong type, a value outside its ``Meta`` bounds or a
non-finite float (which JSON cannot carry) is a ``ModelError``, never a
malformed or misleading response. The caller's output policy
(:mod:`secureserve.outputs`) then acts on the validated objects.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final

import msgspec

from secureserve.errors import ModelError, RequestRejected
from secureserve.outputs import OutputView, label_field
from secureserve.strict_json import find_duplicate_key

__all__ = ["SHOWN_CHARACTERS", "WRAPPER_HINT", "ModelSchema", "quote_name", "validation_detail"]

#: Characters of a client's name (an unknown field, a tensor's name) a detail may quote.
SHOWN_CHARACTERS: Final = 64
#: What a body that is not the wrapper (a bare instance, a list, extra members) is told.
WRAPPER_HINT: Final = (
    'the body must be {"instances": [...]}, with the instances in the list and no other member'
)
_SAFE_PATH: Final = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]{0,63}|\[\d{1,9}\]|\[\.\.\.\])*")
_TYPE_WORDS: Final = frozenset(
    {"int", "float", "str", "bool", "null", "array", "object", "bytes", "number", "string"}
)
# msgspec: "Object contains unknown field `NAME`", then " - at `PATH`" unless at the root.
# The name is the client's and may hold anything (backticks, " - at "); the shortest
# reading is taken, so what is quoted is always the start of the name the client sent.
_UNKNOWN_FIELD: Final = re.compile(
    r"Object contains unknown field `(.*?)`(?: - at `([^`]*)`)?", re.DOTALL
)
_NOT_UTF8: Final = "the body is not UTF-8 text (JSON is UTF-8)"
_AT_BYTE: Final = re.compile(r"\(byte (\d{1,12})\)$")  # where msgspec found a JSON fault
_ESCAPES: Final = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class ModelSchema:
    """Decoders and encoders for ``{"instances": [In]}`` and ``{"predictions": [Out]}``."""

    def __init__(self, input_type: Any, output_type: Any, *, max_instances: int) -> None:
        instances = Annotated[
            list[input_type], msgspec.Meta(min_length=1, max_length=max_instances)
        ]
        self.request_type: Any = msgspec.defstruct(
            "PredictRequest", [("instances", instances)], forbid_unknown_fields=True, frozen=True
        )
        self.response_type: Any = msgspec.defstruct(
            "PredictResponse",
            [("predictions", list[output_type])],
            frozen=True,
        )
        self.input_type = input_type
        self.output_type = output_type
        #: the output field holding the predicted label (the first ``ss.Label`` one), if any
        self.label_field = label_field(output_type)
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.request_type)
        self._output_check = msgspec.json.Decoder(list[output_type])
        self._encoder = msgspec.json.Encoder()

    def decode_request(self, body: bytes) -> list[Any]:
        """Return the decoded instances or raise ``RequestRejected`` (400 or 422)."""
        try:
            request = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            # msgspec stops at the first type mismatch; a body that is not JSON at all
            # (unclosed, too deep) is still a 400, so look again on this error path only.
            try:
                document = msgspec.json.decode(body)
            except (msgspec.DecodeError, RecursionError) as fault:
                raise _malformed(body, fault) from exc
            raise RequestRejected(
                422,
                "validation",
                "Request body does not match the schema",
                detail=_request_detail(str(exc), document),
            ) from exc
        except (msgspec.DecodeError, RecursionError) as exc:  # msgspec recurses on deep nesting
            raise _malformed(body, exc) from exc
        # msgspec does not check the UTF-8 of members it skips (unknown fields of a Struct
        # that allows them); JSON is UTF-8, and the duplicate-key scan needs it to be.
        if not body.isascii() and not _is_utf8(body):
            raise _malformed(body, detail=_NOT_UTF8)
        if find_duplicate_key(body):
            raise RequestRejected(
                422,
                "validation",
                "Request body does not match the schema",
                detail="a JSON object repeats a key; send each key once",
            )
        instances: list[Any] = request.instances
        return instances

    def encode_predictions(
        self, outputs: object, expected: int, view: OutputView | None = None
    ) -> bytes:
        """Validate ``outputs`` against the output type and return the response body.

        With ``view``, the body holds what that output policy shows of the validated
        outputs (decoded anew from the validated JSON: the handler's objects are not
        changed).
        """
        if not isinstance(outputs, list):
            raise ModelError(f"predict returned {type(outputs).__name__}, expected a list")
        if len(outputs) != expected:
            raise ModelError(f"predict returned {len(outputs)} outputs for {expected} inputs")
        try:
            encoded = self._encoder.encode(outputs)
            # msgspec writes NaN and Infinity as null; only look closer when a null is
            # present, and before the type check, which would report the null instead
            if b"null" in encoded and _has_non_finite(msgspec.to_builtins(outputs)):
                raise ModelError("predict returned a non-finite float (NaN or Infinity)")
            checked = self._output_check.decode(encoded)  # fresh objects: the policy's input
        except (msgspec.EncodeError, msgspec.ValidationError, TypeError) as exc:
            raise ModelError(
                f"predict returned a value that does not match the output type: {exc}"
            ) from exc
        if view is not None:
            encoded = self._encoder.encode(view.apply(checked))
        return b'{"predictions":' + encoded + b"}"

    def labels_of(self, outputs: list[Any]) -> list[Any] | None:
        """The predicted label of each output (for extraction detection), or None."""
        field = self.label_field
        if field is None:
            return None
        return [getattr(output, field, None) for output in outputs]

    def response_type_for(self, view: OutputView | None) -> Any:
        """The response body's type as a caller under ``view`` receives it (for OpenAPI)."""
        if view is None:
            return self.response_type
        item = view.response_item
        return msgspec.defstruct(
            "PredictResponse",
            [("predictions", list[item])],  # type: ignore[valid-type]
            frozen=True,
        )


def _malformed(
    body: bytes,
    exc: BaseException | None = None,
    *,
    detail: str = "send one JSON object; NaN, Infinity and trailing data are not JSON",
) -> RequestRejected:
    """400 ``malformed-json``; the detail says what kind of fault, in secureserve's words.

    Only the kind and a byte offset are taken from the parser's message, never its text
    nor anything the client sent.
    """
    message = str(exc) if isinstance(exc, msgspec.DecodeError) else ""
    at = _AT_BYTE.search(message)
    if not body.strip(b" \t\r\n"):  # JSON's whitespace
        detail = "the body is empty: send one JSON object"
    elif isinstance(exc, RecursionError):
        detail = "the JSON is nested too deeply"
    elif message.startswith("Input data was truncated"):
        detail = "the body ends before its JSON does (an object, array or string left open)"
    elif message.startswith("Invalid UTF-8"):
        detail = _NOT_UTF8
    elif message.startswith("Number out of range"):
        detail = "a number is out of range (larger than a 64-bit float holds)"
    elif at is not None and "trailing characters" in message:
        detail = f"more data after the JSON object, at byte {at[1]}: send one JSON object"
    elif at is not None:
        detail = f"not valid JSON at byte {at[1]} (NaN, Infinity and trailing commas are not)"
    return RequestRejected(400, "malformed-json", "Request body is not valid JSON", detail=detail)


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _request_detail(message: str, document: object) -> str:
    """The detail of a request that is JSON but not the schema; ``document`` is its value.

    An error of the wrapper itself (a bare instance, a list, a member besides
    ``instances``) gets :data:`WRAPPER_HINT`. Members of the wrapper are read from
    ``document``, not from msgspec's message, which cannot tell a root-level name that
    ends like a path from a nested field.
    """
    if isinstance(document, dict) and _UNKNOWN_FIELD.fullmatch(message):
        extra = next((key for key in document if key != "instances"), None)
        if extra is not None:
            return f"$: unknown field {quote_name(extra)}; {WRAPPER_HINT}"
    path, reason = _path_and_reason(message)
    if path is None:
        return f"$: {reason}; {WRAPPER_HINT}"
    return f"{path}: {reason}"


def validation_detail(message: str) -> str:
    """Turn a msgspec validation message into a safe detail: field path plus a fixed phrase.

    Nothing a client sent is echoed back but the name of an unknown field, quoted by
    :func:`quote_name`; a value (an enum's, a tag's) never is, and no library wording
    leaks through unmapped. A message without a path (or with an odd one) gets ``$``.
    """
    path, reason = _path_and_reason(message)
    return f"{path or '$'}: {reason}"


def quote_name(text: str) -> str:
    r"""A client's name as a detail may quote it: in single quotes, escaped, cut short.

    Backslashes and both quote characters are escaped, and so is every character that
    is not printable (control characters such as ESC, which starts an ANSI sequence,
    line breaks, bidi overrides, zero-width and other format characters): as ``\n``,
    ``\t``, ``\r``, else ``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN``. The quote shows at most
    the first ``SHOWN_CHARACTERS`` (64) characters; when there were more, ``...`` follows
    the closing quote. So the result is one line of inert text of bounded length.
    """
    shown = "".join(_escaped(char) for char in text[:SHOWN_CHARACTERS])
    more = "..." if len(text) > SHOWN_CHARACTERS else ""
    return f"'{shown}'{more}"


def _escaped(char: str) -> str:
    known = _ESCAPES.get(char)
    if known is not None:
        return known
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFF:  # noqa: PLR2004 - the widths of Python's escapes
        return f"\\x{code:02x}"
    if code <= 0xFFFF:  # noqa: PLR2004
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _path_and_reason(message: str) -> tuple[str | None, str]:
    """The safe field path of a msgspec message (None: it named none, the root) and a reason.

    A path that is not made of identifiers and indexes is shown as ``$``.
    """
    unknown = _UNKNOWN_FIELD.fullmatch(message)
    if unknown is not None:
        return _safe_path(unknown.group(2)), f"unknown field {quote_name(unknown.group(1))}"
    # The path is msgspec's and comes last; a value before it may hold " - at " itself.
    text, at, where = message.rpartition(" - at ")
    if not at:
        text, where = message, ""
    path = _safe_path(where.strip("`")) if where else None
    if text.startswith("Object missing required field"):
        reason = f"missing required field '{text.split('`')[1]}'"
    elif text.startswith("Invalid enum value"):
        reason = "not one of the allowed values"
    elif text == "Number out of range":
        reason = "number out of range"
    elif text.startswith("Expected `") and ", got `" in text:
        wanted, got = text[len("Expected `") :].split("`, got `")
        wanted_word = wanted if wanted in _TYPE_WORDS else "another type"
        got_word = got.rstrip("`") if got.rstrip("`") in _TYPE_WORDS else "another type"
        reason = f"expected {wanted_word}, got {got_word}"
    elif text.startswith("Expected `") and re.fullmatch(
        r"Expected `\w+`( of length)? [<>]=? -?[\d.e+-]+", text
    ):
        bound = text.split("` ", 1)[1]
        reason = (
            f"must be {bound}"
            if not bound.startswith("of length")
            else f"length must be {bound[10:]}"
        )
    else:
        reason = "invalid value"
    return path, reason


def _safe_path(where: str | None) -> str | None:
    """``where`` if it is a plain msgspec path, ``$`` if it is odd, None if there is none."""
    if where is None:
        return None
    match = _SAFE_PATH.fullmatch(where)
    return match.group() if match else "$"


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False
