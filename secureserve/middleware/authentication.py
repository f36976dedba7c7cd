"""Deny by default: every route but the probes needs a principal.

Under mutual TLS a verified client certificate is required too. The principal
is put in the scope as ``scope["secureserve.principal"]``; routes then check
roles and model lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from secureserve.auth import authenticate
from secureserve.errors import RequestRejected
from secureserve.middleware.probes import is_probe

if TYPE_CHECKING:
    from secureserve.keys import KeyStore

__all__ = ["Authentication"]


class Authentication:
    """Resolve ``Authorization: Bearer`` to a principal or refuse with 401."""

    def __init__(self, app: ASGIApp, *, keys: KeyStore, require_client_cert: bool) -> None:
        self.app = app
        self.keys = keys
        self.require_client_cert = require_client_cert

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http" or is_probe(scope):
            await self.app(scope, receive, send)
            return
        if self.require_client_cert and not _client_certificate(scope):
            raise RequestRejected(
                401,
                "client-certificate-required",
                "A client certificate is required",
                log_reason="no-client-certificate",
            )
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        principal = authenticate(authorization, self.keys)
        scope["secureserve.principal"] = principal
        scope["secureserve"].principal_id = principal.id
        await self.app(scope, receive, send)


def _client_certificate(scope: Scope) -> str | None:
    """The verified client certificate's subject from the ASGI TLS extension, if any."""
    tls = scope.get("extensions", {}).get("tls") or {}
    name = tls.get("client_cert_name")
    return name if isinstance(name, str) and name else None
