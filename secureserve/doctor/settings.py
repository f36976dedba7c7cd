"""Doctor checks on the loaded settings and the files they name.

Each ``_check_*`` function looks at one section and yields findings. The checks
reuse the server's own validators (certificate files, key files, JWKS, the lock and
its signature), so the doctor and ``secureserve run`` never disagree about what is
refused; the doctor adds what the server accepts but is weaker than the defaults.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import stat
import tomllib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

from cryptography import x509

from secureserve._time import utc
from secureserve.audit import load_digest_key
from secureserve.config import CONFIG_FILENAME, RATE_OFF, Settings
from secureserve.doctor.findings import Finding, error, info, warning
from secureserve.encryption import load_key
from secureserve.errors import ArtifactError, ConfigError
from secureserve.keys import read_records
from secureserve.lockfile import LOCK_FILENAME, SIGNATURE_FILENAME
from secureserve.release import model_files, verify_project
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
#: How many file names a finding lists before "and N more".
_SAMPLE: Final = 10
#: Model files checked for write permission (a model folder, not a disk).
_MAX_CHECKED_FILES: Final = 10_000


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
    yield from _check_model(settings)
    yield from _check_writable(settings, config_file)
    yield from _check_server(settings)
    if settings.logging.level == "debug":
        yield warning(
            "logging-debug",
            "[logging] level",
            "debug logging is on: log lines carry request details and volume that "
            "production logs should not.",
            'set [logging] level = "info" (or SECURESERVE_LOGGING__LEVEL=info).',
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
            check_certificate_files(tls.cert, tls.key, now=now)
        except ConfigError as exc:
            yield error("tls-invalid", "[tls] cert, key", str(exc), _FIX_SEE_MESSAGE)
        else:
            yield from _check_expiry(tls.cert, now)
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


def _check_expiry(cert: Path, now: datetime) -> Iterator[Finding]:
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    left = certificate.not_valid_after_utc - now
    if left < EXPIRY_WARNING:
        yield warning(
            "tls-expires-soon",
            "[tls] cert",
            f"{cert} expires in {left.days} days "
            f"({certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC).",
            "renew the certificate and reload or restart the server.",
        )


def _check_auth(settings: Settings, now: datetime) -> Iterator[Finding]:
    auth = settings.auth
    usable = 0
    try:
        records = read_records(auth.keys_file)
    except ConfigError as exc:
        yield error("keys-file-invalid", "[auth] keys_file", str(exc), _FIX_SEE_MESSAGE)
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
            yield error("jwks-invalid", "[auth] jwks_file", str(exc), _FIX_SEE_MESSAGE)
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
            yield error("key-file-invalid", "[audit] digest_key_file", str(exc), _FIX_SEE_MESSAGE)


def _check_model(settings: Settings) -> Iterator[Finding]:
    model = settings.model
    if model.encryption_key_file is not None:
        if model.encryption_key_file.exists():
            try:
                load_key(key_file=model.encryption_key_file)
            except ConfigError as exc:
                yield error(
                    "key-file-invalid", "[model] encryption_key_file", str(exc), _FIX_SEE_MESSAGE
                )
        else:
            yield info(
                "key-file-missing",
                "[model] encryption_key_file",
                f"{model.encryption_key_file} does not exist here.",
                "make sure it is mounted where the server runs.",
            )
    if model.onnx_allowed_domains:
        yield warning(
            "onnx-custom-domains",
            "[model] onnx_allowed_domains",
            f"ONNX operators from {', '.join(model.onnx_allowed_domains)} are accepted: "
            "custom operators are native code outside onnxruntime's own.",
            "allow only the domains your models need, and only from libraries you trust.",
        )
    yield from _check_artifacts(settings)


def _check_artifacts(settings: Settings) -> Iterator[Finding]:
    model = settings.model
    subject = f"[model] dir {model.dir}"
    try:
        names = model_files(model.dir)
    except ConfigError as exc:
        yield error("model-dir-missing", subject, str(exc), "create it or fix [model] dir.")
        return
    lock = settings.project_dir / LOCK_FILENAME
    if not lock.exists():
        if names:
            yield error(
                "model-unlocked",
                LOCK_FILENAME,
                f"{len(names)} model file(s) but no {LOCK_FILENAME}: the server refuses "
                "every artifact that no lock lists.",
                "run `secureserve lock`, then sign the lock with `secureserve sign`.",
            )
        return
    if model.signing_public_key is None:
        yield warning(
            "model-unsigned",
            "[model] signing_public_key",
            f"{LOCK_FILENAME} is not checked against a signature: whoever can write the "
            "model folder and the lock can swap the model unnoticed.",
            "sign releases (`secureserve sign --private-key KEY`) and set "
            "signing_public_key to the public key.",
        )
    try:
        report = verify_project(settings, model.signing_public_key)
    except (ConfigError, ArtifactError) as exc:
        yield error("model-verify-failed", LOCK_FILENAME, str(exc), _FIX_RELOCK)
        return
    for problem in report.problems:
        yield error("model-verify-failed", LOCK_FILENAME, problem, _FIX_RELOCK)
    if report.unlisted:
        sample = ", ".join(report.unlisted[:_SAMPLE])
        more = (
            f" and {len(report.unlisted) - _SAMPLE} more" if len(report.unlisted) > _SAMPLE else ""
        )
        yield warning(
            "model-unlisted",
            subject,
            f"not in {LOCK_FILENAME}, so never loaded: {sample}{more}.",
            "remove them, or lock and sign again if they belong to the model.",
        )


def _check_writable(settings: Settings, config_file: Path | None) -> Iterator[Finding]:
    """What the server runs and trusts must not be writable by other users, or by it."""
    shared: list[Path] = []
    writable = False
    for path in _served_paths(settings, config_file):
        try:
            status = path.stat()  # a link's target is what the server reads
        except OSError:
            continue
        if _writable_by_others(status):
            shared.append(path)
        writable = writable or os.access(path, os.W_OK)
    if shared:
        sample = ", ".join(str(p) for p in shared[:_SAMPLE])
        more = f" and {len(shared) - _SAMPLE} more" if len(shared) > _SAMPLE else ""
        yield error(
            "files-shared-writable",
            str(settings.project_dir),
            f"writable by other users: {sample}{more}. Whoever can write the handler, the "
            "settings, the model files, the lock or the keys that check it controls what "
            "is served.",
            "remove group and other write permission (`chmod go-w`).",
        )
    elif writable:
        yield info(
            "files-writable",
            str(settings.project_dir),
            f"the handler, settings and model files are writable by this user (uid "
            f"{os.getuid()}); if the server runs as this user, a compromised server can "
            "change what it serves.",
            "in production let another user own them (the generated Dockerfile copies "
            "them as root and runs the server as uid 10001).",
        )


def _writable_by_others(status: os.stat_result) -> bool:
    """Other users may write it: world-writable, or group-writable by a shared group.

    Group write is harmless in a user private group (the owner's primary group, with no
    other members), which is what a umask of 002 gives on many systems.
    """
    mode = stat.S_IMODE(status.st_mode)
    if mode & stat.S_IWOTH:
        return True
    if not mode & stat.S_IWGRP:
        return False
    try:
        owner = pwd.getpwuid(status.st_uid)
        group = grp.getgrgid(status.st_gid)
    except KeyError:
        return True  # an unknown owner or group: assume shared
    return not (owner.pw_gid == status.st_gid and not group.gr_mem)


def _served_paths(settings: Settings, config_file: Path | None) -> list[Path]:
    """The project folder, handler code, settings, lock, signature, public key, models."""
    project = settings.project_dir
    paths = [project, project / "__pycache__", project / LOCK_FILENAME]
    paths += [project / SIGNATURE_FILENAME]
    paths.append(config_file if config_file is not None else project / CONFIG_FILENAME)
    if settings.model.handler:
        folder = project
        parts = settings.model.handler.partition(":")[0].split(".")
        for part in parts[:-1]:  # packages: each folder, __init__.py and cache
            folder /= part
            paths += [folder, folder / "__init__.py", folder / "__pycache__"]
        paths += [
            folder / f"{parts[-1]}.py",
            folder / parts[-1],
            folder / parts[-1] / "__init__.py",
        ]
    if settings.model.signing_public_key is not None:
        paths.append(settings.model.signing_public_key)
    paths.append(settings.model.dir)
    paths.extend(_model_paths(settings.model.dir))
    return paths


def _model_paths(model_dir: Path) -> Iterator[Path]:
    """Folders and files under the model folder, at most ``_MAX_CHECKED_FILES``."""
    count = 0
    for root, dirs, files in os.walk(model_dir):
        for name in (*dirs, *files):
            count += 1
            if count > _MAX_CHECKED_FILES:
                return
            yield Path(root) / name


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
        with path.open("rb") as handle:
            table = tomllib.load(handle).get(section, {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return table.get(key) if isinstance(table, dict) else None


_FIX_SEE_MESSAGE: Final = "do what the message says; the server refuses this too."
_FIX_RELOCK: Final = (
    "if the change is intended, run `secureserve lock` and `secureserve sign` where "
    "releases are made; otherwise restore the released files."
)
