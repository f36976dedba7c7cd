"""The audit digest key: the HMAC key of the input and output digests.

:func:`generate_digest_key` writes a new key file once; :func:`load_digest_key` reads
it from a private file. :data:`KEY_BYTES` and :data:`KEY_HINT` are shared with the
writer, which refuses a short key with the same hint. Depends on no other audit module.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Final

from secureserve.errors import ConfigError
from secureserve.secretfiles import create_new, read_private

__all__ = [
    "KEY_BYTES",
    "KEY_HINT",
    "generate_digest_key",
    "load_digest_key",
]

KEY_BYTES: Final = 32
_MAX_KEY_FILE: Final = 1024
_KEY_SETTING: Final = "[audit] digest_key_file"
KEY_HINT: Final = "create one with `secureserve audit key new PATH` (or `openssl rand -base64 32`)"


def generate_digest_key(path: Path) -> None:
    """Write 32 random bytes, base64 and a newline, to a new file ``path`` (mode 0600).

    Never overwrites: an existing file is a :class:`ConfigError` (digests made with
    the old key could no longer be matched).
    """
    content = base64.b64encode(os.urandom(KEY_BYTES)) + b"\n"
    create_new(path, content, keeps="digests in the audit log could no longer be matched")


def load_digest_key(path: Path) -> bytes:
    """The audit digest key in ``path``: base64 of at least 32 bytes, in a private file.

    Raises :class:`ConfigError` naming the file (never its content) and the fix when
    it is missing, not a regular file, readable or writable by group or others, not
    base64, or shorter than 32 bytes.
    """
    source = f"{_KEY_SETTING} {path}"
    content = read_private(
        path,
        source=source,
        exposure="whoever reads it can confirm guessed inputs against the audit log",
        hint=KEY_HINT,
        max_bytes=_MAX_KEY_FILE,
    )
    text = content.strip(b" \t\r\n")
    if not text:
        raise ConfigError(f"{source} is empty; {KEY_HINT}.")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} is not valid base64; {KEY_HINT}.") from None
    if len(key) < KEY_BYTES:
        raise ConfigError(
            f"{source} decodes to {len(key)} bytes; the digest key needs at least "
            f"{KEY_BYTES}. {KEY_HINT[0].upper()}{KEY_HINT[1:]}."
        )
    return key
