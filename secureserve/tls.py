"""Server-side TLS: the one ``ssl.SSLContext`` secureserve serves with.

There is no plaintext listener, so this module decides what every connection
gets: TLS 1.2 or newer, Mozilla's "intermediate" profile (guidelines v5.7),
no compression, no renegotiation, and optionally client certificates checked
against ``[tls] client_ca``.

:func:`check_certificate_files` refuses, before the server binds, every
certificate or key that would fail at the first handshake or that is unsafe to
serve with (an expired certificate, a key others can read, a weak key). Each
refusal is a :class:`~secureserve.errors.ConfigError` naming the file and the
fix. ``now`` is injectable so expiry is testable.
"""

from __future__ import annotations

import os
import ssl
import stat
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secureserve._time import utc
from secureserve.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )

__all__ = [
    "INTERMEDIATE_CIPHERS",
    "INTERMEDIATE_GROUPS",
    "MIN_RSA_BITS",
    "check_certificate_files",
    "peer_certificate_subject",
    "server_context",
]

#: Mozilla "intermediate" TLS 1.2 cipher suites (guidelines v5.7), in Mozilla's order:
#: ECDHE key exchange (forward secrecy) with AEAD ciphers only. No CBC suite (Lucky13,
#: padding oracles), no static-RSA key exchange (no forward secrecy, ROBOT). The three
#: optional ``DHE-RSA-*`` suites are left out on purpose: every client that can do DHE
#: with AES-GCM or ChaCha20 also does ECDHE, and leaving them out spares us finite-field
#: DH parameters. TLS 1.3 suites are not set here; OpenSSL's defaults (AES-GCM and
#: ChaCha20-Poly1305) are exactly Mozilla's list.
INTERMEDIATE_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-CHACHA20-POLY1305"
)

#: Mozilla "intermediate" key-exchange groups, used where Python can set a list (3.15+).
INTERMEDIATE_GROUPS: Final = "X25519:prime256v1:secp384r1"

#: The one group set where Python can only set one (3.11 to 3.14); see ``_restrict_groups``.
_FALLBACK_GROUP: Final = "prime256v1"

#: OpenSSL security level 2 (112-bit): what Python's own default cipher string sets and
#: a bare ``set_ciphers`` would drop back to the library default (level 1). It refuses
#: SHA-1 signatures and RSA/DH under 2048 bits, also in client certificate chains.
_SECURITY_LEVEL: Final = "@SECLEVEL=2"

#: Smallest RSA modulus accepted for the server key (Mozilla intermediate, NIST SP 800-131A).
MIN_RSA_BITS: Final = 2048

_SPECIAL: Final = frozenset(',+"\\<>;=')
_EC_CURVES: Final = frozenset({"secp256r1", "secp384r1"})
_MAX_PEM_BYTES: Final = 1024 * 1024
_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def check_certificate_files(
    cert: Path,
    key: Path,
    *,
    now: datetime | None = None,
) -> x509.Certificate:
    """Refuse a certificate and key secureserve should not serve with; return the leaf.

    ``cert`` is a PEM file whose first certificate is the server's (any following
    ones are its intermediates); ``key`` is the matching unencrypted PEM private key.
    Raises :class:`ConfigError` when either file is missing, unreadable or not PEM of
    the right kind; when the key does not match the certificate; when the certificate
    is expired or not yet valid at ``now`` (default: the current time); when the key
    file can be read by others or written by anyone but its owner (group-read stays
    allowed for Kubernetes secret mounts); or when the key is RSA under 2048 bits, an
    elliptic curve other than P-256/P-384, or another type. (Certificates signed
    with SHA-1 or MD5 are refused by OpenSSL at security level 2 when the context is
    built.)
    """
    moment = utc(now)
    certificate = _load_leaf_certificate(cert)
    key_bytes = _read_file(key, "[tls] key", what="private key", mode_check=True)
    private_key = _load_private_key(key, key_bytes)
    _check_key_strength(key, private_key.public_key())
    if _spki(certificate.public_key()) != _spki(private_key.public_key()):
        if _later_in_chain(cert, private_key):
            raise ConfigError(
                f"[tls] cert {cert} starts with another certificate than the one [tls] key "
                f"{key} belongs to: put the server's own certificate first, then the "
                "intermediates (not the root)."
            )
        raise ConfigError(
            f"[tls] key {key} does not belong to the certificate {cert}: their public keys "
            "differ. Point [tls] key at the private key the certificate was issued for "
            "(or issue a new certificate for this key)."
        )
    _check_validity(cert, certificate, moment)
    return certificate


def _later_in_chain(cert: Path, private_key: Any) -> bool:
    """Whether the key belongs to a certificate of ``cert`` other than the first."""
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except (OSError, ValueError):
        return False
    mine = _spki(private_key.public_key())
    return any(_spki(c.public_key()) == mine for c in chain[1:])


