"""Detached Ed25519 signatures over the exact bytes of ``secureserve.lock``.

``secureserve sign`` writes ``secureserve.lock.sig`` beside the lock; the server,
when ``[model] signing_public_key`` is set, refuses to load anything unless that
signature verifies with that key. A signature file is one line of canonical JSON
(sorted keys, no spaces, trailing LF)::

    {"algorithm":"Ed25519","format":"secureserve-signature/v1",
     "key_id":"<16 hex>","signature":"<base64 of 64 bytes>"}

(shown on two lines here, one line in the file).

``key_id`` is the first 16 hex digits of SHA-256 over the raw 32-byte public key,
so an operator can tell which key signed without trusting the file: the check
itself always uses the configured public key and Ed25519 only, whatever the file
says. Keys are PEM (PKCS#8 private key, SubjectPublicKeyInfo public key); the
private key is created with mode 0600 and refused when group or others may read
or write it.

Failures of the signature itself are :class:`~secureserve.errors.ArtifactError`
(``name="secureserve.lock"``) with one of three reasons: ``signature-malformed``,
``signature-wrong-key`` and ``signature-invalid``. Problems with a key file are
:class:`~secureserve.errors.ConfigError` naming the file and the fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from secureserve.errors import ArtifactError, ConfigError
from secureserve.secretfiles import create_new, read_private, read_regular

__all__ = [
    "SIGNATURE_FORMAT",
    "generate_signing_key",
    "key_id",
    "read_signature",
    "sign",
    "verify",
]

SIGNATURE_FORMAT: Final = "secureserve-signature/v1"

_ALGORITHM: Final = "Ed25519"
_LOCK_NAME: Final = "secureserve.lock"
_FIELDS: Final = frozenset({"algorithm", "format", "key_id", "signature"})
_KEY_ID_RE: Final = re.compile(r"[0-9a-f]{16}")
_SIGNATURE_BYTES: Final = 64
_MAX_SIGNATURE_FILE: Final = 4096
_MAX_PEM_BYTES: Final = 64 * 1024
_PUBLIC_SETTING: Final = "[model] signing_public_key"


def generate_signing_key(private_key: Path, public_key: Path) -> str:
    """Write a new Ed25519 key pair and return its key id.

    The private key is unencrypted PKCS#8 PEM, created with mode 0600 from the
    start (never briefly readable by others); the public key is SubjectPublicKeyInfo
    PEM with mode 0644, to be copied to the server and named by
    ``[model] signing_public_key``. Neither file is ever overwritten: if one exists,
    a :class:`ConfigError` names it and nothing is written. If writing the second
    file fails, the first is removed again.
    """
    for path in (private_key, public_key):
        if os.path.lexists(path):
            raise ConfigError(
                f"{path} already exists; secureserve never overwrites a key. Choose another "
                "path, or move the old key away first if you really mean to replace it "
                "(every lock signed with it must then be signed again)."
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    _write_new(private_key, private_pem, 0o600)
    try:
        _write_new(public_key, public_pem, 0o644)
    except BaseException:
        private_key.unlink(missing_ok=True)
        raise
    return key_id(key.public_key())


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def read_signature(path: Path) -> bytes:
    """The bytes of a signature file, bounded; ``FileNotFoundError`` if it is missing."""
    return read_regular(path, max_bytes=_MAX_SIGNATURE_FILE + 1, source=str(path))


def sign(data: bytes, private_key: Path) -> bytes:
    """Sign ``data`` (the lock file's exact bytes) and return the signature file's content.

    Raises :class:`ConfigError` when the private key file is missing, not a regular
    file, readable or writable by group or others, not PEM, encrypted, or not Ed25519.
    """
    key = _load_private_key(private_key)
    document = {
        "algorithm": _ALGORITHM,
        "format": SIGNATURE_FORMAT,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def verify(data: bytes, signature_file: bytes, public_key: Path) -> str:
    """Check ``signature_file`` over ``data`` with ``public_key``; return the key id.

    The public key is loaded first, so a misconfigured key is reported as the
    :class:`ConfigError` it is. Then the signature file must be exactly the JSON
    document :func:`sign` writes (whitespace aside) or the result is
    ``signature-malformed``; a signature by another key is ``signature-wrong-key``;
    one that does not verify is ``signature-invalid``. Only Ed25519 is ever used.
    """
    configured = _load_public_key(public_key)
    configured_id = key_id(configured)
    claimed_id, signature = _parse_signature(signature_file)
    if claimed_id != configured_id:
        raise ArtifactError(
            _LOCK_NAME,
            "signature-wrong-key",
            f"the signature was made with key {claimed_id}, but {_PUBLIC_SETTING} "
            f"{public_key} is key {configured_id}. Sign the lock with the private key "
            "that belongs to the configured public key (`secureserve sign`), or configure "
            "the public key of the signer if that key is trusted.",
        )
    try:
        configured.verify(signature, data)
    except InvalidSignature:
        raise ArtifactError(
            _LOCK_NAME,
            "signature-invalid",
            f"the signature by key {configured_id} does not match the lock's content: "
            "the lock or its signature was changed after signing. Check what changed "
            "(`secureserve lock` and diff), then sign again with `secureserve sign`.",
        ) from None
    return configured_id


def _parse_signature(content: bytes) -> tuple[str, bytes]:
    """Return (key id, 64-byte signature) or raise ``signature-malformed``."""
    document = _decode_document(content)
    if document["format"] != SIGNATURE_FORMAT:
        raise _malformed(f"unknown format {document['format']!r}")
    if document["algorithm"] != _ALGORITHM:
        raise _malformed(f"unknown algorithm {document['algorithm']!r}; only Ed25519 is used")
    if not _KEY_ID_RE.fullmatch(document["key_id"]):
        raise _malformed("key_id is not 16 lowercase hex digits")
    encoded = document["signature"]
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("signature is not base64") from None
    if base64.b64encode(signature).decode("ascii") != encoded:
        raise _malformed("signature is not canonical base64")
    if len(signature) != _SIGNATURE_BYTES:
        raise _malformed(f"signature is {len(signature)} bytes, not {_SIGNATURE_BYTES}")
    return document["key_id"], signature


def _decode_document(content: bytes) -> dict[str, str]:
    """The signature file as a dict of exactly the four string fields."""
    if len(content) > _MAX_SIGNATURE_FILE:
        raise _malformed(f"larger than {_MAX_SIGNATURE_FILE} bytes")
    try:
        document = json.loads(content.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _malformed(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _malformed("not a JSON object")
    if set(document) != _FIELDS:
        unknown = sorted(set(document) - _FIELDS)
        missing = sorted(_FIELDS - set(document))
        raise _malformed(f"unknown fields {unknown}, missing fields {missing}")
    if not all(isinstance(value, str) for value in document.values()):
        raise _malformed("every field must be a string")
    return document


def _malformed(why: str) -> ArtifactError:
    return ArtifactError(
        _LOCK_NAME,
        "signature-malformed",
        f"the signature file is not a {SIGNATURE_FORMAT} signature ({why}). "
        "Recreate it with `secureserve sign`.",
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses duplicate keys (a parser-differential risk)."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"duplicate key {name!r}")
        out[name] = value
    return out


def _write_new(path: Path, content: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first instant; never follow or replace."""
    create_new(path, content, mode=mode)


def _read_key_file(path: Path, what: str, *, private: bool) -> bytes:
    """Read a small regular key file through one descriptor (no stat/open race)."""
    source = f"{what} {path}"
    hint = "create a key pair with `secureserve signing-key new`"
    if private:
        return read_private(
            path,
            source=source,
            exposure="anyone who reads it can sign a lock your servers will trust",
            hint=hint,
            max_bytes=_MAX_PEM_BYTES,
        )
    try:
        return read_regular(path, max_bytes=_MAX_PEM_BYTES, source=source)
    except FileNotFoundError:
        raise ConfigError(f"{source} does not exist; check the path, or {hint}.") from None


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    what = "signing key"
    content = _read_key_file(path, what, private=True)
    if b"PRIVATE KEY-----" not in content:
        raise ConfigError(
            f"{what} {path} is not a PEM private key (no 'BEGIN PRIVATE KEY' block); "
            "point it at the private key `secureserve signing-key new` wrote."
        )
    try:
        key = serialization.load_pem_private_key(content, password=None)
    except TypeError:
        raise ConfigError(
            f"{what} {path} is encrypted with a passphrase, which secureserve cannot ask "
            "for; store it decrypted with mode 600 and protect the file instead."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{what} {path} holds a PEM block that cannot be parsed as a private key; "
            "replace it with the key `secureserve signing-key new` wrote."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{what} {path} is a {type(key).__name__.removeprefix('_')} key, not Ed25519; "
            "secureserve signs only with Ed25519. Create a key pair with "
            "`secureserve signing-key new`."
        )
    return key


def _load_public_key(path: Path) -> Ed25519PublicKey:
    content = _read_key_file(path, _PUBLIC_SETTING, private=False)
    if b"-----BEGIN PUBLIC KEY-----" not in content:
        hint = (
            " It holds a private key: configure the public half instead and keep the "
            "private key off the server."
            if b"PRIVATE KEY-----" in content
            else ""
        )
        raise ConfigError(
            f"{_PUBLIC_SETTING} {path} is not a PEM public key (no 'BEGIN PUBLIC KEY' "
            f"block).{hint} Point it at the public key `secureserve signing-key new` wrote."
        )
    try:
        key = serialization.load_pem_public_key(content)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{_PUBLIC_SETTING} {path} holds a PEM block that cannot be parsed as a public "
            "key; replace it with the public key `secureserve signing-key new` wrote."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"{_PUBLIC_SETTING} {path} is a {type(key).__name__.removeprefix('_')} key, not "
            "Ed25519; secureserve verifies lock signatures with Ed25519 only. Configure "
            "the Ed25519 public key `secureserve signing-key new` wrote."
        )
    return key
