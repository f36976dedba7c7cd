"""Tests of secureserve.devcerts: the local development CA and localhost leaf."""

from __future__ import annotations

import ipaddress
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secureserve.devcerts import (
    CA_LIFETIME,
    LEAF_LIFETIME,
    DevCertificates,
    ensure_dev_certificates,
)
from secureserve.errors import ConfigError

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
FILES = ("ca.pem", "ca-key.pem", "cert.pem", "key.pem")
SANS = {
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
}


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(directory):
    return {name: (directory / name).read_bytes() for name in FILES}


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _extension(certificate, kind):
    return certificate.extensions.get_extension_for_class(kind).value


@pytest.fixture
def directory(tmp_path):
    """Name a .secureserve folder (not created yet) inside the test's tmp dir."""
    return tmp_path / "project" / ".secureserve"


@pytest.fixture
def made(directory):
    """Certificates made once at NOW, with a snapshot of their bytes."""
    paths = ensure_dev_certificates(directory, now=NOW)
    return paths, _snapshot(directory)


def _issue_leaf(directory, *, names):
    """Sign a leaf with the dev CA's key (SANs ``names``, or none) over cert.pem/key.pem."""
    ca = _cert(directory / "ca.pem")
    ca_key = serialization.load_pem_private_key(
        (directory / "ca-key.pem").read_bytes(), password=None
    )
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=60))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    leaf = builder.sign(ca_key, hashes.SHA256())
    (directory / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# --- files and modes -----------------------------------------------------------------


def test_ensure_dev_certificates_returns_paths(directory, made):
    """The result names ca.pem, cert.pem and key.pem under the directory."""
    paths, _ = made
    assert paths == DevCertificates(
        ca_cert=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem"
    )


def test_ensure_dev_certificates_modes(directory, made):
    """The folder is 0700, both keys 0600, certificates writable by the owner only."""
    assert _mode(directory) == 0o700
    assert _mode(directory / "ca-key.pem") == 0o600
    assert _mode(directory / "key.pem") == 0o600
    for name in ("ca.pem", "cert.pem"):
        assert not _mode(directory / name) & 0o022


def test_ensure_dev_certificates_leaves_no_temporary_files(directory, made):
    """Only the four PEM files and the lock file remain after writing."""
    assert sorted(p.name for p in directory.iterdir()) == sorted([*FILES, ".lock"])


def test_ensure_dev_certificates_tightens_existing_directory(tmp_path):
    """An existing folder of ours with group/other bits is tightened to 0700."""
    directory = tmp_path / ".secureserve"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    ensure_dev_certificates(directory, now=NOW)
    assert _mode(directory) == 0o700


def test_ensure_dev_certificates_refuses_foreign_directory(directory, monkeypatch):
    """A folder owned by another user is refused rather than written into."""
    directory.mkdir(parents=True)
    monkeypatch.setattr(os, "geteuid", lambda: directory.stat().st_uid + 1)
    with pytest.raises(ConfigError, match="belongs to another user") as caught:
        ensure_dev_certificates(directory, now=NOW)
    assert str(directory) in str(caught.value)


def test_ensure_dev_certificates_creates_keys_private_from_the_start(directory, monkeypatch):
    """Key files are opened with mode 0600 and no file is chmod-ed after writing."""
    opened = {}
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *args, **kwargs):
        opened[os.fspath(path)] = mode
        return real_open(path, flags, mode, *args, **kwargs)

    def no_chmod(*args, **kwargs):
        pytest.fail("devcerts must not chmod a file after writing it")

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    ensure_dev_certificates(directory, now=NOW)
    key_modes = {path: mode for path, mode in opened.items() if "key.pem" in Path(path).name}
    assert len(key_modes) == 2
    assert set(key_modes.values()) == {0o600}


# --- contents -------------------------------------------------------------------------


def test_ensure_dev_certificates_ca_profile(made):
    """The CA is EC P-256, CA:true pathlen 0, keyCertSign+cRLSign, about one year."""
    paths, _ = made
    ca = _cert(paths.ca_cert)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = _extension(ca, x509.KeyUsage)
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert ca.not_valid_after_utc - NOW == CA_LIFETIME