def server_context(
    *,
    cert: Path,
    key: Path,
    min_version: Literal["1.2", "1.3"] = "1.2",
    client_ca: Path | None = None,
    now: datetime | None = None,
) -> ssl.SSLContext:
    """Build the server's TLS context (Mozilla intermediate, optionally mutual TLS).

    The files are checked first with :func:`check_certificate_files`. The context
    accepts TLS 1.2 and 1.3 (only 1.3 with ``min_version="1.3"``), the AEAD suites of
    :data:`INTERMEDIATE_CIPHERS`, the groups of :data:`INTERMEDIATE_GROUPS` (or only
    P-256 on Python before 3.15), no compression and no renegotiation. The client's
    cipher order wins, as Mozilla recommends when every offered suite is strong, so
    clients without AES hardware can pick ChaCha20.

    With ``client_ca`` the handshake asks for a client certificate and verifies any
    certificate sent against that CA bundle (a bad or foreign one aborts the
    handshake), but lets a client without a certificate finish the handshake
    (``CERT_OPTIONAL``). This is deliberate: ``/healthz`` and ``/readyz`` must answer
    probes that hold no certificate, and a handshake cannot know the route it will
    carry. The app refuses every other route unless the connection carries a verified
    certificate, so CERT_OPTIONAL is safe as long as that check stays fail-closed:
    "no certificate" and "verified certificate" are the only two states a completed
    handshake can be in, and a resumed session keeps the certificate (or its absence)
    of the session it resumes. ``CERT_REQUIRED`` would only be safer for a deployment
    without unauthenticated probes.
    """
    check_certificate_files(cert, key, now=now)
    version = _VERSIONS.get(min_version)
    if version is None:
        raise ConfigError(
            f'[tls] min_version {min_version!r} is not supported; use "1.2" or "1.3".'
        )
    if client_ca is not None:
        _check_client_ca(client_ca)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = version
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(f"{INTERMEDIATE_CIPHERS}:{_SECURITY_LEVEL}")
    _restrict_groups(context)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"[tls] cert {cert} and key {key} passed secureserve's checks but OpenSSL "
            f"refused them ({exc}). Every certificate in {cert} must be signed with "
            "SHA-256 or better and carry an RSA 2048+ or EC key, leaf first, then its "
            "intermediates."
        ) from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"[tls] client_ca {client_ca} could not be loaded ({exc}); it must be a "
                "PEM bundle of the CA certificate(s) that issue client certificates."
            ) from exc
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def peer_certificate_subject(peercert: Mapping[str, Any] | None) -> str | None:
    r"""Render the subject of ``SSLSocket.getpeercert()`` as ``"CN=alice,O=Example"``.

    Returns None when there is no verified client certificate: ``getpeercert()``
    returns None or an empty dict in that case (CERT_OPTIONAL without a certificate).
    Attribute names are OpenSSL's long names, except the common short ones (CN, O,
    OU, C, ST, L). Values are escaped as RFC 4514 says (``\,``, ``\+``, ``\=`` ...)
    and the attributes of one multi-valued RDN are joined with ``+``, so two different
    subjects never render the same: a CN of ``"alice,O=Example"`` cannot pass for
    ``CN=alice`` in ``O=Example``; the string is an identity (client_certificates).
    """
    if not peercert:
        return None
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "stateOrProvinceName": "ST",
        "localityName": "L",
    }
    rdns = [
        "+".join(f"{short.get(name, name)}={_escape(value)}" for name, value in rdn)
        for rdn in peercert.get("subject", ())
    ]
    return ",".join(rdns) or None


