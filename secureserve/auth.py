"""Who is calling: bearer credentials to a ``Principal``, and role checks.

Deny by default: every route except ``/healthz`` and ``/readyz`` needs a
principal. A client learns only *that* authentication failed ("no bearer token"
or "invalid credentials"), never which check failed; the reason goes to the log.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from secureserve.errors import RequestRejected

if TYPE_CHECKING:
    from secureserve.keys import KeyRecord, KeyStore

__all__ = ["Principal", "authenticate", "require_role"]

_BEARER: Final = "bearer "
_MAX_CREDENTIAL_CHARS: Final = 4096
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


def authenticate(authorization: str | None, keys: KeyStore) -> Principal:
    """Resolve an ``Authorization`` header value or raise a 401 ``RequestRejected``."""
    if not authorization:
        raise unauthorized("missing")
    if len(authorization) > _MAX_CREDENTIAL_CHARS or not authorization[:7].lower() == _BEARER:
        raise unauthorized("not-bearer")
    record = keys.verify(authorization[7:].strip())
    if record is None:
        raise unauthorized(
            "key-file-invalid" if keys.last_error else "unknown-revoked-or-expired-key"
        )
    return _principal(record)


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
