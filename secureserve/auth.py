"""Who is calling: bearer credentials to a ``Principal``, and role checks.

Deny by default: every route except ``/healthz`` and ``/readyz`` needs a
principal. A client learns only *that* authentication failed ("no bearer token"
or "invalid credentials"), never which check failed; the reason goes to the log.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from secureserve.errors import RequestRejected

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from secureserve.keys import KeyRecord, KeyStore
    from secureserve.tokens import JWTVerifier

__all__ = [
    "Authenticator",
    "Principal",
    "authenticate",
    "certificate_principals",
    "require_role",
    "unauthorized",
]

_BEARER: Final = "bearer "
_MAX_CREDENTIAL_CHARS: Final = 16384
_JWT_DOTS: Final = 2
_TOKEN: Final = re.compile(r"[!-~]+")  # RFC 6750 b64token and friends: visible ASCII, no spaces
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="secureserve"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``models`` is ``None`` when every model is allowed."""

    id: str
    name: str
    roles: frozenset[str]
    models: frozenset[str] | None = None

    def may_use(self, model_name: str) -> bool:
        """Whether the principal may see and call ``model_name``."""
        return self.models is None or model_name in self.models


def unauthorized(reason: str) -> RequestRejected:
    """A 401 whose body says only what is missing; ``reason`` is for the log."""
    return RequestRejected(
        401,
        "unauthorized",
        "Unauthorized",
        detail="no bearer token" if reason == "missing" else "invalid credentials",
        headers=_CHALLENGE,
        log_reason=reason,
    )


class Authenticator:
    """Every way a caller can prove who it is, tried in a fixed order.

    1. ``Authorization: Bearer <credential>``: a JWT (three dot-separated parts)
       when JWT verification is configured, else an API key. A bearer credential
       that fails is a 401, never a fall-through to the next method.
    2. Without a bearer credential, a verified client certificate whose subject is
       mapped in ``[[auth.client_certificates]]``.
    """

    def __init__(
        self,
        *,
        keys: KeyStore,
        jwt: JWTVerifier | None = None,
        certificates: Mapping[str, Principal] | None = None,
    ) -> None:
        self.keys = keys
        self.jwt = jwt
        self.certificates = dict(certificates or {})

    def authenticate(self, authorization: str | None, client_subject: str | None) -> Principal:
        """The principal, or a 401 ``RequestRejected`` whose ``log_reason`` says why."""
        if authorization:
            credential = authorization[7:]
            if (
                len(authorization) > _MAX_CREDENTIAL_CHARS
                or authorization[:7].lower() != _BEARER
                or _TOKEN.fullmatch(credential) is None
            ):
                raise unauthorized("not-bearer")
            if self.jwt is not None and credential.count(".") == _JWT_DOTS:
                return self.jwt.verify(credential)
            record = self.keys.verify(credential)
            if record is None:
                keys_broken = self.keys.last_error is not None
                raise unauthorized(
                    "key-file-invalid" if keys_broken else "unknown-revoked-or-expired-key"
                )
            return _principal(record)
        if client_subject is not None:
            principal = self.certificates.get(client_subject)
            if principal is not None:
                return principal
        raise unauthorized("missing")


def certificate_principals(
    entries: Iterable[tuple[str, Iterable[str], Iterable[str] | None]],
) -> dict[str, Principal]:
    """Principals for ``(subject, roles, models)`` entries of ``[[auth.client_certificates]]``."""
    return {
        subject: Principal(
            id=f"mtls:{subject}",
            name=subject,
            roles=frozenset(roles),
            models=frozenset(models) if models is not None else None,
        )
        for subject, roles, models in entries
    }


def authenticate(authorization: str | None, keys: KeyStore) -> Principal:
    """Resolve an ``Authorization`` header value against API keys only (see ``Authenticator``)."""
    return Authenticator(keys=keys).authenticate(authorization, None)


@functools.lru_cache(maxsize=4096)
def _principal(record: KeyRecord) -> Principal:
    """The principal of a (frozen, hashable) key record, built once per record version."""
    return Principal(
        id=record.id,
        name=record.name,
        roles=frozenset(record.roles),
        models=frozenset(record.models) if record.models is not None else None,
    )


def require_role(principal: Principal, role: str) -> None:
    """Raise 403 unless the principal holds ``role``."""
    if role not in principal.roles:
        raise RequestRejected(
            403, "forbidden", "Forbidden", detail=f"this credential lacks the '{role}' role"
        )
