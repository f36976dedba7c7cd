"""Certificate signing requests for a production certificate from a company CA.

``secureserve certs request --name HOST`` calls :func:`request_certificate`, which
makes an EC P-256 key and a PKCS #10 request for it and writes, in ``out_dir``::

    HOST.key    the private key, PKCS #8 PEM, unencrypted, mode 0600: it never leaves
    HOST.csr    the request to hand to the CA (PEM, mode 0644)

The request names ``HOST`` as its common name and first subject alternative name,
then each extra name, a DNS name or an IP address; it asks for a TLS server
certificate (``serverAuth``, digital signatures only, not a CA). A CA decides what it
actually issues; clients check the alternative names, never the common name.

Names are checked before anything is written, and each refusal is a
:class:`~secureserve.errors.ConfigError` that names the value and the fix. Neither
file ever replaces an existing one, and each appears whole or not at all: it is
written to a temporary file beside it, synced, then linked to its name (a link, unlike
a rename, fails when the name exists). When the second file cannot be written the
first is removed again, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secureserve._x509 import tls_server
from secureserve.errors import ConfigError
from secureserve.secretfiles import fsync_folder

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = ["MAX_NAMES", "CertificateRequest", "request_certificate", "subject_names"]

#: The most names one request may carry (public CAs stop at 100 as well).
MAX_NAMES: Final = 100

_KEY_MODE: Final = 0o600
_CSR_MODE: Final = 0o644
_MAX_DNS_LENGTH: Final = 253  # RFC 1035, without the trailing dot
_MAX_LABEL_LENGTH: Final = 63
_MAX_COMMON_NAME: Final = 64  # X.520 ub-common-name
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_NEW: Final = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
)


@dataclass(frozen=True)
class CertificateRequest:
    """What :func:`request_certificate` wrote: the key, the request, the names it asks for.

    ``names`` are in the request's order, as ``DNS:name`` or ``IP:address``.
    """

    key: Path
    csr: Path
    names: tuple[str, ...]


def request_certificate(
    name: str, *, sans: Iterable[str] = (), out_dir: Path
) -> CertificateRequest:
    """Write a new P-256 key and a signing request for ``name`` and ``sans`` in ``out_dir``.

    ``name`` becomes the common name and the first alternative name; each of ``sans``
    is a DNS name (``*.`` allowed as the whole first label) or an IP address.
    Duplicates are dropped. The files are ``<name>.key`` and ``<name>.csr`` (a leading
    ``*`` spelled ``_wildcard``, ``:`` of an IPv6 address spelled ``-``). ``out_dir``
    is created (mode 0700) when missing. Raises :class:`ConfigError` for a bad name,
    when either file exists already, or when they cannot be written.
    """
    general_names = subject_names(name, sans)
    common_name = general_names[0].value
    stem = str(common_name).replace("*", "_wildcard").replace(":", "-")
    key_path, csr_path = out_dir / f"{stem}.key", out_dir / f"{stem}.csr"
    for path in (key_path, csr_path):
        if os.path.lexists(path):
            raise ConfigError(
                f"{path} already exists; secureserve never overwrites a key or its request. "
                "Move the old files away, or write the new ones elsewhere with --out-dir."
            )
    key = ec.generate_private_key(ec.SECP256R1())
    request = _build(str(common_name), general_names, key)
    _make_folder(out_dir)
    _publish(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        _KEY_MODE,
    )
    try:
        _publish(csr_path, request.public_bytes(serialization.Encoding.PEM), _CSR_MODE)
    except BaseException:
        key_path.unlink(missing_ok=True)  # a key without its request is of no use
        raise
    fsync_folder(out_dir)
    return CertificateRequest(
        key=key_path, csr=csr_path, names=tuple(_label(n) for n in general_names)
    )


def subject_names(name: str, sans: Iterable[str] = ()) -> list[x509.GeneralName]:
    """``name`` then ``sans`` as checked alternative names, without duplicates.

    Raises :class:`ConfigError` naming the first bad value and how to write it.
    """
    names: list[x509.GeneralName] = []
    for option, value in [("--name", name), *(("--san", san) for san in sans)]:
        general_name = _general_name(option, value)
        if general_name not in names:
            names.append(general_name)
    if len(name) > _MAX_COMMON_NAME:
        raise ConfigError(
            f"--name {name!r} is {len(name)} characters; a certificate's common name holds "
            f"at most {_MAX_COMMON_NAME}. Give a shorter name as --name and the long one "
            "with --san."
        )
    if len(names) > MAX_NAMES:
        raise ConfigError(
            f"{len(names)} names in one request; CAs accept at most {MAX_NAMES}. Split them "
            "over several certificates."
        )
    return names


def _general_name(option: str, value: str) -> x509.GeneralName:
    """One name as a DNS name or an IP address, or a ConfigError saying what is wrong."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ConfigError(
                f"{option} {value!r}: an address with a zone (%{address.scope_id}) cannot be "
                f"in a certificate; give it without the zone, e.g. {option} "
                f"{str(address).partition('%')[0]}."
            )
        return x509.IPAddress(address)
    return x509.DNSName(_dns_name(option, value))


