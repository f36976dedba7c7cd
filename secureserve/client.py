"""The typed client of a secureserve server: msgspec Structs in, msgspec Structs out.

``Client`` and ``AsyncClient`` own an ``httpx2`` connection pool; use them as context
managers. They import nothing of the server, only msgspec, httpx2 and the standard
library, so ``pip install secureserve`` and this module are all a caller needs::

    with ss.Client("https://ml.example:8443", api_key=key, ca="ca.pem") as client:
        species = client.predict("iris", [Flower(features=[5.1, 3.5, 1.4, 0.2])], out=Species)

TLS verification cannot be switched off: the server's certificate must chain to ``ca``
(a PEM bundle) or, without it, to the system's trust store; ``http://`` is refused.
Redirects are never followed. A 429 or 503 with ``Retry-After`` is retried at most
``retries`` times, each wait at most ``max_retry_wait`` seconds; nothing else is retried.
Each attempt, from connecting to the body's last byte, takes at most ``timeout`` seconds,
so a call returns or raises within ``(retries + 1) * timeout + retries * max_retry_wait``.
Bodies are asked for and read unencoded (``Accept-Encoding: identity``; an encoded one
is never decompressed) and capped: ``max_response_bytes`` for a success, 64 KiB for an
error. Text the server sends (title, detail, reason phrase) reaches an exception escaped
(no control characters) and cut short; a request id only when it looks like one.

Every error the client raises on purpose::

    ClientError                     base class
    ├── TransportError              no HTTP answer: connect, read or write failed or timed out
    │   └── TLSError                the TLS handshake failed (certificate not trusted, wrong host)
    ├── UnexpectedResponse          a 2xx answer whose body is not what the API promises
    └── ProblemError                the server refused: status, slug, title, detail, request_id
        ├── BadRequest              400 bad-request
        │   ├── MalformedJSON       400 malformed-json
        │   └── NotSupported        400 unsupported
        ├── Unauthorized            401 unauthorized
        │   └── ClientCertificateRequired  401 client-certificate-required
        ├── Forbidden               403 forbidden
        │   ├── HTTPSRequired       403 https-required
        │   ├── BrowserRequest      403 browser-request
        │   └── SuspectedExtraction 403 suspected-extraction
        ├── NotFound                404 not-found
        │   ├── DriftOff            404 drift-off
        │   └── ExtractionOff       404 extraction-off
        ├── MethodNotAllowed        405 method-not-allowed
        ├── RequestTimeout          408 (both slugs below)
        │   ├── BodyTimeout         408 body-timeout
        │   └── HeaderTimeout       408 header-timeout
        ├── ExplainUnavailable      409 explain-unavailable
        ├── PayloadTooLarge         413 too-large
        │   └── TooManyElements     413 too-many-elements
        ├── URITooLong              414 uri-too-long
        ├── UnsupportedMediaType    415 unsupported-media-type
        ├── ValidationFailed        422 validation
        │   └── OutOfDistribution   422 out-of-distribution
        ├── RateLimited             429 rate-limited
        │   └── QuotaExhausted      429 quota-exhausted
        ├── HeaderFieldsTooLarge    431 header-fields-too-large
        ├── InternalError           500 internal
        │   └── ReloadFailed        500 reload-failed
        ├── Unavailable             503 (the four slugs below)
        │   ├── Overloaded          503 overloaded
        │   ├── LimitsUnavailable   503 limits-unavailable
        │   ├── AuditUnavailable    503 audit-unavailable
        │   └── ModelUnavailable    503 model-unavailable
        ├── ModelTimeout            504 timeout
        └── HTTPVersionNotSupported 505 http-version-not-supported

The class comes from the problem ``type`` when the status is that slug's own (above);
otherwise (an unknown slug, a slug on another status, an answer that is not
problem+json such as a proxy's HTML page) from the status alone: the class without a
slug for 400, 401, 403, 404, 405, 408, 413, 414, 415, 422, 429, 431, 500 and 503 (say
``Unavailable``, ``RateLimited``), else a plain ``ProblemError``. Programming errors
(an ``http://`` URL, a model name the server cannot have, a missing certificate file,
a bad argument) are ``ValueError``.
"""

# ruff: noqa: N818 - exceptions are named for the HTTP status they stand for, as in
# the server's problem titles (NotFound, RateLimited); an "Error" suffix adds nothing.

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import ssl
import time
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from os import PathLike
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeAlias, TypeVar
from urllib.parse import urlsplit

import httpx2
import msgspec

