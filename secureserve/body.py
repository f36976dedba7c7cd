"""Reading a request body under a size limit and a deadline, while it streams in.

A declared ``Content-Length`` over the limit is refused before a byte is read;
an undeclared (chunked) body is counted as it arrives and refused the moment it
crosses the limit, so a 20 MB body is never buffered. A body that has not fully
arrived by the deadline gets 408. Both close the connection, since the rest of
the body is still on the wire.
"""

from __future__ import annotations

import asyncio
from typing import Final

from starlette.types import Receive, Scope

from secureserve.errors import RequestRejected

__all__ = ["JSON_MEDIA_TYPES", "check_json_content_type", "read_body"]

JSON_MEDIA_TYPES: Final = frozenset(
    {b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"}
)


def check_json_content_type(scope: Scope) -> None:
    """Refuse anything but ``application/json`` (UTF-8) with 415."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            if value.lower() in JSON_MEDIA_TYPES:
                return
            break
    raise RequestRejected(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        detail="send the body as application/json",
    )


def _too_large(limit: int) -> RequestRejected:
    return RequestRejected(
        413,
        "too-large",
        "Request body too large",
        detail=f"the body may be at most {limit} bytes",
        close=True,
    )


async def read_body(scope: Scope, receive: Receive, *, limit: int, deadline_s: float) -> bytes:
    """The whole body, or ``RequestRejected`` 413 / 408 / 400."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise RequestRejected(
                    400, "bad-request", "Bad request", detail="invalid Content-Length", close=True
                )
            if int(value) > limit:
                raise _too_large(limit)
            break
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestRejected(
                        400,
                        "bad-request",
                        "Bad request",
                        close=True,
                        log_reason="client-disconnected",
                    )
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestRejected(
            408, "body-timeout", "Request body not received in time", close=True
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
