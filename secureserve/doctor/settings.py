"""Doctor checks on the loaded settings and the files they name.

Each ``_check_*`` function looks at one section and yields findings. The checks
reuse the server's own validators (certificate files, key files, JWKS), so the doctor
and ``secureserve run`` never disagree about what is refused; the doctor adds what the
server accepts but is weaker than the defaults. The model folder, its lock and the
files the server must not be able to change are checked in :mod:`.model`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

from cryptography import x509

from secureserve._time import utc
from secureserve.audit import load_digest_key
from secureserve.config import CONFIG_FILENAME, RATE_OFF, Settings, read_config_file
from secureserve.doctor import model
from secureserve.doctor.findings import FIX_SEE_MESSAGE, Finding, error, info, warning
from secureserve.errors import ConfigError
from secureserve.keys import read_records
from secureserve.tls import check_certificate_files
from secureserve.tokens import JWTVerifier

__all__ = ["check", "has_password"]

#: A certificate that expires sooner than this is a warning.
EXPIRY_WARNING: Final = timedelta(days=30)
#: Bodies above this are allowed but worth a second look (the default is 1 MiB).
LARGE_BODY_BYTES: Final = 64 * 1024 * 1024
#: JWT clock leeway above this widens the window a stolen, expired token works in.
LARGE_LEEWAY_S: Final = 60
#: Trusted proxy networks wider than these let many hosts set the client address.
_WIDE_PREFIX: Final = {4: 16, 6: 48}


def check(
    settings: Settings,
    *,
    config_file: Path | None,
    now: datetime | None,
) -> Iterator[Finding]:
    """Every settings finding for ``settings``, section by section."""
    yield from _check_tls(settings, utc(now))
    yield from _check_auth(settings, utc(now))
    yield from _check_limits(settings, config_file)
    yield from _check_audit(settings)
    yield from model.check(settings, config_file=config_file)
    yield from _check_server(settings)
    if settings.logging.level == "debug":
        yield warning(
            "logging-debug",
            "[logging] level",
            "debug logging is on: log lines carry request details and volume that "
            "production logs should not.",
            'set [logging] level = "info" (or SECURESERVE_LOGGING__LEVEL=info).',
        )
    if settings.logging.format == "console":
        yield warning(
            "logging-console",
            "[logging] format",
            "logs are written for a terminal: a log collector cannot parse their lines into "
            "fields (request id, key id, reason), and every access line goes through the "
            "console renderer instead of being written in one step.",
            "remove [logging] format (JSON under `secureserve run`, console under --dev) or "
            'set it to "json".',
        )


def _check_tls(settings: Settings, now: datetime) -> Iterator[Finding]:
    tls = settings.tls
    if tls.cert is None or tls.key is None:
        yield info(
            "tls-not-configured",
            "[tls] cert, key",
            "no certificate is configured: `secureserve run` refuses to start without one "
            "(only `secureserve run --dev` makes its own).",
            "set [tls] cert and key, or SECURESERVE_TLS__CERT and SECURESERVE_TLS__KEY "
            "where the server runs (the generated Kubernetes manifests do).",
        )
    elif not tls.cert.exists() or not tls.key.exists():
        missing = tls.cert if not tls.cert.exists() else tls.key
        yield info(
            "tls-file-missing",
            "[tls] cert, key",
            f"{missing} does not exist here, so the certificate could not be checked.",
            "run the doctor where the certificate is mounted, or point [tls] at the files.",
        )
    else:
        try:
            certificate = check_certificate_files(tls.cert, tls.key, now=now)
        except ConfigError as exc:
            yield error("tls-invalid", "[tls] cert, key", str(exc), FIX_SEE_MESSAGE)
        else:
            yield from _check_expiry(tls.cert, certificate, now)
    if tls.client_ca is not None and not tls.client_ca.is_file():
        yield info(
            "tls-file-missing",
            "[tls] client_ca",
            f"{tls.client_ca} does not exist here; the server refuses to start without it.",
            "run the doctor where the CA bundle is mounted, or fix [tls] client_ca.",
        )
    if tls.min_version == "1.2":
        yield info(
            "tls-1.2-accepted",
            "[tls] min_version",
            "TLS 1.2 is accepted (with forward-secret AEAD ciphers only).",
            'set min_version = "1.3" once every client supports it.',
        )


def _check_expiry(cert: Path, certificate: x509.Certificate, now: datetime) -> Iterator[Finding]:
    left = certificate.not_valid_after_utc - now
    if left < EXPIRY_WARNING:
        yield warning(
            "tls-expires-soon",
            "[tls] cert",
            f"{cert} expires in {left.days} days "
            f"({certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC).",
            "renew the certificate and restart the server (a reload swaps model files only).",
        )


def _check_auth(settings: Settings, now: datetime) -> Iterator[Finding]:
    auth = settings.auth
    usable = 0
    try:
        records = read_records(auth.keys_file)
    except ConfigError as exc:
        yield error("keys-file-invalid", "[auth] keys_file", str(exc), FIX_SEE_MESSAGE)
        records = []
    for record in records:
        if not record.active(now):
            continue
        usable += 1
        if record.dev:
            yield warning(
                "keys-dev-key",
                "[auth] keys_file",
                f"key {record.id} was minted by `secureserve run --dev` and is still active "
                f"in {auth.keys_file}.",
                f"revoke it (`secureserve keys revoke {record.id}`) unless this is a "
                "development machine.",
            )
    if auth.jwks_file is not None and auth.jwt_issuer and auth.jwt_audience:
        usable += 1
        try:
            JWTVerifier(
                jwks_file=auth.jwks_file,
                issuer=auth.jwt_issuer,
                audience=auth.jwt_audience,
                algorithms=auth.jwt_algorithms,
                leeway_s=auth.jwt_leeway_s,
            )
        except ConfigError as exc:
            yield error("jwks-invalid", "[auth] jwks_file", str(exc), FIX_SEE_MESSAGE)
        if auth.jwt_leeway_s > LARGE_LEEWAY_S:
            yield warning(
                "jwt-leeway-large",
                "[auth] jwt_leeway_s",
                f"expired JWTs are accepted for {auth.jwt_leeway_s} s after their exp.",
                f"keep jwt_leeway_s at {LARGE_LEEWAY_S} or less (the default is 30); "
                "fix clock drift with NTP instead.",
            )
    usable += len(auth.client_certificates)
    if usable == 0:
        yield info(
            "auth-no-credentials",
            "[auth]",
            f"no active API key in {auth.keys_file}, no JWT issuer and no mapped client "
            "certificate: every request will be refused with 401.",
            "create a key with `secureserve keys create --role predict --name NAME` where "
            "the server runs (`secureserve run --dev` mints one for development).",
        )


def _check_limits(settings: Settings, config_file: Path | None) -> Iterator[Finding]:
    limits = settings.limits
    for key, what in (
        ("per_principal", "one caller can send any number of requests (model extraction)"),
        ("auth_failures_per_ip", "guessing credentials is not slowed down"),
        ("quota", "one caller's daily volume is unbounded"),
    ):
        value = getattr(limits, key)
        if value is None or value == RATE_OFF:
            yield warning(
                "limit-off",
                f"[limits] {key}",
                f"this limit is switched off: {what}.",
                f"set a rate such as the default (`secureserve new` writes one), or remove "
                f"the {key} line.",
            )
    if limits.on_storage_error == "memory":
        yield warning(
            "limits-storage-fallback",
            "[limits] on_storage_error",
            "when the shared storage is unreachable each replica counts alone, so every "
            "limit is multiplied by the number of replicas.",
            'set on_storage_error = "refuse" (the default).',
        )
    written = _raw_setting(settings, config_file, "limits", "storage")
    if isinstance(written, str) and has_password(written):
        yield error(
            "secret-in-config",
            "[limits] storage",
            "the storage URL in the settings file holds a password, which then travels "
            "with the file (version control, images, support tickets).",
            "remove it from the file and pass the URL as SECURESERVE_LIMITS__STORAGE from "
            "a secret store (a Kubernetes secretKeyRef).",
        )


def _check_audit(settings: Settings) -> Iterator[Finding]:
    audit = settings.audit
    if audit.on_write_error == "continue":
        yield warning(
            "audit-continue",
            "[audit] on_write_error",
            "requests are served even when the audit log cannot be written, so they can "
            "go unrecorded.",
            'set on_write_error = "refuse" (the default).',
        )
    key_file = audit.digest_key_file
    if key_file is None:
        yield warning(
            "audit-digest-key-unset",
            "[audit] digest_key_file",
            "audit digests use a key that lives only in the process: after a restart (or "
            "across replicas) the same input no longer has the same digest.",
            "create one with `secureserve audit key new secrets/audit-digest.key` and set "
            "digest_key_file.",
        )
    elif not key_file.exists():
        yield info(
            "key-file-missing",
            "[audit] digest_key_file",
            f"{key_file} does not exist here (it is git-ignored); the server refuses to "
            "start without it.",
            "make sure it is mounted where the server runs, or create it with "
            f"`secureserve audit key new {key_file}`.",
        )
    else:
        try:
            load_digest_key(key_file)
        except ConfigError as exc:
            yield error("key-file-invalid", "[audit] digest_key_file", str(exc), FIX_SEE_MESSAGE)


def _check_server(settings: Settings) -> Iterator[Finding]:
    server = settings.server
    if server.max_body_bytes > LARGE_BODY_BYTES:
        yield warning(
            "body-limit-large",
            "[server] max_body_bytes",
            f"requests of up to {server.max_body_bytes} bytes are read into memory.",
            "lower it to what one request of your model really needs (default: 1 MiB).",
        )
    for proxy in server.trusted_proxies:
        network = ipaddress.ip_network(proxy, strict=False)
        if network.prefixlen < _WIDE_PREFIX[network.version]:
            yield warning(
                "trusted-proxies-wide",
                "[server] trusted_proxies",
                f"every host in {network} may set the client address (X-Forwarded-For), "
                "which the per-address limit on failed logins relies on.",
                "list only your load balancers' addresses.",
            )


def has_password(url: str) -> bool:
    """Whether a storage URL carries a password, in its user part or its query."""
    try:
        parts = urlsplit(url)
        in_userinfo = bool(parts.password)
    except ValueError:  # malformed: judge by the text alone
        return "@" in url or "password" in url.lower()
    return in_userinfo or any(key.lower() == "password" for key in parse_qs(parts.query))


def _raw_setting(settings: Settings, config_file: Path | None, section: str, key: str) -> object:
    """The value written in the settings file itself (not the environment), if any."""
    path = config_file or settings.project_dir / CONFIG_FILENAME
    if not path.is_absolute():
        path = settings.project_dir / path
    try:
        table = read_config_file(path).get(section, {})
    except ConfigError:
        return None
    return table.get(key)
