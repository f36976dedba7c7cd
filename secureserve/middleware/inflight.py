"""Bound the requests being served at once; beyond it, 503 with ``Retry-After``.

This keeps memory bounded under overload: nothing waits in an unbounded queue.
Health probes are exempt so that an overloaded server is not restarted for it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from secureserve.errors import RequestRejected
from secureserve.middleware.probes import is_probe

__all__ = ["InFlightLimit"]


class InFlightLimit:
    """Admit at most ``limit`` concurrent HTTP requests."""

    def __init__(self, app: ASGIApp, *, limit: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.current = 0
        self.retry_after = str(retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http" or is_probe(scope):
            await self.app(scope, receive, send)
            return
        if self.current >= self.limit:
            raise RequestRejected(
                503,
                "overloaded",
                "Server is busy",
                headers={"Retry-After": self.retry_after},
                log_reason="max_in_flight",
            )
        self.current += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.current -= 1