__all__ = [
    "ArtifactInfo",
    "AsyncClient",
    "AuditUnavailable",
    "BadRequest",
    "BodyTimeout",
    "BrowserRequest",
    "Client",
    "ClientCertificateRequired",
    "ClientError",
    "DriftOff",
    "ExplainUnavailable",
    "Explanation",
    "ExtractionOff",
    "Forbidden",
    "HTTPSRequired",
    "HTTPVersionNotSupported",
    "HeaderFieldsTooLarge",
    "HeaderTimeout",
    "InternalError",
    "LimitsUnavailable",
    "MalformedJSON",
    "MethodNotAllowed",
    "ModelDetails",
    "ModelInfo",
    "ModelTimeout",
    "ModelUnavailable",
    "NotFound",
    "NotSupported",
    "OutOfDistribution",
    "Overloaded",
    "PayloadTooLarge",
    "ProblemError",
    "QuotaExhausted",
    "RateLimited",
    "ReloadFailed",
    "RequestTimeout",
    "SuspectedExtraction",
    "TLSError",
    "TooManyElements",
    "TransportError",
    "URITooLong",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "ValidationFailed",
]

T = TypeVar("T")
StrPath: TypeAlias = str | PathLike[str]

#: Seconds for one attempt, from connecting to the last byte of the answer; the server's
#: own ``predict_timeout_s`` defaults to 10.
DEFAULT_TIMEOUT_S: Final = 30.0
#: The largest successful answer read, in bytes (an answer over it is UnexpectedResponse).
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
#: The largest error body read: a problem+json is well under 1 KiB; past this it is ignored.
_MAX_ERROR_BYTES: Final = 64 * 1024
#: The most characters of server text an exception shows (escaped, then cut short).
_MAX_TITLE: Final = 200
_MAX_DETAIL: Final = 512
_MAX_MESSAGE: Final = 1024
#: secureserve.model.NAME_PATTERN, copied (the client imports nothing of the server).
_MODEL_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
#: What the server's request ids look like; anything else is not shown.
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{8,64}")
_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
#: Retries of a 429 or 503 that carries ``Retry-After``; nothing else is retried.
DEFAULT_RETRIES: Final = 2
#: A ``Retry-After`` longer than this is not waited for: the error is raised at once.
DEFAULT_MAX_RETRY_WAIT_S: Final = 10.0
_PROBLEM_PREFIX: Final = "urn:secureserve:problem:"
_RETRYABLE: Final = frozenset({429, 503})


# --------------------------------------------------------------------------- errors


class ClientError(Exception):
    """Base class of every error the client raises on purpose."""


class TransportError(ClientError):
    """No HTTP answer: the connection could not be made or broke, or it timed out.

    ``__cause__`` is the ``httpx2`` exception, or a ``TimeoutError`` when the attempt
    ran past ``timeout`` as a whole. Never retried: the request may or may not have
    reached the server.
    """


class TLSError(TransportError):
    """The TLS handshake failed.

    Most often the server's certificate does not chain to the ``ca`` given (or to the
    system's trust store), or it names another host. Never retried.
    """


class UnexpectedResponse(ClientError):
    """A successful answer whose body is not JSON of the expected shape (``out``).

    The message says what did not match; ``request_id`` finds the server's log line.
    """

    def __init__(self, message: str, *, status: int, request_id: str | None) -> None:
        super().__init__(message if request_id is None else f"{message} [request {request_id}]")
        self.message = message
        self.status = status
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments: pickle them too
        rebuild = functools.partial(type(self), status=self.status, request_id=self.request_id)
        return (rebuild, (self.message,))