def _dns_name(option: str, value: str) -> str:
    """``value`` checked as a host name (lower-cased), or a ConfigError."""
    bad = f"{option} {value!r} is not a host name or an IP address"
    if not value:
        raise ConfigError(f"{option} is empty; give a host name such as api.example.com.")
    if not value.isascii():
        raise ConfigError(
            f"{bad}: it has non-ASCII characters. Certificates hold internationalised names "
            "in their ASCII form (IDNA, labels starting xn--); give that form."
        )
    if value.endswith("."):
        raise ConfigError(f"{bad}: drop the trailing dot ({value[:-1]!r}).")
    if len(value) > _MAX_DNS_LENGTH:
        raise ConfigError(f"{bad}: it is longer than {_MAX_DNS_LENGTH} characters.")
    labels = value.lower().split(".")
    if labels[0] == "*":
        if len(labels) < 3:  # noqa: PLR2004 - "*" plus at least two labels
            raise ConfigError(
                f"{bad}: a wildcard needs at least two labels after '*.', like "
                "*.example.com; CAs refuse wildcards for a whole domain or suffix."
            )
        labels = labels[1:]
    for label in labels:
        _check_label(bad, label)
    if labels[-1].isdigit():
        raise ConfigError(
            f"{bad}: its last label is a number, so it reads as a broken IP address. Give a "
            "full IPv4 (10.0.0.5) or IPv6 address, or a host name."
        )
    return value.lower()


def _check_label(bad: str, label: str) -> None:
    if not label:
        raise ConfigError(f"{bad}: it has an empty label (two dots in a row, or a leading dot).")
    if "*" in label:
        raise ConfigError(
            f"{bad}: a wildcard is allowed only as the whole first label, like *.example.com."
        )
    if len(label) > _MAX_LABEL_LENGTH:
        raise ConfigError(
            f"{bad}: the label {label[:20]!r}... is longer than {_MAX_LABEL_LENGTH} characters."
        )
    if not _LABEL.match(label):
        raise ConfigError(
            f"{bad}: the label {label!r} may hold only letters, digits and inner hyphens "
            "(no '_', spaces or other characters, no '-' at either end)."
        )


def _build(
    common_name: str, names: list[x509.GeneralName], key: ec.EllipticCurvePrivateKey
) -> x509.CertificateSigningRequest:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
    return tls_server(builder).sign(key, hashes.SHA256())


def _label(name: x509.GeneralName) -> str:
    return f"IP:{name.value}" if isinstance(name, x509.IPAddress) else f"DNS:{name.value}"


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            f"--out-dir {folder} exists and is not a folder; name a folder."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"--out-dir {folder} cannot be created ({exc.strerror}); name a folder you can "
            "write to."
        ) from None


def _publish(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` whole with exactly ``mode``, never replacing an existing file."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temporary, _NEW, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)  # the umask may have removed bits
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)  # fails if the name exists: never a replacement
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists (it appeared while the request was being written); "
            "secureserve never overwrites a key or its request. Move it away and run again."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path} cannot be written ({exc.strerror}); check free space and that you may "
            "write to its folder."
        ) from None