def _escape(value: str) -> str:
    """RFC 4514 escaping of an attribute value."""
    escaped = "".join(f"\\{c}" if c in _SPECIAL else c for c in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def _restrict_groups(context: ssl.SSLContext) -> None:
    """Limit key exchange to Mozilla-intermediate groups.

    OpenSSL 3's default server list also accepts X448, secp521r1 and the ffdhe
    groups, which a Mozilla-intermediate sslyze scan reports (uvicorn's defaults
    fail it for that reason). Python 3.15 adds ``SSLContext.set_groups`` and there
    we set the exact list. Before it, the only knob is ``set_ecdh_curve(name)``,
    which with OpenSSL 3 calls ``SSL_CTX_set1_groups`` with that one group: it
    *replaces* the whole list, for TLS 1.2 and 1.3 alike, and a second call replaces
    it again. So we must pick one group, and pick P-256: RFC 8446 makes it mandatory
    for every TLS 1.3 client, every TLS 1.2 ECDHE client has it, and a TLS 1.2 client
    can only accept an ECDSA P-256 certificate if it offers P-256 anyway. X25519
    alone would lock out FIPS-mode and older clients (Java 8, Windows before 10).
    The cost: a TLS 1.3 client whose first key share is X25519 (OpenSSL, Chrome) is
    sent a HelloRetryRequest, one extra round trip on a full handshake only.
    Reaching ``SSL_CTX_set1_groups_list`` through ctypes would avoid that but
    depends on CPython's private object layout; we do not poke raw pointers in a
    security library.
    """
    set_groups: Callable[[str], None] | None = getattr(context, "set_groups", None)
    if set_groups is not None:
        set_groups(INTERMEDIATE_GROUPS)
    else:
        context.set_ecdh_curve(_FALLBACK_GROUP)


def _read_file(path: Path, setting: str, *, what: str, mode_check: bool = False) -> bytes:
    """Read a small regular file, refusing anything else with a ConfigError."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"{setting} {path} does not exist; point {setting} at the PEM {what} file "
            "(for local development `secureserve certs dev` writes one)."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{setting} {path} cannot be read ({exc.strerror}); check the path and that "
            "the server's user may read it."
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"{setting} {path} is not a regular file; point {setting} at the PEM {what} file."
        )
    if mode_check:
        _check_key_mode(path, info.st_mode)
    if info.st_size > _MAX_PEM_BYTES:
        raise ConfigError(
            f"{setting} {path} is larger than {_MAX_PEM_BYTES} bytes, too large for a PEM "
            f"{what}; point {setting} at the right file."
        )
    try:
        with path.open("rb") as handle:
            return handle.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{setting} {path} cannot be read ({exc.strerror}); give the server's user "
            "read access to it (and nobody else, for a key)."
        ) from exc


def _check_key_mode(path: Path, mode: int) -> None:
    if os.name == "nt":  # pragma: no cover - POSIX permission bits mean nothing there
        return
    permissions = stat.S_IMODE(mode)
    if permissions & stat.S_IROTH:
        raise ConfigError(
            f"[tls] key {path} is readable by every user on this machine (mode "
            f"{permissions:04o}); restrict it with `chmod 600 {path}` (or 640 with a "
            "dedicated group, as Kubernetes secret mounts use)."
        )
    if permissions & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"[tls] key {path} is writable by users other than its owner (mode "
            f"{permissions:04o}); anyone who can replace the key can impersonate the "
            f"server. Restrict it with `chmod 600 {path}`."
        )


def _load_leaf_certificate(cert: Path) -> x509.Certificate:
    data = _read_file(cert, "[tls] cert", what="certificate")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        hint = (
            " It holds a private key: [tls] cert and [tls] key may be swapped."
            if b"PRIVATE KEY-----" in data
            else ""
        )
        raise ConfigError(
            f"[tls] cert {cert} is not a PEM certificate (no 'BEGIN CERTIFICATE' block).{hint} "
            "Point [tls] cert at the server certificate in PEM form (convert DER with "
            "`openssl x509 -inform der -in CERT -out cert.pem`)."
        )
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise ConfigError(
            f"[tls] cert {cert} holds a PEM certificate block that cannot be parsed; "
            "replace the file with the certificate as issued, leaf first."
        ) from exc


def _load_private_key(key: Path, data: bytes) -> PrivateKeyTypes:
    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(
            f"[tls] key {key} is not a PEM private key (no 'BEGIN ... PRIVATE KEY' block); "
            "point [tls] key at the certificate's private key in PEM form."
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise ConfigError(
            f"[tls] key {key} is encrypted with a passphrase, which the server cannot "
            f"ask for; store it decrypted with mode 600 (`openssl pkey -in {key} "
            "-out key.pem`) and protect the file instead."
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"[tls] key {key} holds a PEM private key block that cannot be parsed; "
            "replace it with the certificate's private key."
        ) from exc


def _check_key_strength(key: Path, public_key: PublicKeyTypes) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"[tls] key {key} is a {public_key.key_size}-bit RSA key; at least "
                f"{MIN_RSA_BITS} bits are required. Issue a new certificate with an "
                "EC P-256 or RSA 2048+ key."
            )
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _EC_CURVES:
            raise ConfigError(
                f"[tls] key {key} uses the curve {public_key.curve.name}, which many "
                "clients do not accept for certificates; issue a new certificate with an "
                "EC P-256 or P-384 key (or RSA 2048+)."
            )
        return
    raise ConfigError(
        f"[tls] key {key} is a {type(public_key).__name__.removeprefix('_')}, not an RSA "
        "or EC key; browsers and most TLS clients accept only those for server "
        "certificates. Issue a new certificate with an EC P-256 or RSA 2048+ key."
    )


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_validity(cert: Path, certificate: x509.Certificate, now: datetime) -> None:
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now < not_before:
        raise ConfigError(
            f"[tls] cert {cert} is not valid yet (valid from {not_before:%Y-%m-%d %H:%M} "
            "UTC); check the system clock or use a certificate that is valid now."
        )
    if now >= not_after:
        raise ConfigError(
            f"[tls] cert {cert} expired on {not_after:%Y-%m-%d %H:%M} UTC; renew the "
            "certificate (for local development, `secureserve certs dev` makes a new one)."
        )


def _check_client_ca(client_ca: Path) -> None:
    data = _read_file(client_ca, "[tls] client_ca", what="CA certificate bundle")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(
            f"[tls] client_ca {client_ca} is not a PEM certificate bundle (no 'BEGIN "
            "CERTIFICATE' block); point it at the PEM certificate(s) of the CA that "
            "issues client certificates."
        )
