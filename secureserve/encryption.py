"""AES-256-GCM encryption of model artifacts at rest, in authenticated chunks.

``secureserve encrypt FILE`` writes ``FILE.enc``; the artifact loader decrypts it in
memory with :func:`decrypt` (the plaintext never touches the disk on the server).
:func:`decrypt_file` is for operators who need the plaintext back.

File format (all integers big-endian)::

    header  = MAGIC (8) | version (1) = 0x01 | chunk_size (u32) | nonce_prefix (8)
    chunk i = AES-256-GCM(key, nonce = nonce_prefix | u32(i),
                          aad = header | u32(i) | final (1 byte: 0x00 or 0x01),
                          plaintext_i) = ciphertext_i | tag_i (16)
    file    = header | chunk 0 | chunk 1 | ... | chunk n-1

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes and has
``final = 0``; the last holds 0..chunk_size bytes (0 only for an empty file, which is
one empty final chunk) and has ``final = 1``. Chunk boundaries follow from the file
length: whatever follows the last full chunk is the final one. ``chunk_size`` is
between 4 KiB and 64 MiB (default 1 MiB); the 8-byte nonce prefix is random for each
file.

What this detects, always before any plaintext is released:

- a wrong key or any changed byte: the chunk's tag fails; the whole header is in
  every chunk's associated data, so a changed header breaks every tag;
- reordered or duplicated chunks: the counter is in the nonce and the tag;
- truncation: the last chunk present was sealed with ``final = 0``;
- appended data: the chunk it lengthens, or the final chunk read as non-final,
  fails its tag.

Failures are :class:`~secureserve.errors.ArtifactError` with reason
``encrypted-malformed`` (not this format: magic, version, chunk size),
``encrypted-truncated`` (the file ends before its final chunk, or inside the header
or a tag) or ``encrypted-wrong-key-or-tampered`` (a tag failed: wrong key, changed
bytes, moved chunks, appended data, or a cut inside a chunk, which cannot be told
apart from a change).

Limits. A chunk counter is 32 bits, so a file needs at most 2**32 chunks (16 TiB at
the smallest chunk size); larger files are refused, never wrapped. Nonces are unique
per key as long as no two files draw the same random 64-bit prefix: past a few
million files under one key, rotate the key.

The key is 32 random bytes, stored base64 in a file of mode 0600 or in
``SECURESERVE_MODEL__ENCRYPTION_KEY``: :mod:`secureserve.encryption_keys` makes and
loads it (``generate_key`` and ``load_key`` are re-exported here).
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secureserve.encryption_keys import KEY_BYTES, KEY_ENV, generate_key, load_key
from secureserve.errors import ArtifactError, ConfigError
from secureserve.secretfiles import open_regular

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "KEY_ENV",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "decrypt",
    "decrypt_file",
    "encrypt_file",
    "generate_key",
    "is_encrypted",
    "load_key",
]

#: First 8 bytes of every encrypted file. Like PNG's signature: a high-bit byte first
#: (catches 7-bit transfers and cannot start text, JSON or a safetensors header), then
#: CR LF (catches line-ending conversion).
MAGIC: Final = b"\x89SSENC\r\n"
MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_CHUNK_SIZE: Final = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024

_VERSION: Final = 1
_HEADER: Final = struct.Struct(">8sBI8s")
_COUNTER: Final = struct.Struct(">I")
_TAG_BYTES: Final = 16
_MAX_CHUNKS: Final = 1 << 32


def is_encrypted(data: bytes | memoryview) -> bool:
    """Whether ``data`` starts with :data:`MAGIC` (an artifact this module wrote)."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def encrypt_file(
    source: Path,
    target: Path,
    key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Encrypt ``source`` into a new file ``target``, reading one chunk at a time.

    The ciphertext is written to a temporary file (mode 0600) beside ``target`` and
    renamed into place only when complete. Raises :class:`ConfigError` when
    ``target`` exists, ``source`` is not a readable regular file, ``key`` is not 32
    bytes, ``chunk_size`` is outside 4 KiB..64 MiB, or the file would need more than
    2**32 chunks.
    """
    cipher = _cipher(key)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(
            f"chunk size {chunk_size} is out of range; use {MIN_CHUNK_SIZE} to "
            f"{MAX_CHUNK_SIZE} bytes (default {DEFAULT_CHUNK_SIZE})."
        )
    _refuse_existing(target)
    header = _HEADER.pack(MAGIC, _VERSION, chunk_size, os.urandom(8))
    with _open_regular(source) as src, _atomic_output(target) as out:
        out.write(header)
        current = _read_exact(src, chunk_size)
        counter = 0
        while True:
            following = _read_exact(src, chunk_size)
            final = not following
            if counter >= _MAX_CHUNKS:
                raise ConfigError(
                    f"{source} needs more than 2**32 chunks of {chunk_size} bytes; encrypt "
                    "it with a larger chunk_size."
                )
            out.write(
                cipher.encrypt(_nonce(header, counter), current, _aad(header, counter, final=final))
            )
            if final:
                break
            current = following
            counter += 1


def decrypt_file(source: Path, target: Path, key: bytes) -> None:
    """Decrypt ``source`` into a new file ``target``, one authenticated chunk at a time.

    Plaintext goes to a temporary file (mode 0600) beside ``target`` that is renamed
    to ``target`` only after the final chunk authenticated, and deleted on any
    failure: a failed decryption leaves nothing behind. Raises :class:`ConfigError`
    for an existing ``target``, an unreadable ``source`` or a bad key, and
    :class:`ArtifactError` (named after ``source``) for a file that fails to decrypt.
    """
    cipher = _cipher(key)
    _refuse_existing(target)
    name = str(source)
    with _open_regular(source) as src:
        header = _read_exact(src, _HEADER.size)
        chunk_size = _parse_header(header, name)
        with _atomic_output(target) as out:
            for plaintext in _open_chunks(
                cipher, header, _file_pieces(src, chunk_size + _TAG_BYTES), name
            ):
                out.write(plaintext)


def decrypt(data: bytes | memoryview, key: bytes, *, name: str) -> bytes:
    """Decrypt an encrypted artifact held in memory; ``name`` is used in errors.

    Every chunk is authenticated before the plaintext is returned, all or nothing.
    Raises :class:`ArtifactError` (``encrypted-malformed``, ``encrypted-truncated``,
    ``encrypted-wrong-key-or-tampered``) or :class:`ConfigError` for a bad key.
    """
    cipher = _cipher(key)
    view = memoryview(data).cast("B")
    header = bytes(view[: _HEADER.size])
    chunk_size = _parse_header(header, name)
    pieces = _memory_pieces(view[_HEADER.size :], chunk_size + _TAG_BYTES)
    return b"".join(_open_chunks(cipher, header, pieces, name))


# --------------------------------------------------------------------------- format


def _nonce(header: bytes, counter: int) -> bytes:
    return header[-8:] + _COUNTER.pack(counter)


def _aad(header: bytes, counter: int, *, final: bool) -> bytes:
    return header + _COUNTER.pack(counter) + (b"\x01" if final else b"\x00")


def _parse_header(header: bytes, name: str) -> int:
    """Check the header and return its chunk size."""
    if len(header) < _HEADER.size:
        plausible = header[:8] == MAGIC[: len(header)] and header[8:9] in (b"", bytes([_VERSION]))
        if header and plausible:
            raise ArtifactError(
                name,
                "encrypted-truncated",
                f"the file ends inside its {_HEADER.size}-byte header ({len(header)} bytes); "
                "it was cut short, copy it again from the original.",
            )
        raise _malformed(name, "it is too short to be an encrypted artifact")
    magic, version, chunk_size, _prefix = _HEADER.unpack(header)
    if magic != MAGIC:
        raise _malformed(name, "it does not start with secureserve's encryption magic")
    if version != _VERSION:
        raise _malformed(name, f"format version {version} is not supported (only {_VERSION})")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise _malformed(
            name, f"chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
        )
    return int(chunk_size)


def _memory_pieces(body: memoryview, step: int) -> Iterator[tuple[memoryview, bool]]:
    """(sealed chunk, is last) pairs of an in-memory body; the last may be short."""
    offset = 0
    while len(body) - offset > step:
        yield body[offset : offset + step], False
        offset += step
    yield body[offset:], True


def _file_pieces(handle: BinaryIO, step: int) -> Iterator[tuple[bytes, bool]]:
    """(sealed chunk, is last) pairs read from a file, one chunk of lookahead."""
    current = _read_exact(handle, step)
    while True:
        following = _read_exact(handle, step)
        if not following:
            yield current, True
            return
        yield current, False
        current = following


def _open_chunks(
    cipher: AESGCM,
    header: bytes,
    pieces: Iterator[tuple[bytes | memoryview, bool]],
    name: str,
) -> Iterator[bytes]:
    """Yield each chunk's plaintext only after its tag verified."""
    step = int(_HEADER.unpack(header)[2]) + _TAG_BYTES
    for counter, (piece, last) in enumerate(pieces):
        if counter >= _MAX_CHUNKS:
            raise _malformed(name, "it holds more than 2**32 chunks")
        if len(piece) < _TAG_BYTES:
            raise ArtifactError(
                name,
                "encrypted-truncated",
                f"the file ends inside chunk {counter}'s authentication tag; it was cut "
                "short, copy it again from the original.",
            )
        nonce = _nonce(header, counter)
        try:
            plaintext = cipher.decrypt(nonce, piece, _aad(header, counter, final=last))
        except InvalidTag:
            if last and len(piece) == step and _opens(cipher, nonce, piece, header, counter):
                raise ArtifactError(
                    name,
                    "encrypted-truncated",
                    f"the file ends after chunk {counter}, before its final chunk; it was "
                    "cut short, copy it again from the original.",
                ) from None
            raise ArtifactError(
                name,
                "encrypted-wrong-key-or-tampered",
                f"chunk {counter} failed authentication: the key is not the one the file "
                "was encrypted with, or the file was modified, reordered, extended or cut "
                "inside a chunk. Check the key, then copy the file again from the original.",
            ) from None
        yield plaintext


