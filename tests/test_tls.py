"""Tests of secureserve.tls: file checks, the context's settings, real handshakes."""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secureserve.devcerts import ensure_dev_certificates
from secureserve.errors import ConfigError
from secureserve.tls import (
    INTERMEDIATE_CIPHERS,
    check_certificate_files,
    peer_certificate_subject,
    server_context,
)

NOW = datetime.now(UTC)
VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


# --- helpers -----------------------------------------------------------------------


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(key, *, subject="localhost", issuer=None, start=None, days=30, ca=False, eku=None):
    """Build a certificate for ``key``; self-signed unless ``issuer=(cert, key)``."""
    start = NOW - timedelta(minutes=1) if start is None else start
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signing_key, algorithm)


def _pem(obj, password=None):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _write(path, data, mode=0o600):
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _pair(tmp_path, key=None, certificate=None):
    """Write a key and a certificate for it; return (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1()) if key is None else key
    certificate = _certificate(key) if certificate is None else certificate
    cert_path = _write(tmp_path / "cert.pem", _pem(certificate), 0o644)
    key_path = _write(tmp_path / "key.pem", _pem(key))
    return cert_path, key_path


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """Development CA and localhost leaf, shared by the module."""
    return ensure_dev_certificates(tmp_path_factory.mktemp("dev") / ".secureserve")


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory):
    """Create a client CA with one client certificate, and a foreign CA with another."""
    directory = tmp_path_factory.mktemp("clients")
    paths = {}
    for label, common_name in (("trusted", "alice"), ("foreign", "mallory")):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate(ca_key, subject=f"{label} client CA", ca=True, days=365)
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = _certificate(
            client_key,
            subject=common_name,
            issuer=(ca, ca_key),
            eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        paths[f"{label}_ca"] = _write(directory / f"{label}-ca.pem", _pem(ca), 0o644)
        paths[f"{label}_cert"] = _write(directory / f"{label}.pem", _pem(client), 0o644)
        paths[f"{label}_key"] = _write(directory / f"{label}-key.pem", _pem(client_key))
    return paths


class _Server:
    """A TLS server thread on 127.0.0.1 that records each handshake's outcome."""

    def __init__(self, context):
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.outcomes = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                try:
                    with self.context.wrap_socket(connection, server_side=True) as tls:
                        outcome = {
                            "version": tls.version(),
                            "cipher": tls.cipher()[0],
                            "compression": tls.compression(),
                            "peercert": tls.getpeercert(),
                        }
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError) as exc:
                    outcome = exc
            self.outcomes.put(outcome)

    def outcome(self):
        return self.outcomes.get(timeout=5)

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def serve():
    """Start a TLS server with the given context; stopped after the test."""
    servers = []

    def start(context):
        servers.append(_Server(context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _connect(port, context, server_hostname="localhost"):
    """Handshake with ``context`` and read the server's b"ok"."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(2)


def _lenient_client(maximum=None):
    """Make a client that checks nothing, to probe what the server itself refuses."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        context.maximum_version = maximum
    return context


def _assert_refused(server, port, client, server_hostname="localhost"):
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _connect(port, client, server_hostname)
    assert isinstance(server.outcome(), ssl.SSLError)


# --- INTERMEDIATE_CIPHERS ----------------------------------------------------------


def test_intermediate_ciphers_are_ecdhe_aead_only():
    """Every TLS 1.2 suite uses ECDHE key exchange and an AEAD cipher (no CBC, no RSA kx)."""
    suites = INTERMEDIATE_CIPHERS.split(":")
    assert len(suites) == 6
    for suite in suites:
        assert suite.startswith(("ECDHE-ECDSA-", "ECDHE-RSA-"))
        assert "GCM" in suite or "CHACHA20-POLY1305" in suite


# --- check_certificate_files: accepted -----------------------------------------------


def test_check_certificate_files_accepts_dev_certificates(dev):
    """The development leaf and key pass every check."""
    check_certificate_files(dev.cert, dev.key)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440])
def test_check_certificate_files_accepts_private_key_modes(tmp_path, mode):
    """Owner-only and owner+group-read key modes are accepted (Kubernetes mounts use 0640)."""
    cert, key = _pair(tmp_path)
    key.chmod(mode)
    check_certificate_files(cert, key)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-2048"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ec-p384"),
    ],
)
def test_check_certificate_files_accepts_strong_keys(tmp_path, key):
    """RSA 2048 and EC P-384 keys are accepted."""
    cert_path, key_path = _pair(tmp_path, key=key())
    check_certificate_files(cert_path, key_path)


