"""Local development certificates: a small CA and a ``localhost`` leaf it signs.

``secureserve run --dev`` and ``secureserve certs dev`` call
:func:`ensure_dev_certificates` on the project's ``.secureserve/`` folder. It
writes, or reuses while they stay valid::

    .secureserve/          0700
    ├── ca.pem             the CA certificate a developer's client trusts (0644)
    ├── ca-key.pem         its EC P-256 key (0600)
    ├── cert.pem           leaf for DNS:localhost, IP:127.0.0.1, IP:::1 (0644)
    ├── key.pem            its EC P-256 key (0600)
    └── .lock              serialises concurrent callers (empty)

The CA carries name constraints (only ``localhost``, ``127.0.0.0/8`` and ``::1``),
so even a leaked CA key cannot mint a certificate a trusting client would accept
for any real host name. Every file is written to a temporary file and moved into
place with ``os.replace``; key files are created with mode 0600 from the start.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secureserve._time import utc
from secureserve._x509 import key_usage, tls_server
from secureserve.atomic import write_atomically
from secureserve.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = [
    "CA_LIFETIME",
    "LEAF_LIFETIME",
    "RENEW_BEFORE",
    "DevCertificates",
    "ensure_dev_certificates",
]

#: Validity of a new development CA.
CA_LIFETIME: Final = timedelta(days=365)
#: Validity of a new leaf (never past the CA's own expiry).
LEAF_LIFETIME: Final = timedelta(days=90)
#: Existing files are reused only while they stay valid at least this long.
RENEW_BEFORE: Final = timedelta(days=7)

_BACKDATE: Final = timedelta(minutes=5)  # tolerate a client clock slightly behind ours
_LEAF_NAMES: Final = frozenset(
    {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    }
)
_PERMITTED: Final = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
    x509.IPAddress(ipaddress.ip_network("::1/128")),
)
_ORGANIZATION: Final = "secureserve development"
_PRIVATE_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644
_MAX_PEM_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the development CA certificate and of the leaf certificate and key.

    Pass ``cert`` and ``key`` to the server; make clients trust ``ca_cert``
    (``curl --cacert``, ``httpx.Client(verify=...)``). The CA key stays in the same
    folder as ``ca-key.pem`` and is not exposed here.
    """

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class _Issuer:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def ensure_dev_certificates(directory: Path, *, now: datetime | None = None) -> DevCertificates:
    """Make or reuse the local CA and the ``localhost`` leaf under ``directory``.

    ``directory`` is created with mode 0700 (an existing one of ours is tightened to
    0700). The CA is reused when its files parse, its key matches, is private (no
    group or other permission bits) and it stays valid for at least
    :data:`RENEW_BEFORE`; otherwise the CA and the leaf are both regenerated. The
    leaf is reused under the same conditions and when it verifies against the CA and
    names exactly localhost, 127.0.0.1 and ::1; otherwise a new leaf is issued.
    ``now`` (default: the current time) is injectable for tests. Raises
    :class:`ConfigError` when ``directory`` is not a directory, belongs to another
    user, or cannot be created or written.
    """
    moment = utc(now)
    _prepare_directory(directory)
    paths = DevCertificates(
        ca_cert=directory / "ca.pem",
        cert=directory / "cert.pem",
        key=directory / "key.pem",
    )
    ca_key = directory / "ca-key.pem"
    try:
        with _locked(directory):
            _make_or_reuse(paths, ca_key, moment)
    except OSError as exc:
        raise ConfigError(
            f"development certificates could not be written in {directory} "
            f"({exc.strerror}); check free space and that you may write there."
        ) from exc
    return paths


def _make_or_reuse(paths: DevCertificates, ca_key: Path, moment: datetime) -> None:
    """Write what is missing or stale: a broken CA takes its leaf with it."""
    issuer = _reusable_ca(paths.ca_cert, ca_key, moment)
    leaf_ok = issuer is not None and _leaf_is_reusable(
        paths.cert, paths.key, issuer.certificate, moment
    )
    if issuer is None:
        issuer = _new_ca(moment)
        write_atomically(ca_key, _private_pem(issuer.key), mode=_PRIVATE_MODE)
        write_atomically(paths.ca_cert, _certificate_pem(issuer.certificate))
    if not leaf_ok:
        certificate, key = _new_leaf(issuer, moment)
        write_atomically(paths.key, _private_pem(key), mode=_PRIVATE_MODE)
        write_atomically(paths.cert, _certificate_pem(certificate))


def _prepare_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except FileExistsError:
        raise ConfigError(
            f"{directory} exists and is not a directory; move it away so the development "
            "certificates can be written there."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{directory} cannot be created ({exc.strerror}); run from a project folder "
            "you can write to."
        ) from exc
    if sys.platform == "win32":  # pragma: no cover - no POSIX owners or modes there
        return
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{directory} belongs to another user (uid {info.st_uid}); development keys "
            "must live in a folder only you own. Remove it or run as its owner."
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        directory.chmod(0o700)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise concurrent callers (several workers starting with ``--dev``)."""
    if sys.platform == "win32":  # pragma: no cover - os.replace keeps each file whole
        yield
        return
    import fcntl  # noqa: PLC0415 - POSIX only

    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_existing(path: Path, *, key: bool) -> bytes | None:
    """Bytes of an existing regular file, or None when it cannot be reused."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_PEM_BYTES:
            return None
        if key and sys.platform != "win32" and stat.S_IMODE(info.st_mode) & 0o077:
            return None  # a key others could read is replaced, not trusted
        return path.read_bytes()
    except OSError:
        return None


def _stays_valid(certificate: x509.Certificate, now: datetime) -> bool:
    return (
        certificate.not_valid_before_utc <= now
        and certificate.not_valid_after_utc - now >= RENEW_BEFORE
    )


def _same_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return certificate.public_key().public_bytes(der, spki) == key.public_key().public_bytes(
        der, spki
    )


def _load(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_bytes = _read_existing(cert_path, key=False)
    key_bytes = _read_existing(key_path, key=True)
    if cert_bytes is None or key_bytes is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(cert_bytes)
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(certificate, key):
        return None
    return certificate, key


def _reusable_ca(cert_path: Path, key_path: Path, now: datetime) -> _Issuer | None:
    loaded = _load(cert_path, key_path)
    if loaded is None:
        return None
    certificate, key = loaded
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        certificate.verify_directly_issued_by(certificate)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return None
    if not constraints.value.ca or not _stays_valid(certificate, now):
        return None
    return _Issuer(certificate, key)


def _leaf_is_reusable(
    cert_path: Path, key_path: Path, ca_certificate: x509.Certificate, now: datetime
) -> bool:
    loaded = _load(cert_path, key_path)
    if loaded is None:
        return False
    certificate, _ = loaded
    try:
        certificate.verify_directly_issued_by(ca_certificate)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return False
    return set(names.value) == _LEAF_NAMES and _stays_valid(certificate, now)


def _new_ca(now: datetime) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"secureserve local CA {now:%Y-%m-%d} {secrets.token_hex(4)}",
            ),
        ]
    )
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            x509.NameConstraints(permitted_subtrees=list(_PERMITTED), excluded_subtrees=None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(certificate, key)


def _new_leaf(
    issuer: _Issuer, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    issuer_ski = issuer.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    not_after = min(now + LEAF_LIFETIME, issuer.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                ]
            )
        )
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
    )
    certificate = (
        tls_server(builder)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return certificate, key


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)
