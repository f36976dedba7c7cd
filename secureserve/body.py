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

from secureserve.deadlines import Deadlines
from secureserve.errors import RequestRejected

__all__ = ["JSON_MEDIA_TYPES", "check_json_content_type", "read_body"]

JSON_MEDIA_TYPES: Final = frozenset(
    {b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"}
)


def check_json_content_type(scope: Scope) -> None:
    """Refuse anything but uncompressed ``application/json`` (UTF-8) with 415.

    A ``Content-Encoding`` other than ``identity`` is refused, not ignored: read as if it
    were absent, the body the server decodes would differ from the one a proxy inspects.
    """
    json_type = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            json_type = value.lower() in JSON_MEDIA_TYPES
        elif name == b"content-encoding" and value.strip().lower() != b"identity":
            raise _unsupported("send the body uncompressed (no Content-Encoding)")
    if not json_type:
        raise _unsupported("send the body as application/json")


def _unsupported(detail: str) -> RequestRejected:
    return RequestRejected(415, "unsupported-media-type", "Unsupported media type", detail=detail)


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
    info = scope.get("secureserve")  # RequestInfo: the loop's deadlines at hand
    deadlines = Deadlines(asyncio.get_running_loop()) if info is None else info.deadlines
    deadline = _Deadline(deadlines.loop)
    deadlines.add(deadline, deadline_s, _Deadline.fire)
    try:
        chunks = await _receive_all(receive, limit)
    except asyncio.CancelledError:
        if not deadline.expired():
            raise
        raise RequestRejected(
            408, "body-timeout", "Request body not received in time", close=True
        ) from None
    finally:
        deadlines.cancel(deadline)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _receive_all(receive: Receive, limit: int) -> list[bytes]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRejected(
                400, "bad-request", "Bad request", close=True, log_reason="client-disconnected"
            )
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks


class _Deadline:
    """The current task, cancelled by :meth:`fire` when its body is late.

    ``asyncio.timeout`` does the same at about twice the cost, and this runs on every
    request. As there, a cancellation that came from elsewhere is never taken for the
    deadline: :meth:`expired` is true only when this deadline fired and no other
    cancellation is pending.
    """

    __slots__ = ("_cancelling", "_fired", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - always called from a request's task
            raise RuntimeError("read_body must run in a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False

    def fire(self) -> None:
        """The body is late: cancel the task reading it."""
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether the cancellation being handled is this deadline's (then it is taken back)."""
        return self._fired and self._task.uncancel() <= self._cancelling