def test_check_certificate_files_accepts_chain_after_leaf(tmp_path, dev):
    """A cert file holding the leaf followed by its issuer is judged by the leaf."""
    chain = dev.cert.read_bytes() + dev.ca_cert.read_bytes()
    check_certificate_files(_write(tmp_path / "chain.pem", chain, 0o644), dev.key)


# --- check_certificate_files: refused ------------------------------------------------


def test_a_chain_in_the_wrong_order_is_refused_saying_so(tmp_path, dev):
    """The issuer first, then the leaf: the message says to put the leaf first."""
    chain = dev.ca_cert.read_bytes() + dev.cert.read_bytes()
    message = _refused(_write(tmp_path / "chain.pem", chain, 0o644), dev.key)
    assert "put the server's own certificate first" in message
    other = ensure_dev_certificates(tmp_path / "other")  # a key of no certificate here
    assert "does not belong" in _refused(dev.cert, other.key)


def _refused(cert, key, *, now=None):
    with pytest.raises(ConfigError) as caught:
        check_certificate_files(cert, key, now=now)
    return str(caught.value)


def test_check_certificate_files_refuses_missing_cert(tmp_path, dev):
    """A cert path that does not exist is named in the error."""
    missing = tmp_path / "nope.pem"
    message = _refused(missing, dev.key)
    assert str(missing) in message
    assert "does not exist" in message


def test_check_certificate_files_refuses_missing_key(tmp_path, dev):
    """A key path that does not exist is named in the error."""
    missing = tmp_path / "nope-key.pem"
    message = _refused(dev.cert, missing)
    assert str(missing) in message
    assert "[tls] key" in message


def test_check_certificate_files_refuses_directory(tmp_path, dev):
    """A directory given as the cert is refused as not a regular file."""
    message = _refused(tmp_path, dev.key)
    assert "not a regular file" in message
    assert str(tmp_path) in message


def test_check_certificate_files_refuses_path_through_a_file(tmp_path, dev):
    """A path whose parent is a file (stat fails with ENOTDIR) is refused as unreadable."""
    bad = dev.cert / "cert.pem"
    message = _refused(bad, dev.key)
    assert "cannot be read" in message
    assert str(bad) in message


def test_check_certificate_files_refuses_unreadable_key(tmp_path, monkeypatch):
    """A key that cannot be opened (permission denied) is refused, naming the file."""
    cert, key = _pair(tmp_path)
    real_open = Path.open

    def deny(self, *args, **kwargs):
        if self == key:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    message = _refused(cert, key)
    assert "cannot be read (Permission denied)" in message
    assert str(key) in message


def test_check_certificate_files_refuses_oversized_file(tmp_path, dev):
    """A cert file over 1 MiB is refused before it is read."""
    big = tmp_path / "big.pem"
    with big.open("wb") as handle:
        handle.truncate(1024 * 1024 + 1)
    message = _refused(big, dev.key)
    assert "too large" in message
    assert str(big) in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"hello, not a certificate\n", "not a PEM certificate", id="garbage"),
        pytest.param(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "cannot be parsed",
            id="broken-pem",
        ),
        pytest.param(
            _pem(ec.generate_private_key(ec.SECP256R1())), "may be swapped", id="key-as-cert"
        ),
    ],
)
def test_check_certificate_files_refuses_bad_cert_pem(tmp_path, dev, content, expected):
    """A cert file that is not a parseable PEM certificate is refused, naming the file."""
    bad = _write(tmp_path / "bad.pem", content, 0o644)
    message = _refused(bad, dev.key)
    assert expected in message
    assert str(bad) in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"hello, not a key\n", "not a PEM private key", id="garbage"),
        pytest.param(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "cannot be parsed",
            id="broken-pem",
        ),
    ],
)
def test_check_certificate_files_refuses_bad_key_pem(tmp_path, dev, content, expected):
    """A key file that is not a parseable PEM private key is refused, naming the file."""
    bad = _write(tmp_path / "bad-key.pem", content)
    message = _refused(dev.cert, bad)
    assert expected in message
    assert str(bad) in message


def test_check_certificate_files_refuses_certificate_as_key(tmp_path, dev):
    """A certificate given as the key is refused as not a private key."""
    bad = _write(tmp_path / "cert-as-key.pem", dev.cert.read_bytes())
    message = _refused(dev.cert, bad)
    assert "not a PEM private key" in message
    assert str(bad) in message


