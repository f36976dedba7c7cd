"""Who may call, how often, and what is recorded: built once per app from the settings.

``build_access`` turns ``[auth]``, ``[limits]`` and ``[audit]`` into the objects the
middleware and routes use, and logs every explicit weakening at start-up (the
memory fallback for shared limits, writing on after an audit failure, an audit line
for every unauthenticated refusal, a digest key that lives only in this process).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from secureserve.audit import AuditLog, AuditUnavailable, load_digest_key
from secureserve.auth import Authenticator, certificate_principals
from secureserve.config import RATE_OFF, Settings
from secureserve.keys import KeyStore
from secureserve.ratelimit import RateLimiter
from secureserve.settings import ModelLimitsSettings
from secureserve.tokens import JWTVerifier

__all__ = ["Access", "build_access"]


@dataclass(frozen=True)
class Access:
    """The authentication, limits and audit objects of one app."""

    authenticator: Authenticator
    limiter: RateLimiter
    audit: AuditLog


def build_access(
    settings: Settings,
    *,
    logger: Any,
    keys: KeyStore | None = None,
    audit_key: bytes | None = None,
    model_limits: Mapping[str, ModelLimitsSettings] | None = None,
) -> Access:
    """Build the access objects; ``keys`` and ``audit_key`` override the configured ones.

    ``model_limits``: each served model's own ``limits`` table, by model name.
    """
    auth, limits, audit = settings.auth, settings.limits, settings.audit
    jwt = None
    if auth.jwks_file is not None and auth.jwt_issuer and auth.jwt_audience:
        jwt = JWTVerifier(
            jwks_file=auth.jwks_file,
            issuer=auth.jwt_issuer,
            audience=auth.jwt_audience,
            algorithms=auth.jwt_algorithms,
            roles_claim=auth.jwt_roles_claim,
            models_claim=auth.jwt_models_claim,
            leeway_s=auth.jwt_leeway_s,
        )
    if limits.on_storage_error == "memory":
        logger.warning(
            "insecure opt-in: [limits] on_storage_error = memory; if the shared storage is "
            "unreachable each process counts alone",
            setting="limits.on_storage_error",
        )
    if audit.on_write_error == "continue":
        logger.warning(
            "insecure opt-in: [audit] on_write_error = continue; requests are served even "
            "when the audit log cannot be written",
            setting="audit.on_write_error",
        )
    if audit.refusal_window_s == 0:
        logger.warning(
            "insecure opt-in: [audit] refusal_window_s = 0; every refusal of an "
            "unauthenticated caller is written at once, so anyone can grow the audit log",
            setting="audit.refusal_window_s",
        )
    if audit_key is None and audit.digest_key_file is not None:
        audit_key = load_digest_key(audit.digest_key_file)
    if audit_key is None:
        logger.warning(
            "audit digests use a key that lives only in this process: set [audit] "
            "digest_key_file to compare digests across restarts",
            setting="audit.digest_key_file",
        )
        audit_key = os.urandom(32)
    audit_log = AuditLog(
        audit.path,
        digest_key=audit_key,
        max_bytes=audit.max_bytes,
        max_files=audit.max_files,
        refusal_window_s=audit.refusal_window_s,
        on_write_error=audit.on_write_error,
        logger=logger,
    )

    def keys_changed(changes: list[tuple[str, str]]) -> None:
        try:
            for key_id, what in changes:
                audit_log.admin(action=f"key-{what}", trigger="keys-file", detail=f"key {key_id}")
        except AuditUnavailable:
            logger.exception("key change not audited", changes=changes)

    keystore = keys if keys is not None else KeyStore(auth.keys_file, on_change=keys_changed)
    certificates = certificate_principals(
        (entry.subject, entry.roles, entry.models) for entry in auth.client_certificates
    )
    limiter = RateLimiter(
        storage=limits.storage,
        per_principal=_rate(limits.per_principal),
        per_model=_rate(limits.per_model),
        auth_failures_per_ip=_rate(limits.auth_failures_per_ip),
        quota=_rate(limits.quota),
        explain_per_principal=_rate(limits.explain_per_principal),
        on_storage_error=limits.on_storage_error,
        storage_timeout_s=limits.storage_timeout_s,
        key_prefix=limits.key_prefix,
        logger=logger,
        model_limits={
            name: (_rate(own.per_principal), _rate(own.quota))
            for name, own in (model_limits or {}).items()
        },
    )
    return Access(
        authenticator=Authenticator(keys=keystore, jwt=jwt, certificates=certificates),
        limiter=limiter,
        audit=audit_log,
    )


def _rate(value: str | None) -> str | None:
    """A configured rate, or None when it is unset or switched ``off``."""
    return None if value is None or value == RATE_OFF else value
