"""The walk over a project that finds its key files and the secrets written in files.

This module owns the search, not the judgement. The project folder is walked once,
without following symbolic links, over at most :data:`MAX_ENTRIES` files and folders;
environments, caches and version control are skipped. A file is a key when it is
named ``*.key``, is a key file the settings name, or holds a PEM ``PRIVATE KEY``
block; every other regular file up to 16 MiB (larger ones are weights or data) is
read in overlapping chunks for API keys (``ss_<id>_<secret>``) and model encryption
keys written next to their variable's name. What is found is returned as a
:class:`Scan`; :mod:`secureserve.doctor.leaks` decides what of it is an error.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from secureserve.config import Settings

__all__ = ["MAX_ENTRIES", "Scan", "scan"]

#: Folders never searched: environments, caches and version control.
_SKIPPED_DIRS: Final = frozenset(
    {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".nox"}
    | {".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
#: At most this many files and folders are looked at (a project, not a disk).
MAX_ENTRIES: Final = 20_000
#: Files larger than this are not searched (weights and data, not keys).
_MAX_SCANNED_BYTES: Final = 16 * 1024 * 1024
_CHUNK: Final = 1024 * 1024
#: Chunks overlap by this much, so that no match is cut in two.
_OVERLAP: Final = 512
_PEM_PRIVATE: Final = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_API_KEY: Final = re.compile(rb"ss_([0-9a-f]{12})_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
#: The variable's name followed closely by a base64 32-byte key, in whatever syntax
#: (``NAME=key``, ``ENV NAME key``, ``name: NAME`` then ``value: "key"``, Python).
_ENCRYPTION_KEY: Final = re.compile(
    rb"SECURESERVE_MODEL__ENCRYPTION_KEY.{0,120}?(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=",
    re.DOTALL,
)


@dataclass
class Scan:
    """What the walk found: key files, secrets written in files, and whether it stopped early."""

    keys: list[Path] = field(default_factory=list)
    #: (file, line number, what) for each secret written in a file.
    secrets: list[tuple[Path, int, str]] = field(default_factory=list)
    truncated: bool = False


def scan(project: Path, settings: Settings | None) -> Scan:
    """Walk ``project`` for key files and written secrets (``settings`` name key files)."""
    named = _named_key_files(project, settings)
    found = Scan()
    entries = 0
    for root, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        entries += len(dirs) + len(files)
        if entries > MAX_ENTRIES:
            found.truncated = True
            return found
        for name in sorted(files):
            path = Path(root) / name
            if name.endswith(".key") or path in named:
                if _is_regular(path):
                    found.keys.append(path)
                continue
            _search(path, found)
    return found


def _named_key_files(project: Path, settings: Settings | None) -> set[Path]:
    """Key files the settings name, as paths inside ``project`` (others are not shipped)."""
    if settings is None:
        return set()
    named = [settings.audit.digest_key_file, settings.tls.key]
    named += [model.encryption_key_file for model in settings.served().values()]
    root = os.path.realpath(project)
    return {
        Path(project, os.path.relpath(os.path.realpath(p), root))
        for p in named
        if p is not None and os.path.realpath(p).startswith(root + os.sep)
    }


def _search(path: Path, found: Scan) -> None:
    """Look for a private key, API keys and encryption keys in one regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_SCANNED_BYTES:
            return
        tail, lines = b"", 0
        while chunk := os.read(fd, _CHUNK):
            data = tail + chunk
            if _PEM_PRIVATE.search(data):
                found.keys.append(path)
                return
            for match in _secrets_in(data, seen=len(tail)):
                line = lines + data.count(b"\n", 0, match[0]) + 1
                found.secrets.append((path, line, match[1]))
            tail = data[-_OVERLAP:]
            lines += data.count(b"\n") - tail.count(b"\n")
    except OSError:
        return
    finally:
        os.close(fd)


def _secrets_in(data: bytes, *, seen: int) -> Iterator[tuple[int, str]]:
    """(offset, what) of each secret in ``data`` that does not end in its first ``seen`` bytes."""
    for match in _API_KEY.finditer(data):
        if match.end() > seen:
            yield match.start(), f"API key ss_{match.group(1).decode()}_..."
    for match in _ENCRYPTION_KEY.finditer(data):
        if match.end() > seen:
            yield match.start(), "model encryption key"


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
