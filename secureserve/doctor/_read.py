"""Bounded reads for the doctor: a hostile project must not hang or exhaust it."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from secureserve.errors import ConfigError
from secureserve.secretfiles import read_regular

__all__ = ["MAX_TEXT_BYTES", "read_text"]

#: Dockerfiles, ignore files and manifests larger than this are not read.
MAX_TEXT_BYTES: Final = 1024 * 1024


def read_text(path: Path, *, max_bytes: int = MAX_TEXT_BYTES) -> str | None:
    """The text of a small regular file; None when it is missing, special or too large."""
    try:
        return read_regular(path, max_bytes=max_bytes, source=str(path)).decode(
            "utf-8", errors="replace"
        )
    except (OSError, ConfigError):
        return None