def test_check_certificate_files_refuses_encrypted_key(tmp_path):
    """A passphrase-protected key is refused with a hint to store it decrypted."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert, key_path = _pair(tmp_path, key=key)
    _write(key_path, _pem(key, password=b"secret"))
    message = _refused(cert, key_path)
    assert "encrypted" in message
    assert str(key_path) in message


def test_check_certificate_files_refuses_mismatched_key(tmp_path, dev):
    """A key that is not the certificate's is refused, naming both files."""
    other = _write(tmp_path / "other-key.pem", _pem(ec.generate_private_key(ec.SECP256R1())))
    message = _refused(dev.cert, other)
    assert "does not belong" in message
    assert str(other) in message
    assert str(dev.cert) in message


def test_check_certificate_files_refuses_expired(dev):
    """A certificate past its notAfter (``now`` far in the future) is refused."""
    message = _refused(dev.cert, dev.key, now=NOW + timedelta(days=3650))
    assert "expired" in message
    assert str(dev.cert) in message


def test_check_certificate_files_refuses_not_yet_valid(dev):
    """A certificate before its notBefore (``now`` in the past) is refused."""
    message = _refused(dev.cert, dev.key, now=NOW - timedelta(days=1))
    assert "not valid yet" in message
    assert str(dev.cert) in message


def test_check_certificate_files_treats_naive_now_as_utc(dev):
    """A naive ``now`` is read as UTC rather than rejected."""
    naive = (NOW + timedelta(days=3650)).replace(tzinfo=None)
    assert "expired" in _refused(dev.cert, dev.key, now=naive)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o644, "readable by every user"),
        (0o604, "readable by every user"),
        (0o606, "readable by every user"),
        (0o602, "writable by users other than its owner"),
        (0o620, "writable by users other than its owner"),
        (0o660, "writable by users other than its owner"),
    ],
)
def test_check_certificate_files_refuses_loose_key_mode(tmp_path, mode, expected):
    """A key readable by others or writable by group/others is refused with a chmod hint."""
    cert, key = _pair(tmp_path)
    key.chmod(mode)
    message = _refused(cert, key)
    assert expected in message
    assert f"chmod 600 {key}" in message


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(
            lambda: rsa.generate_private_key(65537, 1024),  # noqa: S505 - weak on purpose
            "1024-bit RSA",
            id="rsa-1024",
        ),
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1", id="ec-p521"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, "not an RSA or EC key", id="ed25519"),
    ],
)
def test_check_certificate_files_refuses_weak_or_unusual_key(tmp_path, key, expected):
    """RSA under 2048 bits, curves other than P-256/P-384 and non-RSA/EC keys are refused."""
    cert, key_path = _pair(tmp_path, key=key())
    message = _refused(cert, key_path)
    assert expected in message
    assert str(key_path) in message


# --- server_context: settings --------------------------------------------------------


def test_server_context_settings(dev):
    """TLS 1.2+, intermediate AEAD suites, no compression/renegotiation, no mTLS by default."""
    context = server_context(cert=dev.cert, key=dev.key)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.verify_mode is ssl.CERT_NONE
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == INTERMEDIATE_CIPHERS.split(":")


def test_server_context_sets_group_list_where_python_can(dev, monkeypatch):
    """Where ``SSLContext.set_groups`` exists (Python 3.15+) the full Mozilla list is set."""
    calls = []
    monkeypatch.setattr(
        ssl.SSLContext, "set_groups", lambda _self, groups: calls.append(groups), raising=False
    )
    server_context(cert=dev.cert, key=dev.key)
    assert calls == ["X25519:prime256v1:secp384r1"]


def test_server_context_min_version_13(dev):
    """``min_version="1.3"`` sets TLS 1.3 as the minimum."""
    context = server_context(cert=dev.cert, key=dev.key, min_version="1.3")
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3


def test_server_context_refuses_unknown_min_version(dev):
    """A ``min_version`` other than "1.2" or "1.3" is a ConfigError."""
    with pytest.raises(ConfigError, match="min_version"):
        server_context(cert=dev.cert, key=dev.key, min_version="1.1")  # type: ignore[arg-type]


def test_server_context_checks_files_first(dev):
    """The file checks run first: an expired certificate stops context creation."""
    with pytest.raises(ConfigError, match="expired"):
        server_context(cert=dev.cert, key=dev.key, now=NOW + timedelta(days=3650))


def test_server_context_refuses_weak_chain_certificate(tmp_path, dev):
    """A chain certificate OpenSSL refuses at security level 2 becomes a ConfigError."""
    weak_key = rsa.generate_private_key(65537, 1024)  # noqa: S505 - weak on purpose
    chain = dev.cert.read_bytes() + _pem(_certificate(weak_key, subject="weak", ca=True))
    cert = _write(tmp_path / "chain.pem", chain, 0o644)
    with pytest.raises(ConfigError, match="OpenSSL refused") as caught:
        server_context(cert=cert, key=dev.key)
    assert str(cert) in str(caught.value)


