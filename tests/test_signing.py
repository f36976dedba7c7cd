"""Detached Ed25519 signatures over the lock file: one small test per rejection path."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secureserve.errors import ArtifactError, ConfigError
from secureserve.signing import SIGNATURE_FORMAT, generate_signing_key, key_id, sign, verify

LOCK = b'{"files":{"iris.onnx":{"format":"onnx","sha256":"00","size":1}},"version":1}\n'


@pytest.fixture
def keys(tmp_path):
    """A fresh key pair: (private key path, public key path, key id)."""
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    return private, public, generate_signing_key(private, public)


def _document(signature_file: bytes) -> dict[str, str]:
    return json.loads(signature_file)


def _encode(document: dict[str, str]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def test_sign_verify_round_trip(keys):
    """A signature verifies over the exact bytes and returns the signer's key id."""
    private, public, kid = keys
    assert verify(LOCK, sign(LOCK, private), public) == kid


def test_sign_writes_canonical_json(keys):
    """The signature file is sorted, space-free JSON with a trailing LF and the four fields."""
    private, _, kid = keys
    content = sign(LOCK, private)
    document = _document(content)
    assert content == _encode(document)
    assert document["format"] == SIGNATURE_FORMAT
    assert document["algorithm"] == "Ed25519"
    assert document["key_id"] == kid
    assert len(base64.b64decode(document["signature"])) == 64


