"""Deny by default: every route but the probes needs a principal.

Order: a client whose recent failed authentications crossed ``[limits]
auth_failures_per_ip`` is refused (429) before its credentials are even looked at;
under mutual TLS a verified client certificate is required; then the
``Authenticator`` resolves the bearer credential (API key or JWT) or a mapped
certificate. A failure is counted against the client's address and answered 401
with the same body whatever the reason (the reason goes to the log). The
principal is put in the scope as ``scope["secureserve.principal"]``; routes then
check roles and model lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from secureserve.addresses import client_ip
from secureserve.errors import RequestRejected
from secureserve.middleware.probes import is_probe

if TYPE_CHECKING:
    from collections.abc import Sequence

    from secureserve.auth import Authenticator
    from secureserve.ratelimit import RateLimiter

__all__ = ["Authentication"]


class Authentication:
    """Resolve the caller to a principal or refuse with 401 (or 429 after repeated failures)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        require_client_cert: bool,
        limiter: RateLimiter | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.require_client_cert = require_client_cert
        self.limiter = limiter
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http" or is_probe(scope):
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        ip = client_ip(scope, self.trusted_proxies) if limiter is not None else ""
        if limiter is not None:
            blocked = await limiter.auth_blocked(ip)
            if blocked is not None:
                raise RequestRejected(
                    429,
                    "rate-limited",
                    "Too many requests",
                    headers=blocked,
                    log_reason="auth-failures-per-ip",
                )
        subject = _client_certificate(scope)
        if self.require_client_cert and subject is None:
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
        try:
            principal = self.authenticator.authenticate(authorization, subject)
        except RequestRejected:
            if limiter is not None:
                await limiter.auth_failure(ip)
            raise
        scope["secureserve.principal"] = principal
        scope["secureserve"].principal_id = principal.id
        scope["secureserve"].roles = principal.roles
        await self.app(scope, receive, send)


def _client_certificate(scope: Scope) -> str | None:
    """The verified client certificate's subject from the ASGI TLS extension, if any."""
    tls = scope.get("extensions", {}).get("tls") or {}
    name = tls.get("client_cert_name")
    return name if isinstance(name, str) and name else None