def test_server_context_sets_client_ca(dev, client_pki):
    """With ``client_ca`` the context asks for (but does not demand) a client certificate."""
    context = server_context(cert=dev.cert, key=dev.key, client_ca=client_pki["trusted_ca"])
    assert context.verify_mode is ssl.CERT_OPTIONAL
    assert context.cert_store_stats()["x509_ca"] == 1


def test_server_context_refuses_missing_client_ca(tmp_path, dev):
    """A ``client_ca`` that does not exist is a ConfigError naming it."""
    missing = tmp_path / "clients.pem"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        server_context(cert=dev.cert, key=dev.key, client_ca=missing)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"not a pem\n", "not a PEM certificate bundle", id="garbage"),
        pytest.param(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "could not be loaded",
            id="broken-pem",
        ),
    ],
)
def test_server_context_refuses_bad_client_ca(tmp_path, dev, content, expected):
    """A ``client_ca`` that is not a loadable PEM bundle is a ConfigError naming it."""
    bad = _write(tmp_path / "clients.pem", content, 0o644)
    with pytest.raises(ConfigError, match=expected) as caught:
        server_context(cert=dev.cert, key=dev.key, client_ca=bad)
    assert str(bad) in str(caught.value)


# --- peer_certificate_subject --------------------------------------------------------


@pytest.mark.parametrize("peercert", [None, {}, {"subject": ()}])
def test_peer_certificate_subject_none_without_certificate(peercert):
    """No certificate (None or an empty dict from getpeercert()) gives None."""
    assert peer_certificate_subject(peercert) is None


def test_peer_certificate_subject_renders_short_names():
    """Common attributes are shortened; others keep OpenSSL's long name."""
    peercert = {
        "subject": (
            (("countryName", "DE"),),
            (("organizationName", "Example"),),
            (("commonName", "alice"),),
            (("emailAddress", "a@example.org"),),
        )
    }
    assert (
        peer_certificate_subject(peercert) == "C=DE,O=Example,CN=alice,emailAddress=a@example.org"
    )


# --- real handshakes -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_server_context_strict_tls12_client_connects(serve, dev, hostname):
    """A TLS 1.2 client trusting only the dev CA verifies the chain and each SAN."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    client = ssl.create_default_context(cafile=dev.ca_cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _connect(server.port, client, hostname) == b"ok"
    assert server.outcome()["version"] == "TLSv1.2"


@pytest.mark.slow
def test_server_context_default_client_negotiates_tls13(serve, dev):
    """A default client negotiates TLS 1.3 (after a HelloRetryRequest for P-256)."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    assert _connect(server.port, ssl.create_default_context(cafile=dev.ca_cert)) == b"ok"
    assert server.outcome()["version"] == "TLSv1.3"


@pytest.mark.slow
def test_server_context_hostname_outside_sans_fails(serve, dev):
    """A strict client refuses the dev leaf for a name it does not carry."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    client = ssl.create_default_context(cafile=dev.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        _connect(server.port, client, "example.com")
    server.outcome()


@pytest.mark.slow
def test_server_context_plaintext_http_gets_no_http_answer(serve, dev):
    """A plaintext HTTP request gets a closed connection or a TLS alert, never HTTP."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            answer = raw.recv(1024)
    assert not answer.startswith(b"HTTP")
    assert isinstance(server.outcome(), ssl.SSLError)


@pytest.mark.slow
# The client must be able to offer TLS 1.1 to prove the server refuses it.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_server_context_refuses_tls11_client(serve, dev):
    """A client capped at TLS 1.1 (with legacy ciphers allowed) is refused."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    client = _lenient_client(maximum=ssl.TLSVersion.TLSv1_1)
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    _assert_refused(server, server.port, client)


@pytest.mark.slow
def test_server_context_min_13_refuses_tls12_client(serve, dev):
    """With ``min_version="1.3"`` a TLS 1.2-only client is refused."""
    server = serve(server_context(cert=dev.cert, key=dev.key, min_version="1.3"))
    _assert_refused(server, server.port, _lenient_client(maximum=ssl.TLSVersion.TLSv1_2))


@pytest.mark.slow
@pytest.mark.parametrize(
    "cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA"]
)
def test_server_context_refuses_cbc_only_client(serve, dev, cipher):
    """A TLS 1.2 client offering only a CBC suite is refused."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    client = _lenient_client(maximum=ssl.TLSVersion.TLSv1_2)
    client.set_ciphers(cipher)
    _assert_refused(server, server.port, client)


