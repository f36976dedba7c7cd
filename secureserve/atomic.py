"""Files written whole or not at all.

:func:`write_atomically` writes a new file beside the target (created exclusively, with
its final mode less the umask, never following a link), syncs it and renames it over
the target, so a reader sees either the old file or the new one and never a part.
(The folder is not synced: after a power loss the rename itself may be lost, leaving
the old file whole.)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

__all__ = ["write_atomically"]

_NEW: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_FLAGS: Final = _NEW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to a new file created with ``mode``, then move it over ``path``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, _FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)  # os.replace: atomic on the same file system
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
