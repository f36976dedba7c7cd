"""The one place where errors become ``application/problem+json`` responses (RFC 9457).

A client learns the status, a fixed title, the request id and, where safe, a
``detail`` (which field failed validation). Everything else — exception text,
paths, library names — stays in the log line that carries the same request id.
"""

from __future__ import annotations

from typing import Final

import msgspec
from starlette.exceptions import HTTPException
from starlette.responses import Response

from secureserve.errors import RequestRejected

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "SECURITY_HEADERS",
    "Problem",
    "as_rejection",
    "problem_bytes",
    "problem_response",
]

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:secureserve:problem:"

#: Sent with every response, the app's and the connection's own alike.
SECURITY_HEADERS: Final = (
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)

_encoder: Final = msgspec.json.Encoder()
_BY_STATUS: Final = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("too-large", "Request body too large"),
}


class Problem(msgspec.Struct, omit_defaults=True, frozen=True):
    """The body of every error response.

    ``error`` repeats the title and detail in one string: the Open Inference Protocol's
    error member, which its clients (tritonclient) read on every error; one shape
    serves both ``/v1`` and ``/v2``.
    """

    type: str
    title: str
    status: int
    request_id: str
    error: str
    detail: str | None = None


def as_rejection(exc: BaseException) -> RequestRejected:
    """Map any exception to what a client may see; unknown ones become a bare 500."""
    if isinstance(exc, RequestRejected):
        return exc
    if isinstance(exc, HTTPException):  # raised by Starlette's router: 404, 405
        slug, title = _BY_STATUS.get(exc.status_code, ("error", "Request failed"))
        return RequestRejected(exc.status_code, slug, title, headers=dict(exc.headers or {}))
    return RequestRejected(500, "internal", "Internal server error")


def _body(rejection: RequestRejected, request_id: str) -> bytes:
    return _encoder.encode(
        Problem(
            type=TYPE_PREFIX + rejection.slug,
            title=rejection.title,
            status=rejection.status,
            request_id=request_id,
            error=f"{rejection.title}: {rejection.detail}" if rejection.detail else rejection.title,
            detail=rejection.detail,
        )
    )


def problem_response(rejection: RequestRejected, request_id: str) -> Response:
    """Render a rejection; the body never contains more than ``Problem`` declares."""
    body = _body(rejection, request_id)
    headers = dict(rejection.headers)
    if rejection.close:
        headers["connection"] = "close"
    return Response(
        body, status_code=rejection.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def problem_bytes(status_line: bytes, rejection: RequestRejected, request_id: str) -> bytes:
    """A whole HTTP/1.1 response for ``rejection`` that closes the connection.

    For answers the connection sends itself, before any request reached the app:
    the same body, security headers and ``X-Request-ID`` as the app's own problems.
    """
    body = _body(rejection, request_id)
    lines = [
        status_line,
        b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n",
        b"x-request-id: " + request_id.encode() + b"\r\n",
    ]
    lines += [name + b": " + value + b"\r\n" for name, value in SECURITY_HEADERS]
    lines += [
        name.lower().encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
        for name, value in rejection.headers.items()
    ]
    return b"".join([*lines, b"\r\n", body])
