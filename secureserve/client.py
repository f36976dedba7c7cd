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
        └── ModelTimeout            504 timeout

The class comes from the problem ``type`` alone: an unknown slug, or an answer that is
not problem+json (a proxy's HTML page, a garbled body), is a plain ``ProblemError``
with the HTTP status. Programming errors (an ``http://`` URL, a bad argument) are
``ValueError``.
"""

# ruff: noqa: N818 - exceptions are named for the HTTP status they stand for, as in
# the server's problem titles (NotFound, RateLimited); an "Error" suffix adds nothing.

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from os import PathLike
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeAlias, TypeVar
from urllib.parse import quote, urlsplit

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

#: Seconds for the whole exchange (connect, send, wait, read); the server's own
#: ``predict_timeout_s`` defaults to 10.
DEFAULT_TIMEOUT_S: Final = 30.0
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

    ``__cause__`` is the ``httpx2`` exception. Never retried: the request may or may
    not have reached the server.
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


#: The problem slugs of docs/http.md and the class raised for each.
_BY_SLUG: Final[dict[str, type[ProblemError]]] = {
    "bad-request": BadRequest,
    "malformed-json": MalformedJSON,
    "unsupported": NotSupported,
    "unauthorized": Unauthorized,
    "client-certificate-required": ClientCertificateRequired,
    "forbidden": Forbidden,
    "https-required": HTTPSRequired,
    "browser-request": BrowserRequest,
    "suspected-extraction": SuspectedExtraction,
    "not-found": NotFound,
    "drift-off": DriftOff,
    "extraction-off": ExtractionOff,
    "method-not-allowed": MethodNotAllowed,
    "body-timeout": BodyTimeout,
    "header-timeout": HeaderTimeout,
    "explain-unavailable": ExplainUnavailable,
    "too-large": PayloadTooLarge,
    "too-many-elements": TooManyElements,
    "uri-too-long": URITooLong,
    "unsupported-media-type": UnsupportedMediaType,
    "validation": ValidationFailed,
    "out-of-distribution": OutOfDistribution,
    "rate-limited": RateLimited,
    "quota-exhausted": QuotaExhausted,
    "header-fields-too-large": HeaderFieldsTooLarge,
    "internal": InternalError,
    "reload-failed": ReloadFailed,
    "overloaded": Overloaded,
    "limits-unavailable": LimitsUnavailable,
    "audit-unavailable": AuditUnavailable,
    "model-unavailable": ModelUnavailable,
    "timeout": ModelTimeout,
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


def _predictions_decoder(out: Any) -> msgspec.json.Decoder[_Predictions[Any]]:
    """The strict decoder of ``{"predictions": [out, ...]}``."""
    decoder = _predictions_decoders.get(out)
    if decoder is None:
        decoder = msgspec.json.Decoder(_Predictions[out])
        _predictions_decoders[out] = decoder
    return decoder


def _explanations_decoder(out: Any) -> msgspec.json.Decoder[_Explanations[Any]]:
    """The strict decoder of ``{"explanations": [{"prediction": out, ...}, ...]}``."""
    decoder = _explanations_decoders.get(out)
    if decoder is None:
        decoder = msgspec.json.Decoder(_Explanations[out])
        _explanations_decoders[out] = decoder
    return decoder


# --------------------------------------------------------------------------- helpers


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


def _ssl_context(ca: StrPath | None, cert: tuple[StrPath, StrPath] | None) -> ssl.SSLContext:
    """A verifying context: trusts ``ca`` (else the system), presents ``cert`` if given."""
    try:
        if ca is None:
            context = httpx2.create_ssl_context()  # the system's trust store
        else:
            context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert[0], cert[1])
    except ssl.SSLError as exc:
        raise ValueError(f"unusable certificate file (ca={ca!r}, cert={cert!r}): {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key is not None:
        if not (api_key.isascii() and api_key.isprintable()) or " " in api_key or not api_key:
            raise ValueError("api_key must be the bare key: printable ASCII, no space, no 'Bearer'")
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _check_numbers(timeout: float, retries: int, max_retry_wait: float) -> None:
    if not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    if retries < 0:
        raise ValueError("retries must be 0 or more")
    if not max_retry_wait >= 0:
        raise ValueError("max_retry_wait must be 0 or more seconds")


def _model_path(name: str, action: str = "") -> str:
    """``/v1/models/{name}[:action]`` with ``name`` escaped: it can never change the route."""
    return f"/v1/models/{quote(name, safe='')}{action}"


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


def _request_id(response: httpx2.Response) -> str | None:
    return response.headers.get("x-request-id")


def _problem(response: httpx2.Response) -> ProblemError:
    """The exception for an error answer; never fails on the body, whatever it holds."""
    status = response.status_code
    try:
        body = _problem_decoder.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = _ProblemBody()  # not problem+json: a proxy's page, a garbled body
    slug = None
    if body.type is not None and body.type.startswith(_PROBLEM_PREFIX):
        slug = body.type.removeprefix(_PROBLEM_PREFIX)
    title = body.title or response.reason_phrase or f"HTTP {status}"
    detail = body.detail
    if 300 <= status < 400:  # noqa: PLR2004 - the redirect range
        detail = "the client follows no redirects"
    kind = _BY_SLUG.get(slug, ProblemError) if slug is not None else ProblemError
    return kind(
        status,
        slug,
        title,
        detail=detail,
        request_id=body.request_id or _request_id(response),
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def _decode(decoder: msgspec.json.Decoder[T], response: httpx2.Response) -> T:
    """The body of a successful answer, or the error for it."""
    if not response.is_success:
        raise _problem(response)
    try:
        return decoder.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UnexpectedResponse(
            f"the answer to {response.request.method} {response.request.url.path} "
            f"does not match the expected type: {exc}",
            status=response.status_code,
            request_id=_request_id(response),
        ) from None  # msgspec's message says all; its traceback would say nothing more


def _probe(response: httpx2.Response) -> bool:
    """``/healthz`` and ``/readyz``: 200 is True, 503 is False, anything else raises."""
    if response.status_code == 200:  # noqa: PLR2004 - HTTP OK
        return True
    if response.status_code == 503:  # noqa: PLR2004 - not ready (shutting down, loading)
        return False
    raise _problem(response)


def _wait(response: httpx2.Response, attempt: int, retries: int, cap: float) -> float | None:
    """Seconds to wait before retrying ``response``, or None not to retry it."""
    if response.status_code not in _RETRYABLE or attempt >= retries:
        return None
    seconds = _retry_after(response.headers.get("retry-after"))
    if seconds is None or seconds > cap:
        return None
    return seconds


def _transport_error(exc: httpx2.RequestError, url: str) -> TransportError:
    """Our error for ``exc``: a TLSError when an ``ssl.SSLError`` is behind it."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError):
            return TLSError(
                f"TLS with {url} failed: {cause}. The server's certificate must be issued "
                "by the CA given as ca= (or one the system trusts) for this host name."
            )
        cause = cause.__cause__ or cause.__context__
    return TransportError(f"no answer from {url}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- clients


class _Base:
    """What both clients share: settings, checked once in the constructor."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        ca: StrPath | None,
        cert: tuple[StrPath, StrPath] | None,
        timeout: float,
        retries: int,
        max_retry_wait: float,
    ) -> None:
        _check_numbers(timeout, retries, max_retry_wait)
        self.url = _base_url(url)
        self._retries = retries
        self._max_retry_wait = max_retry_wait
        self._headers = _headers(api_key)
        self._verify = _ssl_context(ca, cert)
        self._timeout = httpx2.Timeout(timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"  # never the key


class Client(_Base):
    """A blocking client for one secureserve server; a context manager owning a pool.

    ``api_key`` is sent as a bearer credential; ``ca`` is the PEM bundle the server's
    certificate must chain to (default: the system's trust store); ``cert`` is
    ``(certificate, key)`` PEM files for mutual TLS. ``timeout`` bounds each request,
    in seconds. A 429 or 503 with ``Retry-After`` is retried at most ``retries``
    times when the wait is at most ``max_retry_wait`` seconds.
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
    ) -> None:
        super().__init__(
            url,
            api_key=api_key,
            ca=ca,
            cert=cert,
            timeout=timeout,
            retries=retries,
            max_retry_wait=max_retry_wait,
        )
        self._http = httpx2.Client(
            base_url=self.url,
            headers=self._headers,
            verify=self._verify,
            timeout=self._timeout,
            follow_redirects=False,
        )

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
        response = self._send("POST", _model_path(model, ":predict"), _instances_body(instances))
        return _decode(_predictions_decoder(out), response).predictions

    def explain(
        self, model: str, instances: Iterable[object], *, out: type[T]
    ) -> list[Explanation[T]]:
        """``POST /v1/models/{model}:explain`` (role ``explain``): attributions per feature."""
        response = self._send("POST", _model_path(model, ":explain"), _instances_body(instances))
        return _decode(_explanations_decoder(out), response).explanations

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
    ) -> httpx2.Response:
        headers = {"Content-Type": "application/json"} if body is not None else None
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, content=body, headers=headers)
            except httpx2.RequestError as exc:
                raise _transport_error(exc, self.url) from exc
            wait = _wait(response, attempt, self._retries if retry else 0, self._max_retry_wait)
            if wait is None:
                return response
            attempt += 1
            time.sleep(wait)


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: ``async with`` and ``await``, same options."""

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
    ) -> None:
        super().__init__(
            url,
            api_key=api_key,
            ca=ca,
            cert=cert,
            timeout=timeout,
            retries=retries,
            max_retry_wait=max_retry_wait,
        )
        self._http = httpx2.AsyncClient(
            base_url=self.url,
            headers=self._headers,
            verify=self._verify,
            timeout=self._timeout,
            follow_redirects=False,
        )

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
        body = _instances_body(instances)
        response = await self._send("POST", _model_path(model, ":predict"), body)
        return _decode(_predictions_decoder(out), response).predictions

    async def explain(
        self, model: str, instances: Iterable[object], *, out: type[T]
    ) -> list[Explanation[T]]:
        """``POST /v1/models/{model}:explain`` (role ``explain``): attributions per feature."""
        body = _instances_body(instances)
        response = await self._send("POST", _model_path(model, ":explain"), body)
        return _decode(_explanations_decoder(out), response).explanations

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
    ) -> httpx2.Response:
        headers = {"Content-Type": "application/json"} if body is not None else None
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, content=body, headers=headers)
            except httpx2.RequestError as exc:
                raise _transport_error(exc, self.url) from exc
            wait = _wait(response, attempt, self._retries if retry else 0, self._max_retry_wait)
            if wait is None:
                return response
            attempt += 1
            await asyncio.sleep(wait)
