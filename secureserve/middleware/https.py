"""Refuse requests that did not arrive over TLS.

``secureserve run`` only ever listens with TLS, so this matters when a service
mounts the app under its own server: plaintext must not reach the model there
either. Terminate TLS in that server, or re-encrypt from the proxy to it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from secureserve.errors import RequestRejected

__all__ = ["HttpsOnly"]


class HttpsOnly:
    """403 for any HTTP request whose ASGI scope says ``http``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and scope.get("scheme") != "https":
            raise RequestRejected(
                403, "https-required", "HTTPS is required", log_reason="plaintext-scope"
            )
        await self.app(scope, receive, send)