class ProblemError(ClientError):
    """The server answered with an error status (an ``application/problem+json`` body).

    ``slug`` is the end of the problem ``type`` (``"rate-limited"``), None when the body
    was not a secureserve problem; ``title`` is fixed per slug; ``detail`` is present
    only where the server deems it safe (a field path, a limit). ``request_id`` (from
    the body, else the ``X-Request-ID`` header) names the server's log line.
    ``retry_after`` is the ``Retry-After`` header in seconds, if any (on 429 and 503).

    Raised by the client, ``title`` and ``detail`` are the server's text with every
    non-printable character escaped, cut to 200 and 512 characters; ``request_id`` is
    None unless it is 8 to 64 of ``[A-Za-z0-9._-]``.
    """

    def __init__(
        self,
        status: int,
        slug: str | None,
        title: str,
        *,
        detail: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = f"{status} {slug or 'error'}: {title}"
        if detail:
            message += f" ({detail})"
        if request_id:
            message += f" [request {request_id}]"
        super().__init__(message)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process pools intact
        rebuild = functools.partial(
            type(self),
            detail=self.detail,
            request_id=self.request_id,
            retry_after=self.retry_after,
        )
        return (rebuild, (self.status, self.slug, self.title))


class BadRequest(ProblemError):
    """400: the request is not well-formed HTTP or JSON the server can read."""


class MalformedJSON(BadRequest):
    """400 ``malformed-json``: not JSON, NaN or Infinity, or trailing data."""


class NotSupported(BadRequest):
    """400 ``unsupported``: an Open Inference Protocol feature the server refuses."""


class Unauthorized(ProblemError):
    """401 ``unauthorized``: no credential, or one that is unknown, revoked or expired."""


class ClientCertificateRequired(Unauthorized):
    """401 ``client-certificate-required``: the server wants mutual TLS (pass ``cert=``)."""


class Forbidden(ProblemError):
    """403 ``forbidden``: the credential lacks the role (``detail`` names it)."""


class HTTPSRequired(Forbidden):
    """403 ``https-required``: a mounted app reached over plaintext."""


class BrowserRequest(Forbidden):
    """403 ``browser-request``: the request looked like it came from a web page."""


class SuspectedExtraction(Forbidden):
    """403 ``suspected-extraction``: blocked until an admin clears this principal."""


class NotFound(ProblemError):
    """404 ``not-found``: no such route or model, or one this credential may not use."""


class DriftOff(NotFound):
    """404 ``drift-off``: the model has no drift monitoring."""


class ExtractionOff(NotFound):
    """404 ``extraction-off``: the model has no extraction detection."""


class MethodNotAllowed(ProblemError):
    """405 ``method-not-allowed``."""


class RequestTimeout(ProblemError):
    """408: the request did not reach the server in time (catch-all of the two below)."""


class BodyTimeout(RequestTimeout):
    """408 ``body-timeout``: the body did not arrive within ``body_timeout_s``."""


class HeaderTimeout(RequestTimeout):
    """408 ``header-timeout``: the request head did not arrive in time."""


class ExplainUnavailable(ProblemError):
    """409 ``explain-unavailable``: the model cannot explain (``detail`` says why)."""


class PayloadTooLarge(ProblemError):
    """413 ``too-large``: the body is over ``max_body_bytes`` (``detail`` gives it)."""


class TooManyElements(PayloadTooLarge):
    """413 ``too-many-elements``: more tensor values than ``max_elements``."""


class URITooLong(ProblemError):
    """414 ``uri-too-long``."""


class UnsupportedMediaType(ProblemError):
    """415 ``unsupported-media-type``."""


class ValidationFailed(ProblemError):
    """422 ``validation``: an instance does not match the schema (``detail``: the path)."""


class OutOfDistribution(ValidationFailed):
    """422 ``out-of-distribution``: the input guard refused an instance (``detail``: which)."""


class RateLimited(ProblemError):
    """429 ``rate-limited``: over a rate; ``retry_after`` says when to try again."""


class QuotaExhausted(RateLimited):
    """429 ``quota-exhausted``: the principal's quota is spent until ``retry_after``."""


class HeaderFieldsTooLarge(ProblemError):
    """431 ``header-fields-too-large``."""


class InternalError(ProblemError):
    """500 ``internal``: the handler failed; the server's log has the request id."""


class ReloadFailed(InternalError):
    """500 ``reload-failed``: the new files were refused; the old version still serves."""


class Unavailable(ProblemError):
    """503: the server cannot take the request now (catch-all of the four below)."""


class Overloaded(Unavailable):
    """503 ``overloaded``: more than ``max_in_flight`` requests at once."""


class LimitsUnavailable(Unavailable):
    """503 ``limits-unavailable``: the rate-limit storage does not answer."""


class AuditUnavailable(Unavailable):
    """503 ``audit-unavailable``: the audit log cannot be written."""


class ModelUnavailable(Unavailable):
    """503 ``model-unavailable``: an optional model that failed to load."""


class ModelTimeout(ProblemError):
    """504 ``timeout``: the prediction took longer than ``predict_timeout_s``."""


class HTTPVersionNotSupported(ProblemError):
    """505 ``http-version-not-supported``: a request line of another version than HTTP/1.x."""


#: The problem slugs of docs/http.md: the status each comes with and the class raised.
_BY_SLUG: Final[dict[str, tuple[int, type[ProblemError]]]] = {
    "bad-request": (400, BadRequest),
    "malformed-json": (400, MalformedJSON),
    "unsupported": (400, NotSupported),
    "unauthorized": (401, Unauthorized),
    "client-certificate-required": (401, ClientCertificateRequired),
    "forbidden": (403, Forbidden),
    "https-required": (403, HTTPSRequired),
    "browser-request": (403, BrowserRequest),
    "suspected-extraction": (403, SuspectedExtraction),
    "not-found": (404, NotFound),
    "drift-off": (404, DriftOff),
    "extraction-off": (404, ExtractionOff),
    "method-not-allowed": (405, MethodNotAllowed),
    "body-timeout": (408, BodyTimeout),
    "header-timeout": (408, HeaderTimeout),
    "explain-unavailable": (409, ExplainUnavailable),
    "too-large": (413, PayloadTooLarge),
    "too-many-elements": (413, TooManyElements),
    "uri-too-long": (414, URITooLong),
    "unsupported-media-type": (415, UnsupportedMediaType),
    "validation": (422, ValidationFailed),
    "out-of-distribution": (422, OutOfDistribution),
    "rate-limited": (429, RateLimited),
    "quota-exhausted": (429, QuotaExhausted),
    "header-fields-too-large": (431, HeaderFieldsTooLarge),
    "internal": (500, InternalError),
    "reload-failed": (500, ReloadFailed),
    "overloaded": (503, Overloaded),
    "limits-unavailable": (503, LimitsUnavailable),
    "audit-unavailable": (503, AuditUnavailable),
    "model-unavailable": (503, ModelUnavailable),
    "timeout": (504, ModelTimeout),
    "http-version-not-supported": (505, HTTPVersionNotSupported),
}

#: The class of an error status whatever its body says (no slug, another status's
#: slug). 409 and 504 have none: from a proxy they do not mean what the server's do.
_BY_STATUS: Final[dict[int, type[ProblemError]]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: PayloadTooLarge,
    414: URITooLong,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    429: RateLimited,
    431: HeaderFieldsTooLarge,
    500: InternalError,
    503: Unavailable,
    505: HTTPVersionNotSupported,
}


# --------------------------------------------------------------------------- answers


class ModelInfo(msgspec.Struct, frozen=True):
    """One entry of ``GET /v1/models``; ``ready`` is false for an optional model that failed.

    Answer types ignore fields they do not know, so a newer server does not break them.
    """

    name: str
    version: str
    ready: bool = True


class ArtifactInfo(msgspec.Struct, frozen=True):
    """A file the model opened, as it was when loaded."""

    name: str
    sha256: str
    size: int
    format: str


class ModelDetails(msgspec.Struct, frozen=True):
    """``GET /v1/models/{name}`` (role ``admin``): version, revision and artifact hashes."""

    name: str
    version: str
    revision: str
    artifacts: list[ArtifactInfo]
    max_instances: int
    ready: bool = True


class Explanation(msgspec.Struct, Generic[T], frozen=True):
    """One instance explained: its prediction and the attribution of each feature.

    The prediction is as the caller's output policy shows it; ``attributions`` is None
    when that policy withholds them (``label_only``).
    """

    prediction: T
    attributions: dict[str, float] | None


class _Predictions(msgspec.Struct, Generic[T]):
    predictions: list[T]


class _Explanations(msgspec.Struct, Generic[T]):
    explanations: list[Explanation[T]]


class _Models(msgspec.Struct):
    models: list[ModelInfo]


class _ProblemBody(msgspec.Struct):
    type: str | None = None
    title: str | None = None
    detail: str | None = None
    request_id: str | None = None


_encoder: Final = msgspec.json.Encoder()
_problem_decoder: Final = msgspec.json.Decoder(_ProblemBody)
_models_decoder: Final = msgspec.json.Decoder(_Models)
_details_decoder: Final = msgspec.json.Decoder(ModelDetails)


# Decoders are built once per output type and reused (a dict: racing threads at worst
# build one twice).
_predictions_decoders: Final[dict[Any, msgspec.json.Decoder[_Predictions[Any]]]] = {}
_explanations_decoders: Final[dict[Any, msgspec.json.Decoder[_Explanations[Any]]]] = {}


def _cached_decoder(
    decoders: dict[Any, msgspec.json.Decoder[T]], envelope: Any, out: Any
) -> msgspec.json.Decoder[T]:
    """The strict decoder of ``envelope[out]``, built on first use and kept in ``decoders``."""
    decoder = decoders.get(out)
    if decoder is None:
        decoder = msgspec.json.Decoder(envelope[out])
        decoders[out] = decoder
    return decoder


def _predictions_decoder(out: Any) -> msgspec.json.Decoder[_Predictions[Any]]:
    """The strict decoder of ``{"predictions": [out, ...]}``."""
    return _cached_decoder(_predictions_decoders, _Predictions, out)


def _explanations_decoder(out: Any) -> msgspec.json.Decoder[_Explanations[Any]]:
    """The strict decoder of ``{"explanations": [{"prediction": out, ...}, ...]}``."""
    return _cached_decoder(_explanations_decoders, _Explanations, out)


# --------------------------------------------------------------------------- helpers


_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


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


def _printable(text: str, limit: int) -> str:
    r"""``text`` as one line of inert text of at most ``limit`` characters.

    Every character that is not printable (line breaks, ESC and the ANSI sequences it
    starts, bidi overrides, zero-width characters) becomes a Python-style escape
    (``\n``, ``\x1b``, ``\u202e``), and a backslash becomes two, so no escape is
    ambiguous. Text that does not fit is cut and ends in ``...``.
    """
    pieces = [_escaped(char) for char in text[: limit + 1]]
    if len(text) <= limit and sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept: list[str] = []
    size = 0
    for piece in pieces:
        if size + len(piece) > limit - 3:
            break
        kept.append(piece)
        size += len(piece)
    return "".join(kept) + "..."


def _base_url(url: str) -> str:
    """``url`` checked: https, a host, no credentials, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ValueError(
            f"secureserve clients speak only HTTPS, not {parts.scheme or 'a bare host'}://: "
            "the server has no plaintext listener and an API key must never cross one. "
            "Use an https:// URL."
        )
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put no credentials in the URL; pass api_key= or cert=")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: the server URL takes no query or fragment")
    return url


def _readable(option: str, path: StrPath) -> None:
    """A ValueError naming ``path`` unless it is a file this process can read."""
    try:
        with open(path, "rb"):  # noqa: PTH123 - any os.PathLike, as ssl takes it
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{option}: cannot read {os.fspath(path)!r}: {reason}") from None


def _ssl_context(ca: StrPath | None, cert: tuple[StrPath, StrPath] | None) -> ssl.SSLContext:
    """A verifying context: trusts ``ca`` (else the system), presents ``cert`` if given."""
    if ca is not None:
        _readable("ca", ca)
    if cert is not None:
        _readable("cert (the certificate)", cert[0])
        _readable("cert (the key)", cert[1])
    try:
        if ca is None:
            context = httpx2.create_ssl_context()  # the system's trust store
        else:
            context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise ValueError(f"ca: no CA certificate in {os.fspath(ca or '')!r}: {exc}") from exc
    if cert is not None:
        try:
            context.load_cert_chain(cert[0], cert[1])
        except ssl.SSLError as exc:
            files = f"{os.fspath(cert[0])!r} and {os.fspath(cert[1])!r}"
            raise ValueError(f"cert: {files} are not a PEM certificate and its key: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _headers(api_key: str | None) -> dict[str, str]:
    """The headers of every request: identity encoding, and the key if there is one.

    The key lives only in the pool's headers afterwards (``httpx2`` shows
    ``Authorization`` as ``[secure]``), never in an attribute of the client.
    """
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    if api_key is not None:
        if not (api_key.isascii() and api_key.isprintable()) or " " in api_key or not api_key:
            raise ValueError("api_key must be the bare key: printable ASCII, no space, no 'Bearer'")
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _check_numbers(
    timeout: float, retries: int, max_retry_wait: float, max_response_bytes: int
) -> None:
    if not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    if retries < 0:
        raise ValueError("retries must be 0 or more")
    if not max_retry_wait >= 0:
        raise ValueError("max_retry_wait must be 0 or more seconds")
    if isinstance(max_response_bytes, bool) or not (
        isinstance(max_response_bytes, int) and max_response_bytes > 0
    ):
        raise ValueError("max_response_bytes must be a positive number of bytes")


def _model_path(name: str, action: str = "") -> str:
    """``/v1/models/{name}[:action]``; a name the server cannot have is a ValueError.

    The rule is the server's (lower-case letters, digits, '.', '_', '-', at most 63,
    first a letter or digit), so no name reaches another route: ``..`` would become
    ``/v1`` once the URL's dot segments are resolved.
    """
    if not isinstance(name, str) or _MODEL_NAME.fullmatch(name) is None:
        shown = _printable(name, 64) if isinstance(name, str) else type(name).__name__
        raise ValueError(
            f"'{shown}' is no model name: lower-case letters, digits, '.', '_' and '-', "
            "at most 63 characters, the first a letter or digit"
        )
    return f"/v1/models/{name}{action}"


def _instances_body(instances: Iterable[object]) -> bytes:
    return _encoder.encode({"instances": list(instances)})


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; None if absent or garbled."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value[:12]), 10**9))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _valid_request_id(value: str | None) -> str | None:
    """``value`` if it looks like the server's request ids, else None (never shown raw)."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return None