def test_key_id_is_sha256_prefix_of_raw_public_key():
    """The key id is the first 16 hex digits of SHA-256 over the raw 32-byte key."""
    import hashlib

    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize("position", [0, len(LOCK) // 2, len(LOCK) - 1])
def test_verify_refuses_flipped_data_byte(keys, position):
    """Changing any byte of the lock after signing is signature-invalid."""
    private, public, _ = keys
    signature = sign(LOCK, private)
    data = bytearray(LOCK)
    data[position] ^= 0x01
    with pytest.raises(ArtifactError) as info:
        verify(bytes(data), signature, public)
    assert info.value.reason == "signature-invalid"
    assert info.value.name == "secureserve.lock"


@pytest.mark.parametrize("position", [0, 31, 32, 63])
def test_verify_refuses_flipped_signature_byte(keys, position):
    """Changing any byte of the 64-byte signature is signature-invalid."""
    private, public, _ = keys
    document = _document(sign(LOCK, private))
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[position] ^= 0x01
    document["signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ArtifactError) as info:
        verify(LOCK, _encode(document), public)
    assert info.value.reason == "signature-invalid"


def test_verify_refuses_signature_by_another_key(keys, tmp_path):
    """A signature by another key pair is signature-wrong-key, naming both key ids."""
    _, public, configured = keys
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    signer = generate_signing_key(other_private, other_public)
    with pytest.raises(ArtifactError) as info:
        verify(LOCK, sign(LOCK, other_private), public)
    assert info.value.reason == "signature-wrong-key"
    assert signer in str(info.value)
    assert configured in str(info.value)


def test_verify_refuses_forged_key_id(keys, tmp_path):
    """Relabelling another key's signature with the configured key id still fails to verify."""
    _, public, configured = keys
    other_private = tmp_path / "other.key"
    generate_signing_key(other_private, tmp_path / "other.pub")
    document = _document(sign(LOCK, other_private))
    document["key_id"] = configured
    with pytest.raises(ArtifactError) as info:
        verify(LOCK, _encode(document), public)
    assert info.value.reason == "signature-invalid"


def _mutations(document: dict[str, str]) -> dict[str, bytes]:
    sig = document["signature"]
    body = _encode(document).rstrip(b"\n")
    return {
        "garbage": b"\x00\xffnot json",
        "empty": b"",
        "not-utf8": b'{"a":"\xff"}',
        "list": b"[]",
        "unknown-format": _encode({**document, "format": "secureserve-signature/v2"}),
        "unknown-algorithm": _encode({**document, "algorithm": "RSA-PSS"}),
        "extra-field": _encode({**document, "comment": "hi"}),
        "missing-field": _encode({k: v for k, v in document.items() if k != "key_id"}),
        "duplicate-key": body[:-1] + b',"signature":"' + sig.encode() + b'"}',
        "number-field": body.replace(
            b'"key_id":"' + document["key_id"].encode() + b'"', b'"key_id":1'
        ),
        "bad-key-id": _encode({**document, "key_id": "XYZ"}),
        "bad-base64": _encode({**document, "signature": "!!!" + sig[3:]}),
        "non-canonical-base64": _encode({**document, "signature": sig[:-3] + "B=="}),
        "short-signature": _encode(
            {**document, "signature": base64.b64encode(b"\x00" * 63).decode()}
        ),
        "long-signature": _encode(
            {**document, "signature": base64.b64encode(b"\x00" * 65).decode()}
        ),
        "oversized": b" " * 5000 + _encode(document),
    }


@pytest.mark.parametrize("case", sorted(_mutations({"key_id": "0" * 16, "signature": "A"})))
def test_verify_refuses_malformed_signature_file(keys, case):
    """Anything but the exact four-field v1 document is signature-malformed, never a crash."""
    private, public, _ = keys
    content = _mutations(_document(sign(LOCK, private)))[case]
    with pytest.raises(ArtifactError) as info:
        verify(LOCK, content, public)
    assert info.value.reason == "signature-malformed"


def test_verify_tolerates_whitespace_only_reformatting(keys):
    """Pretty-printing the signature file changes no field, so it still verifies."""
    private, public, kid = keys
    pretty = json.dumps(_document(sign(LOCK, private)), indent=2).encode()
    assert verify(LOCK, pretty, public) == kid


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_sign_refuses_private_key_readable_or_writable_by_others(keys, mode):
    """A signing key that group or others may read or write is refused, naming chmod 600."""
    private, _, _ = keys
    private.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        sign(LOCK, private)


def test_sign_refuses_missing_private_key(tmp_path):
    """A missing signing key is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        sign(LOCK, tmp_path / "nope.key")


def test_sign_refuses_private_key_that_is_not_pem(tmp_path):
    """A file without a PEM private key block is refused."""
    path = tmp_path / "k.key"
    path.write_bytes(b"hello")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not a PEM private key"):
        sign(LOCK, path)


def test_sign_refuses_non_ed25519_private_key(tmp_path):
    """An RSA private key is refused: secureserve signs with Ed25519 only."""
    path = tmp_path / "rsa.key"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not Ed25519"):
        sign(LOCK, path)


def test_sign_refuses_directory_as_private_key(tmp_path):
    """A directory in place of the key file is refused as not a regular file."""
    folder = tmp_path / "dir.key"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        sign(LOCK, folder)


def test_generate_makes_private_key_0600_and_public_key_0644(keys):
    """The private key is owner-only; the public key is readable by all."""
    private, public, kid = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    loaded = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(loaded, type(Ed25519PrivateKey.generate().public_key()))
    assert key_id(loaded) == kid


@pytest.mark.parametrize("which", ["private", "public"])
def test_generate_refuses_to_overwrite(keys, which):
    """Neither key file is ever overwritten; nothing new is written when one exists."""
    private, public, _ = keys
    before = {private: private.read_bytes(), public: public.read_bytes()}
    other = public.with_name("fresh")
    args = (private, other) if which == "private" else (other, public)
    with pytest.raises(ConfigError, match="already exists"):
        generate_signing_key(*args)
    assert not other.exists()
    assert {p: p.read_bytes() for p in before} == before


def test_generate_is_not_widened_by_umask(tmp_path, monkeypatch):
    """A permissive umask still yields a 0600 private key."""
    import os

    old = os.umask(0)
    try:
        generate_signing_key(tmp_path / "a.key", tmp_path / "a.pub")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600


def test_verify_refuses_rsa_public_key(keys, tmp_path):
    """An RSA public key is a ConfigError, not a fallback to another algorithm."""
    private, _, _ = keys
    path = tmp_path / "rsa.pub"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="not Ed25519"):
        verify(LOCK, sign(LOCK, private), path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a key", "not a PEM public key"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "cannot be parsed"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "private key"),
    ],
    ids=["garbage", "bad-pem", "private-key"],
)
def test_verify_refuses_public_key_that_is_not_pem(keys, tmp_path, content, match):
    """A public key file without a parsable PEM public key is a ConfigError naming the setting."""
    private, _, _ = keys
    path = tmp_path / "bad.pub"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as info:
        verify(LOCK, sign(LOCK, private), path)
    assert "[model] signing_public_key" in str(info.value)


def test_verify_refuses_missing_public_key(keys, tmp_path):
    """A missing public key is a ConfigError, before the signature is even looked at."""
    with pytest.raises(ConfigError, match="does not exist"):
        verify(LOCK, b"garbage", tmp_path / "missing.pub")