def _opens(
    cipher: AESGCM, nonce: bytes, piece: bytes | memoryview, header: bytes, counter: int
) -> bool:
    """Whether ``piece`` authenticates as a non-final chunk (the file was truncated)."""
    try:
        cipher.decrypt(nonce, piece, _aad(header, counter, final=False))
    except InvalidTag:
        return False
    return True


def _malformed(name: str, why: str) -> ArtifactError:
    return ArtifactError(
        name,
        "encrypted-malformed",
        f"not a secureserve encrypted artifact: {why}. Encrypt the plaintext again with "
        "`secureserve encrypt`.",
    )


# --------------------------------------------------------------------------- files and keys


def _cipher(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigError(
            f"the encryption key must be {KEY_BYTES} bytes (AES-256); load it with "
            "secureserve.encryption.load_key."
        )
    return AESGCM(key)


def _read_exact(handle: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at end of file; no single read exceeds ``size``."""
    data = handle.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = handle.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _refuse_existing(target: Path) -> None:
    if os.path.lexists(target):
        raise ConfigError(
            f"{target} already exists; secureserve never overwrites it. Choose another "
            "target or move the existing file away."
        )


def _open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file."""
    try:
        return open_regular(path, source=str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path} cannot be opened (it does not exist); check the path.") from None


@contextlib.contextmanager
def _atomic_output(target: Path) -> Iterator[BinaryIO]:
    """A 0600 temporary file beside ``target``, renamed to it on success, removed on failure."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(
            f"cannot create a file in {target.parent} ({exc.strerror}); check that the "
            "folder exists and is writable."
        ) from None
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _refuse_existing(target)  # appeared while we worked: still never overwrite
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
