"""X.509 extensions shared by the certificates and requests secureserve makes.

:mod:`secureserve.devcerts` issues a ``localhost`` leaf and :mod:`secureserve.csr`
asks a company CA for one; both describe the same kind of certificate, a TLS server's,
with :func:`tls_server`.
"""

from __future__ import annotations

from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["key_usage", "tls_server"]

_Builder = TypeVar("_Builder", x509.CertificateBuilder, x509.CertificateSigningRequestBuilder)


def key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """A key usage allowing only the uses given as True; every other one is False."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def tls_server(builder: _Builder) -> _Builder:
    """``builder`` with the extensions of a TLS server certificate, in this order.

    Not a CA (critical), digital signatures only (critical), and ``serverAuth`` as the
    one extended key usage.
    """
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
