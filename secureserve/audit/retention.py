"""Audit retention: which rotated files go when there are more than ``max_files``.

:func:`oldest_beyond` picks them, :func:`last_line` says where the removed part of the
chain ended (what the first retained record must continue), and :func:`pruned_fields`
is the ``audit-pruned`` admin record that the writer chains before it deletes them,
so that :func:`~secureserve.audit.verify.verify_chain` can check that the retained
chain starts exactly there. :func:`tail` reads the last line of a file for that and
for the writer, which continues a chain from it. Uses the records and verification
modules; only the writer uses this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from secureserve.audit.records import PRUNED, parse, sha256, shape
from secureserve.audit.verify import chain_files

__all__ = [
    "LastLine",
    "last_line",
    "oldest_beyond",
    "pruned_fields",
    "tail",
]


class LastLine(NamedTuple):
    """Where the records of a file end: the hash of its last line, the seq that follows."""

    hash: str
    next_seq: int
    clean: bool  # the last line is a whole record (not torn, not garbled)


def tail(fd: int) -> LastLine | None:
    """The last line of the file open as ``fd``, or None if the file is empty.

    The hash covers the last line's bytes without its LF (or the torn fragment); the
    next seq follows the last line that is a record (0 if none).
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    end = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size
    clean = end < size
    start, block = end, 8192
    while start > 0:  # read backwards until the LF before the last line
        lower = max(0, start - block)
        chunk = os.pread(fd, start - lower, lower)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            start = lower + cut + 1
            break
        start = lower
    last = os.pread(fd, end - start, start)
    record = parse(last) if clean else None
    if record is not None:
        return LastLine(sha256(last), record.seq + 1, clean=True)
    next_seq = 0
    for line in reversed(os.pread(fd, start, 0).split(b"\n")):  # rare: damaged tail
        earlier = parse(line)
        if earlier is not None:
            next_seq = earlier.seq + 1
            break
    return LastLine(sha256(last), next_seq, clean=False)


def oldest_beyond(path: Path, max_files: int) -> list[Path]:
    """The oldest rotated files of ``path`` beyond the newest ``max_files``, oldest first."""
    rotated = [p for p in chain_files(path) if p != path]
    return rotated[: max(0, len(rotated) - max_files)]


def last_line(files: list[Path]) -> LastLine | None:
    """The last line of the newest of ``files`` that has one; None if all are empty."""
    for path in reversed(files):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        try:
            found = tail(fd)
        finally:
            os.close(fd)
        if found is not None:
            return found
    return None


def pruned_fields(files: list[Path], end: LastLine | None, max_files: int) -> dict[str, Any]:
    """The ``audit-pruned`` admin record for removing ``files``, whose lines ended at ``end``.

    ``pruned_last_seq`` and ``pruned_last_hash`` are the seq and hash of the last line
    removed: the first retained record must have the next seq and that hash as
    ``prev``. Both are null when the removed files held no record at all (then no
    retained chain can be shown to continue them, and verification says so).
    """
    names = [p.name for p in files]
    removed = names[0] if len(names) == 1 else f"{len(names)} files, {names[0]} to {names[-1]}"
    last_seq, last_hash = None, None
    if end is not None and end.next_seq > 0:
        last_seq, last_hash = end.next_seq - 1, end.hash
    return shape(
        {
            "event": "admin",
            "action": PRUNED,
            "trigger": "audit",
            "detail": f"[audit] max_files = {max_files}: removed {removed}",
            "pruned_files": names,
            "pruned_last_seq": last_seq,
            "pruned_last_hash": last_hash,
        }
    )