@pytest.mark.slow
@pytest.mark.parametrize("group", ["secp521r1", "X448", "ffdhe2048"])
@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_context_refuses_non_intermediate_groups(serve, dev, group, version):
    """A client offering only X448, secp521r1 or ffdhe2048 finds no common group."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    client = _lenient_client(maximum=version)
    client.minimum_version = version
    try:
        client.set_ecdh_curve(group)
    except (ValueError, ssl.SSLError):
        pytest.skip(f"this OpenSSL cannot offer {group} alone")
    _assert_refused(server, server.port, client)


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_context_negotiates_aead_without_compression(serve, dev, version):
    """The negotiated suite is AEAD (GCM or ChaCha20-Poly1305) and compression is off."""
    server = serve(server_context(cert=dev.cert, key=dev.key))
    client = ssl.create_default_context(cafile=dev.ca_cert)
    client.minimum_version = client.maximum_version = version
    assert _connect(server.port, client) == b"ok"
    outcome = server.outcome()
    assert "GCM" in outcome["cipher"] or "CHACHA20_POLY1305" in outcome["cipher"].replace("-", "_")
    assert outcome["compression"] is None


def _mtls_client(dev, client_pki, label=None, version=None):
    client = ssl.create_default_context(cafile=dev.ca_cert)
    if version is not None:
        client.minimum_version = client.maximum_version = version
    if label is not None:
        client.load_cert_chain(client_pki[f"{label}_cert"], client_pki[f"{label}_key"])
    return client


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_context_mtls_allows_handshake_without_certificate(serve, dev, client_pki, version):
    """Under mTLS a client without a certificate completes the handshake (CERT_OPTIONAL)."""
    context = server_context(cert=dev.cert, key=dev.key, client_ca=client_pki["trusted_ca"])
    server = serve(context)
    assert _connect(server.port, _mtls_client(dev, client_pki, version=version)) == b"ok"
    outcome = server.outcome()
    assert not outcome["peercert"]
    assert peer_certificate_subject(outcome["peercert"]) is None


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_context_mtls_exposes_verified_certificate(serve, dev, client_pki, version):
    """A client certificate from the client CA is verified and visible to the server."""
    context = server_context(cert=dev.cert, key=dev.key, client_ca=client_pki["trusted_ca"])
    server = serve(context)
    client = _mtls_client(dev, client_pki, "trusted", version)
    assert _connect(server.port, client) == b"ok"
    assert peer_certificate_subject(server.outcome()["peercert"]) == "CN=alice"


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_context_mtls_refuses_foreign_certificate(serve, dev, client_pki, version):
    """A client certificate from another CA aborts the handshake."""
    context = server_context(cert=dev.cert, key=dev.key, client_ca=client_pki["trusted_ca"])
    server = serve(context)
    client = _mtls_client(dev, client_pki, "foreign", version)
    _assert_refused(server, server.port, client)


def _connect_for_session(port, context, session=None):
    """Handshake (resuming ``session`` if given); return the session and whether it resumed."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        assert tls.recv(2) == b"ok"
        return tls.session, tls.session_reused


@pytest.mark.slow
@pytest.mark.parametrize("label", [None, "trusted"], ids=["no-cert", "cert"])
@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_context_mtls_resumption_keeps_certificate_state(
    serve, dev, client_pki, version, label
):
    """A resumed session carries exactly the client-certificate state it was made with."""
    context = server_context(cert=dev.cert, key=dev.key, client_ca=client_pki["trusted_ca"])
    server = serve(context)
    client = _mtls_client(dev, client_pki, label, version)
    session, _ = _connect_for_session(server.port, client)
    first = server.outcome()
    _, reused = _connect_for_session(server.port, client, session)
    second = server.outcome()
    assert reused
    subject = peer_certificate_subject(second["peercert"])
    assert subject == peer_certificate_subject(first["peercert"])
    assert subject == ("CN=alice" if label else None)


@pytest.mark.parametrize(
    ("subject", "rendered"),
    [
        (((("commonName", "alice,O=Example"),),), "CN=alice\\,O\\=Example"),
        (((("commonName", "alice"),), (("organizationName", "Example"),)), "CN=alice,O=Example"),
        (((("commonName", "a"), ("organizationName", "b")),), "CN=a+O=b"),
        (((("commonName", '#"x<y>;z'),),), 'CN=\\#\\"x\\<y\\>\\;z'),
    ],
)
def test_peer_certificate_subject_escapes_so_subjects_never_collide(subject, rendered):
    """A value holding separators renders escaped: it cannot pass for another subject."""
    assert peer_certificate_subject({"subject": subject}) == rendered
