"""The key of encryption at rest: 32 random bytes, base64, in a private file or the environment.

:func:`generate_key` writes a new key file (mode 0600 from the first instant, never
replacing one); :func:`load_key` reads it back, from ``[model] encryption_key_file`` or
``SECURESERVE_MODEL__ENCRYPTION_KEY``, refusing a file others may read and anything
that is not exactly 32 bytes of strict base64. Messages name the file or variable and
the fix, never the value. :mod:`secureserve.encryption` uses the key.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from secureserve.errors import ConfigError
from secureserve.secretfiles import create_new, read_private

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["KEY_BYTES", "KEY_ENV", "generate_key", "load_key"]

KEY_ENV: Final = "SECURESERVE_MODEL__ENCRYPTION_KEY"
KEY_BYTES: Final = 32
_MAX_KEY_FILE: Final = 1024
_KEY_SETTING: Final = "[model] encryption_key_file"
_GENERATE_HINT: Final = (
    "create one with `secureserve encryption-key new PATH` (or `openssl rand -base64 32`)"
)


def generate_key(path: Path) -> None:
    """Write a new random 32-byte key, base64 and a newline, to ``path`` (mode 0600).

    The file is created with mode 0600 from the first instant and never replaces an
    existing file (:class:`ConfigError` names it).
    """
    content = base64.b64encode(os.urandom(KEY_BYTES)) + b"\n"
    create_new(path, content, keeps="files encrypted with it could no longer be read")


def load_key(
    *,
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The 32-byte key from ``key_file`` if given, else from ``$SECURESERVE_MODEL__ENCRYPTION_KEY``.

    Both hold the key in base64 (surrounding whitespace ignored). ``environ``
    defaults to ``os.environ``. Raises :class:`ConfigError`, naming the file or
    variable (never the value) and the fix, when the key is missing, not base64 or
    not exactly 32 bytes, or when the file is not a regular file or group or others
    may read or write it.
    """
    if key_file is not None:
        return _decode_key(_read_key_file(key_file), f"{_KEY_SETTING} {key_file}")
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV)
    if value is None:
        raise ConfigError(
            f"no encryption key for encrypted artifacts: set {_KEY_SETTING} to a key file "
            f"(mode 0600) or the environment variable {KEY_ENV}; {_GENERATE_HINT}."
        )
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raw = b"\xff"  # not base64 either way; reported below
    return _decode_key(raw, f"environment variable {KEY_ENV}")


def _read_key_file(path: Path) -> bytes:
    """Read a small, private, regular key file through one descriptor."""
    return read_private(
        path,
        source=f"{_KEY_SETTING} {path}",
        exposure="anyone who reads it can decrypt the models (in Kubernetes, mount the "
        "secret with defaultMode 0400)",
        hint=_GENERATE_HINT,
        max_bytes=_MAX_KEY_FILE,
    )


def _decode_key(raw: bytes, source: str) -> bytes:
    """Strict base64 of exactly 32 bytes; messages never show the value."""
    text = raw.strip(b" \t\r\n")
    if not text:
        raise ConfigError(f"{source} is empty; {_GENERATE_HINT}.")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{source} is not valid base64; it must hold a base64-encoded 32-byte key "
            f"({_GENERATE_HINT})."
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{source} decodes to {len(key)} bytes; AES-256 needs exactly {KEY_BYTES}. "
            f"{_GENERATE_HINT[0].upper()}{_GENERATE_HINT[1:]}."
        )
    return key