def test_ensure_dev_certificates_ca_is_name_constrained(made):
    """The CA may only certify localhost, 127.0.0.0/8 and ::1 (a leaked key stays harmless)."""
    paths, _ = made
    constraints = _cert(paths.ca_cert).extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert set(constraints.value.permitted_subtrees) == {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    }


def test_ensure_dev_certificates_leaf_profile(made):
    """The leaf is EC P-256, CA:false, serverAuth, the three SANs, about 90 days."""
    paths, _ = made
    leaf = _cert(paths.cert)
    assert leaf.public_key().curve.name == "secp256r1"
    assert not _extension(leaf, x509.BasicConstraints).ca
    assert list(_extension(leaf, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert set(_extension(leaf, x509.SubjectAlternativeName)) == SANS
    assert leaf.not_valid_after_utc - NOW == LEAF_LIFETIME


def test_ensure_dev_certificates_leaf_verifies_against_ca(made):
    """The leaf is signed by the CA and its key matches the certificate."""
    paths, _ = made
    leaf = _cert(paths.cert)
    leaf.verify_directly_issued_by(_cert(paths.ca_cert))
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()


# --- reuse and renewal ---------------------------------------------------------------


def test_ensure_dev_certificates_reuses_valid_files(directory, made):
    """A second call (even weeks later) keeps every file byte for byte."""
    _, before = made
    ensure_dev_certificates(directory, now=NOW + timedelta(days=30))
    assert _snapshot(directory) == before


def test_ensure_dev_certificates_renews_expiring_leaf(directory, made):
    """A leaf with under 7 days left is reissued; the CA is kept."""
    paths, before = made
    later = NOW + LEAF_LIFETIME - timedelta(days=5)
    ensure_dev_certificates(directory, now=later)
    after = _snapshot(directory)
    assert after["ca.pem"] == before["ca.pem"]
    assert after["ca-key.pem"] == before["ca-key.pem"]
    assert after["cert.pem"] != before["cert.pem"]
    assert after["key.pem"] != before["key.pem"]
    leaf = _cert(paths.cert)
    leaf.verify_directly_issued_by(_cert(paths.ca_cert))
    assert leaf.not_valid_after_utc - later == LEAF_LIFETIME


def test_ensure_dev_certificates_caps_leaf_at_ca_expiry(directory, made):
    """A leaf issued late in the CA's life never outlives the CA."""
    paths, _ = made
    ensure_dev_certificates(directory, now=NOW + CA_LIFETIME - timedelta(days=30))
    assert _cert(paths.cert).not_valid_after_utc == _cert(paths.ca_cert).not_valid_after_utc


def test_ensure_dev_certificates_renews_expiring_ca(directory, made):
    """A CA with under 7 days left is replaced, and the leaf with it."""
    paths, before = made
    ensure_dev_certificates(directory, now=NOW + CA_LIFETIME - timedelta(days=3))
    after = _snapshot(directory)
    assert all(after[name] != before[name] for name in FILES)
    _cert(paths.cert).verify_directly_issued_by(_cert(paths.ca_cert))


def _garbage_ca(directory):
    (directory / "ca.pem").write_bytes(b"not a certificate")


def _foreign_ca_key(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _ca_key_readable(directory):
    (directory / "ca-key.pem").chmod(0o644)


def _missing_ca(directory):
    (directory / "ca.pem").unlink()


def _leaf_as_ca(directory):
    # A self-signed certificate without basicConstraints CA:true.
    (directory / "ca.pem").write_bytes((directory / "cert.pem").read_bytes())
    (directory / "ca-key.pem").write_bytes((directory / "key.pem").read_bytes())


@pytest.mark.parametrize(
    "damage", [_garbage_ca, _foreign_ca_key, _ca_key_readable, _missing_ca, _leaf_as_ca]
)
def test_ensure_dev_certificates_regenerates_broken_ca(directory, made, damage):
    """A CA that is unreadable, mismatched, exposed or not a CA is replaced with its leaf."""
    paths, before = made
    damage(directory)
    ensure_dev_certificates(directory, now=NOW)
    after = _snapshot(directory)
    assert after["ca.pem"] != before["ca.pem"]
    assert after["cert.pem"] != before["cert.pem"]
    assert _mode(directory / "ca-key.pem") == 0o600
    _cert(paths.cert).verify_directly_issued_by(_cert(paths.ca_cert))


def _missing_leaf_key(directory):
    (directory / "key.pem").unlink()


def _leaf_key_readable(directory):
    (directory / "key.pem").chmod(0o644)


def _leaf_from_other_ca(directory):
    other = ensure_dev_certificates(directory.parent / "other", now=NOW)
    (directory / "cert.pem").write_bytes(other.cert.read_bytes())
    (directory / "key.pem").write_bytes(other.key.read_bytes())


def _leaf_missing_ip_sans(directory):
    _issue_leaf(directory, names=[x509.DNSName("localhost")])


def _oversized_leaf(directory):
    (directory / "cert.pem").write_bytes(b"x" * (64 * 1024 + 1))


def _leaf_without_sans(directory):
    _issue_leaf(directory, names=None)


@pytest.mark.parametrize(
    "damage",
    [
        _missing_leaf_key,
        _leaf_key_readable,
        _leaf_from_other_ca,
        _leaf_missing_ip_sans,
        _leaf_without_sans,
        _oversized_leaf,
    ],
)
def test_ensure_dev_certificates_regenerates_bad_leaf(directory, made, damage):
    """A leaf that is missing, exposed, foreign or has the wrong SANs is reissued; CA kept."""
    paths, before = made
    damage(directory)
    ensure_dev_certificates(directory, now=NOW)
    after = _snapshot(directory)
    assert after["ca.pem"] == before["ca.pem"]
    assert after["cert.pem"] != before["cert.pem"]
    assert _mode(paths.key) == 0o600
    leaf = _cert(paths.cert)
    leaf.verify_directly_issued_by(_cert(paths.ca_cert))
    assert set(_extension(leaf, x509.SubjectAlternativeName)) == SANS


def test_ensure_dev_certificates_treats_naive_now_as_utc(directory, made):
    """A naive ``now`` is read as UTC: the same instant reuses the files."""
    _, before = made
    ensure_dev_certificates(directory, now=NOW.replace(tzinfo=None))
    assert _snapshot(directory) == before


def test_ensure_dev_certificates_concurrent_callers_agree(directory):
    """Callers racing on a fresh folder end with one consistent CA and leaf."""
    results, errors = [], []

    def call():
        try:
            results.append(ensure_dev_certificates(directory, now=NOW))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors
    assert len(results) == 4
    _cert(directory / "cert.pem").verify_directly_issued_by(_cert(directory / "ca.pem"))


def test_ensure_dev_certificates_removes_temporary_file_on_failure(directory, monkeypatch):
    """A failed write leaves no temporary file and no half-written target."""
    directory.mkdir(parents=True)

    def fail(self, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(directory), "replace", fail)
    with pytest.raises(ConfigError, match="No space left") as caught:
        ensure_dev_certificates(directory, now=NOW)
    assert str(directory) in str(caught.value)
    assert sorted(p.name for p in directory.iterdir()) == [".lock"]


def test_ensure_dev_certificates_refuses_file_as_directory(tmp_path):
    """A regular file where the folder should be is a ConfigError naming it."""
    blocker = tmp_path / ".secureserve"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="not a directory") as caught:
        ensure_dev_certificates(blocker, now=NOW)
    assert str(blocker) in str(caught.value)


def test_ensure_dev_certificates_refuses_uncreatable_directory(tmp_path):
    """A folder that cannot be created (parent is a file) is a ConfigError naming it."""
    parent = tmp_path / "file"
    parent.write_text("")
    with pytest.raises(ConfigError, match="cannot be created") as caught:
        ensure_dev_certificates(parent / ".secureserve", now=NOW)
    assert str(parent / ".secureserve") in str(caught.value)
