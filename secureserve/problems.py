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

__all__ = ["PROBLEM_MEDIA_TYPE", "Problem", "as_rejection", "problem_response"]

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:secureserve:problem:"

_encoder: Final = msgspec.json.Encoder()
_BY_STATUS: Final = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("too-large", "Request body too large"),
}


class Problem(msgspec.Struct, omit_defaults=True, frozen=True):
    """The body of every error response."""

    type: str
    title: str
    status: int
    request_id: str
    detail: str | None = None


def as_rejection(exc: BaseException) -> RequestRejected:
    """Map any exception to what a client may see; unknown ones become a bare 500."""
    if isinstance(exc, RequestRejected):
        return exc
    if isinstance(exc, HTTPException):  # raised by Starlette's router: 404, 405
        slug, title = _BY_STATUS.get(exc.status_code, ("error", "Request failed"))
        return RequestRejected(exc.status_code, slug, title, headers=dict(exc.headers or {}))
    return RequestRejected(500, "internal", "Internal server error")


def problem_response(rejection: RequestRejected, request_id: str) -> Response:
    """Render a rejection; the body never contains more than ``Problem`` declares."""
    body = _encoder.encode(
        Problem(
            type=TYPE_PREFIX + rejection.slug,
            title=rejection.title,
            status=rejection.status,
            request_id=request_id,
            detail=rejection.detail,
        )
    )
    headers = dict(rejection.headers)
    if rejection.close:
        headers["connection"] = "close"
    return Response(
        body, status_code=rejection.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )
