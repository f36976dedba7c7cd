"""Audit verification: find the files of a chain, walk them, report the first break.

:func:`chain_files` lists the rotated files of a log oldest first, then the log;
:func:`verify_chain` checks ``seq`` and ``prev`` line by line across them and
:func:`format_result` says what it found. :func:`rotated_pattern` and :func:`listdir`
also serve the writer, which names rotated files and continues their chain.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from secureserve.audit.records import GENESIS, AuditRecord, parse, sha256

__all__ = [
    "VerifyResult",
    "chain_files",
    "format_result",
    "listdir",
    "rotated_pattern",
    "verify_chain",
]


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`verify_chain` found.

    ``records`` counts the records that verified before the first problem; ``file``
    and ``line`` (1-based) locate that problem. ``head`` is the SHA-256 of the last
    line that verified: compare it with the ``audit chain head`` lines of the
    application log to catch an edited or removed tail.
    """

    ok: bool
    records: int
    first_problem: str | None = None
    file: Path | None = None
    line: int | None = None
    head: str | None = None


def rotated_pattern(path: Path) -> re.Pattern[str]:
    """The names of the rotated files of ``path``: ``<stem>.<n>.jsonl``, ``n`` captured."""
    return re.compile(re.escape(path.stem) + r"\.(\d+)\.jsonl\Z")


def listdir(folder: Path) -> list[Path]:
    """The entries of ``folder``; none when it does not exist."""
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def chain_files(path: Path) -> list[Path]:
    """The rotated files of ``path`` (``<stem>.<n>.jsonl``, by ``n``) then ``path`` if it exists."""
    pattern = rotated_pattern(path)
    rotated = sorted(
        (int(m.group(1)), p) for p in listdir(path.parent) if (m := pattern.match(p.name))
    )
    files = [p for _, p in rotated]
    if path.exists():
        files.append(path)
    return files


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from handle


def verify_chain(paths: Sequence[Path], *, require_genesis: bool = True) -> VerifyResult:
    """Check the chain through ``paths`` (oldest first, see :func:`chain_files`).

    Reports the first problem: a line that is torn or not a record; a ``seq`` that is
    not the previous one plus one (a deleted or reordered record, or a missing or
    swapped file); a ``prev`` that is not the SHA-256 of the previous line (that line
    was edited; across files, the previous file was edited, replaced or one between
    is missing). ``require_genesis=False`` accepts a chain whose oldest files were
    removed on purpose (retention): its first record is then taken on trust.
    """
    if not paths:
        return VerifyResult(ok=False, records=0, first_problem="there is no audit file to verify")
    cursor = _Cursor(require_genesis=require_genesis)
    for path in paths:
        number = 0
        try:
            for raw in _lines(path):
                number += 1
                problem = cursor.advance(raw, first_in_file=number == 1)
                if problem is not None:
                    return cursor.failed(problem, path, number)
        except OSError as exc:
            return cursor.failed(f"the file cannot be read ({exc.strerror})", path, None)
        if number:
            cursor.previous_file = path
    return VerifyResult(ok=True, records=cursor.records, head=cursor.prev)


class _Cursor:
    """Where verification stands: the last good line's hash, the next seq, the file."""

    def __init__(self, *, require_genesis: bool) -> None:
        self.require_genesis = require_genesis
        self.records = 0
        self.prev: str | None = None
        self.expected = 0
        self.previous_file: Path | None = None

    def advance(self, raw: bytes, *, first_in_file: bool) -> str | None:
        """Check one raw line (with its LF); move past it, or say what is wrong with it."""
        if not raw.endswith(b"\n"):
            return (
                "the line is incomplete (no line end): a write was cut short (crash, full "
                "disk) or the file was truncated"
            )
        record = parse(raw[:-1])
        if record is None:
            return "the line is not an audit record (not JSON, or fields missing or wrong)"
        problem = self._link(record, first_in_file=first_in_file)
        if problem is None:
            self.prev, self.expected = sha256(raw[:-1]), record.seq + 1
            self.records += 1
        return problem

    def _link(self, record: AuditRecord, *, first_in_file: bool) -> str | None:
        if self.prev is None:
            return self._genesis(record)
        if record.seq != self.expected:
            if first_in_file:
                return (
                    f"this file starts at seq {record.seq} but {self.previous_file} ended at "
                    f"seq {self.expected - 1}: a file between them is missing, or files were "
                    "swapped"
                )
            what = "deleted" if record.seq > self.expected else "reordered or duplicated"
            return f"seq {record.seq} where {self.expected} was expected: a record was {what}"
        if record.prev == self.prev:
            return None
        if first_in_file:
            return (
                f"prev does not match the last line of {self.previous_file}: that file was "
                "edited or replaced"
            )
        return (
            "prev does not match the hash of the line before: that line was edited (or "
            "lines were reordered)"
        )

    def _genesis(self, record: AuditRecord) -> str | None:
        if self.require_genesis and (record.seq != 0 or record.prev != GENESIS):
            return (
                f"the chain does not start here: seq {record.seq} instead of 0 with the "
                "genesis prev; earlier records or files are missing"
            )
        return None

    def failed(self, problem: str, file: Path, line: int | None) -> VerifyResult:
        return VerifyResult(
            ok=False,
            records=self.records,
            first_problem=problem,
            file=file,
            line=line,
            head=self.prev,
        )


def format_result(result: VerifyResult) -> str:
    """One line when the chain verified, one paragraph naming file, line and problem if not."""
    if result.ok:
        return f"OK: {result.records} audit records verified; chain head sha256 {result.head}."
    where = "" if result.file is None else f" {result.file}"
    if result.line is not None:
        where += f", line {result.line}"
    return (
        f"FAILED:{where}: {result.first_problem}. {result.records} records before it "
        "verified. The audit log was altered or damaged at or just before this point; keep "
        "the files as evidence and compare them with a backup or your log collector."
    )
