"""Request decoding and response encoding for one model, built once per app.

Decoding is strict: msgspec refuses malformed JSON, NaN/Infinity, unknown fields,
wrong types and out-of-range values; :func:`find_duplicate_key` then refuses
objects that repeat a key (msgspec keeps the last value silently, and parsers
that disagree on which value wins are a classic smuggling vector).

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

__all__ = ["ModelSchema", "validation_detail"]

_SAFE_PATH: Final = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]{0,63}|\[\d{1,9}\]|\[\.\.\.\])*")
_TYPE_WORDS: Final = frozenset(
    {"int", "float", "str", "bool", "null", "array", "object", "bytes", "number", "string"}
)


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
            if not _is_json(body):
                raise _malformed() from exc
            raise RequestRejected(
                422,
                "validation",
                "Request body does not match the schema",
                detail=validation_detail(str(exc)),
            ) from exc
        except (msgspec.DecodeError, RecursionError) as exc:  # msgspec recurses on deep nesting
            raise _malformed() from exc
        # msgspec does not check the UTF-8 of members it skips (unknown fields of a Struct
        # that allows them); JSON is UTF-8, and the duplicate-key scan needs it to be.
        if not body.isascii() and not _is_utf8(body):
            raise _malformed()
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
            checked = self._output_check.decode(encoded)  # fresh objects: the policy's input
        except (msgspec.EncodeError, msgspec.ValidationError, TypeError) as exc:
            raise ModelError(
                f"predict returned a value that does not match the output type: {exc}"
            ) from exc
        # msgspec writes NaN and Infinity as null; only look closer when a null is present.
        if b"null" in encoded and _has_non_finite(msgspec.to_builtins(outputs)):
            raise ModelError("predict returned a non-finite float (NaN or Infinity)")
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


def _malformed() -> RequestRejected:
    return RequestRejected(
        400,
        "malformed-json",
        "Request body is not valid JSON",
        detail="send one JSON object; NaN, Infinity and trailing data are not JSON",
    )


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _is_json(body: bytes) -> bool:
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def validation_detail(message: str) -> str:
    """Turn a msgspec validation message into a safe detail: field path plus a fixed phrase.

    Nothing a client sent is echoed back (an unknown field is reported by its
    position only), and no library wording leaks through unmapped.
    """
    text, _, where = message.partition(" - at ")
    match = _SAFE_PATH.fullmatch(where.strip("`")) if where else None
    path = match.group() if match else "$"
    if text.startswith("Object missing required field"):
        reason = f"missing required field '{text.split('`')[1]}'"
    elif text.startswith("Object contains unknown field"):
        reason = "unknown field"
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
    return f"{path}: {reason}"


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False