class _Answer:
    """An answer read within the limits: status, headers and the body, if it was read.

    ``body`` is None when it was not read: ``refusal`` then says why (encoded, or over
    the size limit).
    """

    __slots__ = ("body", "headers", "method", "path", "reason", "refusal", "status")

    def __init__(
        self,
        response: httpx2.Response,
        body: bytes | None,
        refusal: str | None,
    ) -> None:
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.headers = response.headers
        self.method = response.request.method
        self.path = response.request.url.path
        self.body = body
        self.refusal = refusal

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300  # noqa: PLR2004 - the 2xx range

    @property
    def request_id(self) -> str | None:
        return _valid_request_id(self.headers.get("x-request-id"))


class _BodyReader:
    """Collects a streamed body up to its limit; never decodes a ``Content-Encoding``."""

    def __init__(self, response: httpx2.Response, max_response_bytes: int) -> None:
        self._response = response
        self._limit = max_response_bytes if response.is_success else _MAX_ERROR_BYTES
        self._limit_name = "max_response_bytes" if response.is_success else "the error body limit"
        self._parts: list[bytes] = []
        self._size = 0
        self.refusal = self._refused_before_reading()

    def _refused_before_reading(self) -> str | None:
        headers = self._response.headers
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            shown = _printable(encoding, 40)
            return f"its body has Content-Encoding {shown}, though identity was asked for"
        length = headers.get("content-length", "").strip()
        if length.isascii() and length.isdigit() and int(length[:20]) > self._limit:
            return (
                f"its body of {_printable(length, 20)} bytes is over "
                f"{self._limit_name} ({self._limit})"
            )
        return None

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False (and the body dropped) once the total is over the limit."""
        self._size += len(chunk)
        if self._size > self._limit:
            self._parts.clear()
            self.refusal = f"its body is over {self._limit_name} ({self._limit} bytes)"
            return False
        self._parts.append(chunk)
        return True

    def answer(self) -> _Answer:
        body = None if self.refusal is not None else b"".join(self._parts)
        return _Answer(self._response, body, self.refusal)


def _problem(answer: _Answer) -> ProblemError:
    """The exception for an error answer; never fails on the body, whatever it holds.

    All server text in it is escaped and bounded; the slug picks the class only on the
    slug's own status, else the status does.
    """
    status = answer.status
    try:
        body = _problem_decoder.decode(answer.body or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = _ProblemBody()  # not problem+json: a proxy's page, a garbled or unread body
    slug = None
    if body.type is not None and body.type.startswith(_PROBLEM_PREFIX):
        slug = body.type.removeprefix(_PROBLEM_PREFIX)
        if _SLUG.fullmatch(slug) is None:
            slug = None
    title = _printable(body.title or answer.reason or f"HTTP {status}", _MAX_TITLE)
    detail = _printable(body.detail, _MAX_DETAIL) if body.detail else None
    if 300 <= status < 400:  # noqa: PLR2004 - the redirect range
        detail = "the client follows no redirects"
    expected = _BY_SLUG.get(slug) if slug is not None else None
    if expected is not None and expected[0] == status:
        kind = expected[1]
    else:
        kind = _BY_STATUS.get(status, ProblemError)
    return kind(
        status,
        slug,
        title,
        detail=detail,
        request_id=_valid_request_id(body.request_id) or answer.request_id,
        retry_after=_retry_after(answer.headers.get("retry-after")),
    )


def _unexpected(answer: _Answer, why: str) -> UnexpectedResponse:
    message = f"the answer to {answer.method} {answer.path} {why}"
    return UnexpectedResponse(
        _printable(message, _MAX_MESSAGE), status=answer.status, request_id=answer.request_id
    )


def _decode(decoder: msgspec.json.Decoder[T], answer: _Answer) -> T:
    """The body of a successful answer, or the error for it."""
    if not answer.is_success:
        raise _problem(answer)
    if answer.body is None:
        raise _unexpected(answer, f"was not read: {answer.refusal}")
    try:
        return decoder.decode(answer.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # msgspec's message says all; its traceback would say nothing more
        raise _unexpected(answer, f"does not match the expected type: {exc}") from None


def _probe(answer: _Answer) -> bool:
    """``/healthz`` and ``/readyz``: 200 is True, 503 is False, anything else raises."""
    if answer.status == 200:  # noqa: PLR2004 - HTTP OK
        return True
    if answer.status == 503:  # noqa: PLR2004 - not ready (shutting down, loading)
        return False
    raise _problem(answer)


def _wait(answer: _Answer, attempt: int, retries: int, cap: float) -> float | None:
    """Seconds to wait before retrying ``answer``, or None not to retry it."""
    if answer.status not in _RETRYABLE or attempt >= retries:
        return None
    seconds = _retry_after(answer.headers.get("retry-after"))
    if seconds is None or seconds > cap:
        return None
    return seconds


def _transport_error(exc: httpx2.RequestError, url: str, timeout: float) -> TransportError:
    """Our error for ``exc``: a TLSError when an ``ssl.SSLError`` is behind it."""
    if isinstance(exc, httpx2.TimeoutException):
        return _timed_out(url, timeout, type(exc).__name__)
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError):
            return TLSError(
                _printable(f"TLS with {url} failed: {cause}", _MAX_MESSAGE)
                + ". The server's certificate must be issued by the CA given as ca= "
                "(or one the system trusts) for this host name."
            )
        cause = cause.__cause__ or cause.__context__
    return TransportError(
        _printable(f"no answer from {url}: {type(exc).__name__}: {exc}", _MAX_MESSAGE)
    )


def _timed_out(url: str, timeout: float, what: str = "TimeoutError") -> TransportError:
    return TransportError(f"no complete answer from {url} within timeout={timeout:g} s ({what})")


# --------------------------------------------------------------------------- deadline

# The blocking client's deadline reaches every socket operation through this: httpx2
# bounds each read or write by ``timeout``, not the exchange, so a server sending one
# byte at a time (its head or its body) would otherwise hold a call forever.
_deadline: ContextVar[float | None] = ContextVar("secureserve_client_deadline", default=None)


def _within_deadline(timeout: float | None) -> float | None:
    """``timeout`` cut to what is left of the current attempt; past it, TimeoutError."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the client's timeout passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream:
    """A network stream of ``httpcore2`` whose every operation ends by the deadline."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self._stream.read(max_bytes, _within_deadline(timeout))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _within_deadline(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> _DeadlineStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _within_deadline(timeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend:
    """The network backend of ``httpcore2``, handing out :class:`_DeadlineStream` s."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> _DeadlineStream:
        stream = self._backend.connect_tcp(
            host, port, _within_deadline(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> _DeadlineStream:
        stream = self._backend.connect_unix_socket(path, _within_deadline(timeout), socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bind_deadline(http: httpx2.Client) -> None:
    """Put the deadline into the network backend of each of ``http``'s connection pools.

    These are internals of ``httpx2`` and ``httpcore2``; were they to change, the
    deadline would still be checked between the body's chunks, only no longer inside
    each socket operation (tests/test_client.py catches that).
    """
    transports = [getattr(http, "_transport", None)]
    transports += list(getattr(http, "_mounts", {}).values())
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if hasattr(backend, "connect_tcp") and not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]  # noqa: SLF001


# --------------------------------------------------------------------------- clients


class _Base:
    """What both clients share: the constructor, checking the settings once.

    It hands the pool's options to :meth:`_open_pool`, which each client defines.
    The API key is not kept here: it goes into the pool's headers and nowhere else.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        ca: StrPath | None = None,
        cert: tuple[StrPath, StrPath] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        _check_numbers(timeout, retries, max_retry_wait, max_response_bytes)
        self.url = _base_url(url)
        self._timeout_s = float(timeout)
        self._retries = retries
        self._max_retry_wait = max_retry_wait
        self._max_response_bytes = max_response_bytes
        self._open_pool(
            base_url=self.url,
            headers=_headers(api_key),
            verify=_ssl_context(ca, cert),
            timeout=httpx2.Timeout(timeout),
            follow_redirects=False,
        )

    def _open_pool(self, **options: Any) -> None:
        """Make ``self._http``, the ``httpx2`` pool, from ``options`` (its keywords)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"  # never the key


class Client(_Base):
    """A blocking client for one secureserve server; a context manager owning a pool.

    ``api_key`` is sent as a bearer credential; ``ca`` is the PEM bundle the server's
    certificate must chain to (default: the system's trust store); ``cert`` is
    ``(certificate, key)`` PEM files for mutual TLS. ``timeout`` bounds each attempt
    as a whole (connect, send, wait, read the last byte), in seconds. A 429 or 503
    with ``Retry-After`` is retried at most ``retries`` times when the wait is at most
    ``max_retry_wait`` seconds; a POST retried so may run (and be charged) twice.
    A successful answer over ``max_response_bytes`` is UnexpectedResponse.
    """

    _http: httpx2.Client

    def _open_pool(self, **options: Any) -> None:
        """A blocking pool, its sockets bound by each attempt's deadline."""
        self._http = httpx2.Client(**options)
        _bind_deadline(self._http)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def predict(self, model: str, instances: Iterable[object], *, out: type[T]) -> list[T]:
        """``POST /v1/models/{model}:predict``: one ``out`` per instance, in order."""
        path = _model_path(model, ":predict")
        answer = self._send("POST", path, _instances_body(instances))
        return _decode(_predictions_decoder(out), answer).predictions

    def explain(
        self, model: str, instances: Iterable[object], *, out: type[T]
    ) -> list[Explanation[T]]:
        """``POST /v1/models/{model}:explain`` (role ``explain``): attributions per feature."""
        path = _model_path(model, ":explain")
        answer = self._send("POST", path, _instances_body(instances))
        return _decode(_explanations_decoder(out), answer).explanations

    def models(self) -> list[ModelInfo]:
        """``GET /v1/models``: the models this credential may use."""
        return _decode(_models_decoder, self._send("GET", "/v1/models")).models

    def model(self, name: str) -> ModelDetails:
        """``GET /v1/models/{name}`` (role ``admin``): version, revision, artifact hashes."""
        return _decode(_details_decoder, self._send("GET", _model_path(name)))

    def live(self) -> bool:
        """``GET /healthz``: whether the process answers (503 is False; no answer raises)."""
        return _probe(self._send("GET", "/healthz", retry=False))

    def ready(self) -> bool:
        """``GET /readyz``: whether every required model is loaded (False while not)."""
        return _probe(self._send("GET", "/readyz", retry=False))

    def _send(
        self, method: str, path: str, body: bytes | None = None, *, retry: bool = True
    ) -> _Answer:
        attempt = 0
        while True:
            answer = self._attempt(method, path, body)
            wait = _wait(answer, attempt, self._retries if retry else 0, self._max_retry_wait)
            if wait is None:
                return answer
            attempt += 1
            time.sleep(wait)

    def _attempt(self, method: str, path: str, body: bytes | None) -> _Answer:
        """One request and its answer, all within ``timeout`` seconds."""
        headers = {"Content-Type": "application/json"} if body is not None else None
        deadline = time.monotonic() + self._timeout_s
        token = _deadline.set(deadline)
        try:
            request = self._http.build_request(method, path, content=body, headers=headers)
            response = self._http.send(request, stream=True)
            try:
                reader = _BodyReader(response, self._max_response_bytes)
                if reader.refusal is None:
                    for chunk in response.iter_raw():
                        if time.monotonic() > deadline:
                            raise TimeoutError("the client's timeout passed")
                        if not reader.add(chunk):
                            break
                return reader.answer()
            finally:
                response.close()
        except httpx2.RequestError as exc:
            raise _transport_error(exc, self.url, self._timeout_s) from exc
        except TimeoutError as exc:
            raise _timed_out(self.url, self._timeout_s) from exc
        finally:
            _deadline.reset(token)


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: ``async with`` and ``await``, same options."""

    _http: httpx2.AsyncClient

    def _open_pool(self, **options: Any) -> None:
        """An asyncio pool; ``asyncio.timeout`` bounds each attempt."""
        self._http = httpx2.AsyncClient(**options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def predict(self, model: str, instances: Iterable[object], *, out: type[T]) -> list[T]:
        """``POST /v1/models/{model}:predict``: one ``out`` per instance, in order."""
        path = _model_path(model, ":predict")
        answer = await self._send("POST", path, _instances_body(instances))
        return _decode(_predictions_decoder(out), answer).predictions

    async def explain(
        self, model: str, instances: Iterable[object], *, out: type[T]
    ) -> list[Explanation[T]]:
        """``POST /v1/models/{model}:explain`` (role ``explain``): attributions per feature."""
        path = _model_path(model, ":explain")
        answer = await self._send("POST", path, _instances_body(instances))
        return _decode(_explanations_decoder(out), answer).explanations

    async def models(self) -> list[ModelInfo]:
        """``GET /v1/models``: the models this credential may use."""
        return _decode(_models_decoder, await self._send("GET", "/v1/models")).models

    async def model(self, name: str) -> ModelDetails:
        """``GET /v1/models/{name}`` (role ``admin``): version, revision, artifact hashes."""
        return _decode(_details_decoder, await self._send("GET", _model_path(name)))

    async def live(self) -> bool:
        """``GET /healthz``: whether the process answers (503 is False; no answer raises)."""
        return _probe(await self._send("GET", "/healthz", retry=False))

    async def ready(self) -> bool:
        """``GET /readyz``: whether every required model is loaded (False while not)."""
        return _probe(await self._send("GET", "/readyz", retry=False))

    async def _send(
        self, method: str, path: str, body: bytes | None = None, *, retry: bool = True
    ) -> _Answer:
        attempt = 0
        while True:
            answer = await self._attempt(method, path, body)
            wait = _wait(answer, attempt, self._retries if retry else 0, self._max_retry_wait)
            if wait is None:
                return answer
            attempt += 1
            await asyncio.sleep(wait)

    async def _attempt(self, method: str, path: str, body: bytes | None) -> _Answer:
        """One request and its answer, all within ``timeout`` seconds."""
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with asyncio.timeout(self._timeout_s):
                request = self._http.build_request(method, path, content=body, headers=headers)
                response = await self._http.send(request, stream=True)
                try:
                    reader = _BodyReader(response, self._max_response_bytes)
                    if reader.refusal is None:
                        async with contextlib.aclosing(response.aiter_raw()) as chunks:
                            async for chunk in chunks:
                                if not reader.add(chunk):
                                    break
                    return reader.answer()
                finally:
                    await response.aclose()
        except httpx2.RequestError as exc:
            raise _transport_error(exc, self.url, self._timeout_s) from exc
        except TimeoutError as exc:
            raise _timed_out(self.url, self._timeout_s) from exc
