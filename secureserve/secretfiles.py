"""Small files secureserve reads, and files that hold secrets.

Keys are created private from the first instant and read only when private. Used for
the encryption key, the audit digest key and the signing key pair, so that the rules
are written once: a new file is created with ``O_EXCL`` and its final mode (never
replacing an existing key, whose loss would orphan what it protects), and a key is
read through one descriptor that must be a regular file no one but its owner can read
or write. Messages name the file and the fix, never its content.

:func:`open_regular` opens what secureserve reads (artifacts streamed for encryption
included) and :func:`read_regular` is the bounded read behind every small file
(settings, key records, lock, signature, JWKS): a FIFO, a device or a directory in its
place is refused instead of blocking or filling memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from secureserve.errors import ConfigError

__all__ = ["create_new", "fsync_folder", "open_regular", "read_private", "read_regular"]


def create_new(path: Path, content: bytes, *, mode: int = 0o600, keeps: str = "") -> None:
    """Create ``path`` with ``mode`` and ``content``; never follow a link or replace a file.

    ``keeps`` says what an overwrite would break, for the refusal message.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        why = f" ({keeps})" if keeps else ""
        raise ConfigError(
            f"{path} already exists; secureserve never overwrites a key{why}. Choose another path."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path} cannot be created ({exc.strerror}); check that its folder exists and "
            "is writable."
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have removed bits
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def open_regular(path: Path, *, source: str) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file.

    ``source`` names it in messages. ``FileNotFoundError`` is left to the caller (a
    missing file means different things to different callers); any other problem is a
    :class:`ConfigError`. The file is opened without blocking, so a FIFO put in its
    place cannot hang the reader, and checked through the descriptor that is returned.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(
            f"{source} cannot be read ({exc.strerror}); check that this user may read it."
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{source} is not a regular file; point it at the file itself.")
    return os.fdopen(fd, "rb")


def read_regular(path: Path, *, max_bytes: int, source: str) -> bytes:
    """The content of ``path``, a regular file of at most ``max_bytes`` bytes.

    Opened by :func:`open_regular` (so ``FileNotFoundError`` is the caller's too).
    """
    with open_regular(path, source=source) as handle:
        content = handle.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise ConfigError(f"{source} is larger than {max_bytes} bytes; check the path.")
    return content


def read_private(path: Path, *, source: str, exposure: str, hint: str, max_bytes: int) -> bytes:
    """The content of a small key file that only its owner may read or write.

    ``source`` names it in messages (``"[audit] digest_key_file /run/k"``), ``exposure``
    says what a reader of a loose file could do, ``hint`` how to create one. Symbolic
    links are followed (Kubernetes secret volumes are made of them); the checks apply to
    the file that was opened, through the same descriptor that is read.
    """
    try:
        handle = open_regular(path, source=source)
    except FileNotFoundError:
        raise ConfigError(f"{source} does not exist; check the path, or {hint}.") from None
    with handle:
        permissions = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if os.name != "nt" and permissions & 0o077:
            raise ConfigError(
                f"{source} can be read or written by users other than its owner (mode "
                f"{permissions:04o}); {exposure}. Restrict it with `chmod 600 {path}`."
            )
        content = handle.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise ConfigError(f"{source} is too large to be a key file; point it at the key file.")
    return content


def fsync_folder(folder: Path) -> None:
    """Make a rename or creation in ``folder`` durable; best effort.

    The rename is done either way, and not every platform or file system lets a folder
    be synced.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
