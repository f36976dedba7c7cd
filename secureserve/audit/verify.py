"""Audit verification: find the files of a chain, walk them, report the first break.

:func:`chain_files` lists the rotated files of a log oldest first, then the log;
:func:`verify_chain` checks ``seq`` and ``prev`` line by line across them, and that
the chain starts at genesis or where an ``audit-pruned`` record says the retained
part starts; :func:`format_result` says what it found and where the chain starts.
:func:`rotated_pattern` and :func:`listdir` also serve the writer, which names
rotated files and continues their chain.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from secureserve.audit.records import GENESIS, PRUNED, AuditRecord, parse, sha256

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

    Where the chain starts: ``start_seq`` is the seq of its first record (0 for the
    whole chain). A later start is accounted for by the ``audit-pruned`` record at
    seq ``pruned_at``, which removed ``pruned_files``; ``pruned_at`` None with a
    later start means it was taken on trust (``require_genesis=False``).
    ``unfinished_prune`` is the seq of a later ``audit-pruned`` record whose files
    are still here (the server stopped before removing them).
    """

    ok: bool
    records: int
    first_problem: str | None = None
    file: Path | None = None
    line: int | None = None
    head: str | None = None
    start_seq: int | None = None
    pruned_files: tuple[str, ...] = ()
    pruned_at: int | None = None
    unfinished_prune: int | None = None


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
    is missing).

    Once the walk is through, the start: the first record must be the genesis
    (seq 0, ``prev`` all zeros) or continue exactly where an ``audit-pruned`` record
    in the chain says the removed files ended (its ``pruned_last_seq`` + 1 and
    ``pruned_last_hash``): normally the last such record; an earlier one when the
    server stopped before removing the files the last one names (more is kept than
    it says). Any other start means files or lines were removed outside retention and
    is reported at the first line. ``require_genesis=False`` takes such a start on
    trust (files removed by hand).
    """
    if not paths:
        return VerifyResult(ok=False, records=0, first_problem="there is no audit file to verify")
    cursor = _Cursor()
    for path in paths:
        number = 0
        try:
            for raw in _lines(path):
                number += 1
                problem = cursor.advance(raw, path, first_in_file=number == 1)
                if problem is not None:
                    return cursor.failed(problem, path, number)
        except OSError as exc:
            return cursor.failed(f"the file cannot be read ({exc.strerror})", path, None)
        if number:
            cursor.previous_file = path
    return cursor.finished(require_genesis=require_genesis)


class _Cursor:
    """Where verification stands: the last good line's hash, the next seq, the file.

    Also the first record and file, the last ``audit-pruned`` record and the latest one
    that accounts for the first record: O(1) memory, however long the chain.
    """

    def __init__(self) -> None:
        self.records = 0
        self.prev: str | None = None
        self.expected = 0
        self.previous_file: Path | None = None
        self.start: AuditRecord | None = None
        self.start_file: Path | None = None
        self.last_prune: AuditRecord | None = None
        self.accounting_prune: AuditRecord | None = None

    def advance(self, raw: bytes, path: Path, *, first_in_file: bool) -> str | None:
        """Check one raw line (with its LF); move past it, or say what is wrong with it."""
        if not raw.endswith(b"\n"):
            return (
                "the line is incomplete (no line end): a write was cut short (crash, full "
                "disk) or the file was truncated"
            )
        record = parse(raw[:-1])
        if record is None:
            return "the line is not an audit record (not JSON, or fields missing or wrong)"
        if self.start is None:
            self.start, self.start_file = record, path
        else:
            problem = self._link(record, first_in_file=first_in_file)
            if problem is not None:
                return problem
        if record.event == "admin" and record.action == PRUNED:
            self.last_prune = record
            if _continues(self.start, record):
                self.accounting_prune = record
        self.prev, self.expected = sha256(raw[:-1]), record.seq + 1
        self.records += 1
        return None

    def _link(self, record: AuditRecord, *, first_in_file: bool) -> str | None:
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

    def finished(self, *, require_genesis: bool) -> VerifyResult:
        """The result once every line verified: where the chain starts, and whether it may."""
        start, last, accounting = self.start, self.last_prune, self.accounting_prune
        if start is None:
            return VerifyResult(ok=True, records=self.records, head=self.prev)
        genesis = start.seq == 0 and start.prev == GENESIS
        if not genesis and accounting is None and require_genesis:
            return VerifyResult(
                ok=False,
                records=0,
                first_problem=_start_problem(start, last),
                file=self.start_file,
                line=1,
            )
        unfinished = None
        if last is not None and (genesis or last is not accounting):
            unfinished = last.seq
        return VerifyResult(
            ok=True,
            records=self.records,
            head=self.prev,
            start_seq=start.seq,
            pruned_files=() if genesis or accounting is None else accounting.pruned_files or (),
            pruned_at=None if genesis or accounting is None else accounting.seq,
            unfinished_prune=unfinished,
        )

    def failed(self, problem: str, file: Path, line: int | None) -> VerifyResult:
        return VerifyResult(
            ok=False,
            records=self.records,
            first_problem=problem,
            file=file,
            line=line,
            head=self.prev,
        )


def _continues(start: AuditRecord | None, prune: AuditRecord) -> bool:
    """Whether ``start`` is the record right after the last line ``prune`` removed."""
    return (
        start is not None
        and prune.pruned_last_seq is not None
        and start.seq == prune.pruned_last_seq + 1
        and start.prev == prune.pruned_last_hash
    )


def _start_problem(start: AuditRecord, last_prune: AuditRecord | None) -> str:
    if last_prune is None:
        return (
            f"the chain does not start here: seq {start.seq} instead of 0 with the genesis "
            "prev, and no audit-pruned record says older files were removed; earlier "
            "records or files are missing"
        )
    if last_prune.pruned_last_seq is None:
        said = "names no record to continue (the files it removed held none)"
    else:
        said = f"says the retained chain starts at seq {last_prune.pruned_last_seq + 1}"
    return (
        f"the chain does not start here: seq {start.seq}, but the last audit-pruned record "
        f"(seq {last_prune.seq}) {said}; files were removed outside retention, or this line "
        "or that record was altered"
    )


_SHOWN_NAMES = 3


def _start_text(result: VerifyResult) -> str:
    """Where a verified chain starts, for :func:`format_result`; empty when nothing is known."""
    if result.start_seq is None:
        return ""
    if result.start_seq == 0 and result.pruned_at is None:
        text = " from the start of the chain (seq 0)"
    elif result.pruned_at is None:
        text = (
            f"; the retained chain starts at seq {result.start_seq}, taken on trust (no "
            "audit-pruned record accounts for the records before it)"
        )
    else:
        names = list(result.pruned_files[:_SHOWN_NAMES])
        if len(result.pruned_files) > _SHOWN_NAMES:
            names.append(f"and {len(result.pruned_files) - _SHOWN_NAMES} more")
        text = (
            f"; the retained chain starts at seq {result.start_seq} (older files pruned: "
            f"{', '.join(names)}; audit-pruned record at seq {result.pruned_at})"
        )
    if result.unfinished_prune is not None:
        text += (
            f"; the audit-pruned record at seq {result.unfinished_prune} names files that "
            "are still here (their removal did not finish; the next rotation removes them)"
        )
    return text


def format_result(result: VerifyResult) -> str:
    """One line when the chain verified, one paragraph naming file, line and problem if not."""
    if result.ok:
        return (
            f"OK: {result.records} audit records verified{_start_text(result)}; "
            f"chain head sha256 {result.head}."
        )
    where = "" if result.file is None else f" {result.file}"
    if result.line is not None:
        where += f", line {result.line}"
    return (
        f"FAILED:{where}: {result.first_problem}. {result.records} records before it "
        "verified. The audit log was altered or damaged at or just before this point; keep "
        "the files as evidence and compare them with a backup or your log collector."
    )
