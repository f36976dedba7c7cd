"""The audit writer: :class:`AuditLog` appends hash-chained records to one file.

It continues an existing chain at start-up, rotates the file at ``max_bytes`` and
keeps ``max_files`` rotated files (recording each removal in the chain), batches
request records per event-loop iteration, counts refusals of unauthenticated callers
per window instead of writing each, notices a file deleted, replaced or made
read-only, and fails closed (:class:`~secureserve.audit.records.AuditUnavailable`)
when it cannot write. Uses the records, verification (to name and continue rotated
files), retention, refusals and digest key modules; none of them uses this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Self

import msgspec

from secureserve._time import utc
from secureserve.audit.digest_key import KEY_BYTES, KEY_HINT
from secureserve.audit.records import (
    DIGEST_PREFIX,
    GENESIS,
    AuditUnavailable,
    RequestEntry,
    request_fields,
    rfc3339,
    sha256,
    shape,
)
from secureserve.audit.refusals import RefusalCounter
from secureserve.audit.retention import last_line, oldest_beyond, pruned_fields, tail
from secureserve.audit.verify import chain_files, listdir, rotated_pattern
from secureserve.errors import ConfigError
from secureserve.secretfiles import fsync_folder
from secureserve.settings import DEFAULT_AUDIT_MAX_FILES, DEFAULT_REFUSAL_WINDOW_S

if sys.platform != "win32":
    import fcntl

__all__ = [
    "AuditLog",
]


class _Unwritable(Exception):  # noqa: N818 - internal signal, never leaves this module
    """The file is there but must not be written (read-only, replaced)."""


_encoder: Final = msgspec.json.Encoder(order="sorted")
#: How long a passed check of the audit file's path is trusted (see AuditLog._ready).
_RECHECK_S: Final = 0.01


def _now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Appends hash-chained records to ``path``; one writer per file (an exclusive lock).

    The folder is created with mode 0700 and the file with 0600. An existing file is
    continued: its last line gives the next ``seq`` and ``prev``. If that line is torn
    or not a record (a crash mid-write, an edit), the file is moved aside as a rotated
    file and a new one continues the chain, so nothing is appended to damage;
    :func:`verify_chain` will still report the damaged line. A file that ``path``
    cannot hold (folder not creatable, another process writing it) is a
    :class:`ConfigError` at start-up, whatever ``on_write_error`` says.

    Each line is written with one ``write`` on an ``O_APPEND`` descriptor and is in
    the kernel's page cache when :meth:`record` returns: a crash of the process loses
    nothing. There is no ``fsync`` per line: on ordinary disks it costs milliseconds
    and would block the event loop on every request, capping throughput; what it
    would protect against (a kernel crash or power loss in the few seconds before
    write-back) leaves a torn or missing tail that verification reports, and the chain
    heads in the application log bound what was lost. The file is fsynced on rotation
    and on :meth:`close`.

    Retention: when a rotation leaves more than ``max_files`` rotated files, the
    oldest are deleted after an ``audit-pruned`` record (which files, and the seq and
    hash of the last line they held) is chained and fsynced, so verification can
    check that the retained chain starts exactly there. If that record cannot be
    written (a full disk), the files are deleted anyway and the record is written
    before the next one. Disk use stays below ``(max_files + 1) * max_bytes``.

    Refusals: :meth:`refused` counts a refusal of an unauthenticated caller; one
    ``refusals`` record per client address, route, status and reason is written per
    ``refusal_window_s`` window (see :mod:`secureserve.audit.refusals` for the bound).

    While serving, the path is compared with the open descriptor (one ``stat`` and one
    ``fstat`` per check): a file made read-only refuses writes until it is writable
    again; a deleted file is an incident, logged as an error and recorded as the first
    line (``audit-file-recreated``) of a new file that continues the chain; a file
    replaced by another one refuses writes until it is removed.
    """

    def __init__(
        self,
        path: Path,
        *,
        digest_key: bytes,
        max_bytes: int = 100 * 1024 * 1024,
        max_files: int = DEFAULT_AUDIT_MAX_FILES,
        refusal_window_s: float = DEFAULT_REFUSAL_WINDOW_S,
        on_write_error: Literal["refuse", "continue"] = "refuse",
        logger: Any = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if not isinstance(digest_key, bytes) or len(digest_key) < KEY_BYTES:
            raise ConfigError(
                f"the audit digest key must be at least {KEY_BYTES} bytes; load it with "
                f"secureserve.audit.load_digest_key ({KEY_HINT})."
            )
        if max_bytes < 1:
            raise ConfigError("[audit] max_bytes must be positive.")
        if max_files < 1:
            raise ConfigError("[audit] max_files must be at least 1 (rotated files kept).")
        if not 0 <= refusal_window_s < float("inf"):
            raise ConfigError("[audit] refusal_window_s must be 0 or a positive number.")
        if logger is None:
            from secureserve.logs import get_logger  # noqa: PLC0415 - only when none is given

            logger = get_logger("secureserve.audit")
        self.path = path
        self.on_write_error = on_write_error
        self._mac = hmac.new(digest_key, digestmod=hashlib.sha256)
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._log = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._checked_until = 0.0  # _ready looked at the path and found it fine until then
        self._ident = (0, 0)
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        self._rotated_from: str | None = None
        self._notes: list[dict[str, Any]] = []
        self._batch: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._torn = False
        self._outage: str | None = None
        self._lost = 0
        self._closed = False
        self._refusals = RefusalCounter(
            window_s=refusal_window_s,
            write=self._write_refusals,
            clock=lambda: utc(self._clock()),
        )
        try:
            self._start()
        except OSError as exc:
            raise ConfigError(
                f"[audit] path {path} cannot be opened for appending ({exc.strerror}); check "
                "that its folder can be created and written by this user."
            ) from None

    # ----------------------------------------------------------------------- public

    def digest(self, data: bytes | memoryview) -> str:
        """``"hmac-sha256:" + hex HMAC-SHA256(digest_key, data)``: equal data, equal digest.

        Without the key, a digest does not let anyone confirm a guessed input.
        """
        mac = self._mac.copy()  # the keyed state is computed once, not per digest
        mac.update(data)
        return DIGEST_PREFIX + mac.hexdigest()

    def record(self, **fields: Any) -> None:
        """Append one record; ``time``, ``seq``, ``prev`` (and ``rotated_from``) are filled in.

        ``fields`` are :class:`AuditRecord` fields; a wrong name or type, a digest field
        that is not a digest, or a missing ``route``/``decision``/``status`` (request)
        or ``action`` (admin) is a programming error (:class:`TypeError` /
        :class:`ValueError`). An unwritable log raises :class:`AuditUnavailable` in
        "refuse" mode; in "continue" mode it logs one error per outage and returns.
        """
        self._commit(shape(fields))

    def request(self, entry: RequestEntry) -> None:
        """Append a request record: :meth:`record` for the hot path.

        Every field comes from secureserve itself (typed, bounded: route names, ids
        matching fixed patterns, digests made by :meth:`digest`), so the generic
        validation of :meth:`record` is skipped; the line is the same.
        """
        self._commit(request_fields(entry))

    async def request_async(self, entry: RequestEntry) -> None:
        """:meth:`request` with one ``write`` per event-loop iteration for every record queued.

        Returns once this record is in the file (a prediction still never answers
        before its record is written); raises :class:`AuditUnavailable` like
        :meth:`request`. The records of one iteration are chained in order and written
        with a single system call instead of one each.
        """
        line_fields = request_fields(entry)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush_batch)
        self._batch.append((line_fields, future))
        await future

    def refused(
        self,
        *,
        client: str,
        route: str,
        status: int,
        reason: str | None,
        request_id: str,
    ) -> None:
        """Count a refusal of a caller that did not authenticate; never raises.

        ``client`` is its address, ``reason`` the application log's reason and
        ``request_id`` names it in the application log. One ``refusals`` record per
        (client, route, status, reason) and window carries the count; a window's
        records are written when it ends and at :meth:`close`. Refusals that cannot be
        written count as lost records (see ``audit-resumed``).
        """
        self._refusals.add(
            client=client, route=route, status=status, reason=reason, request_id=request_id
        )

    def _write_refusals(self, records: list[dict[str, Any]]) -> None:
        """Write one window's refusals records; a failure is an outage, logged once, not raised."""
        with self._lock:
            try:
                self._commit_many(records)
            except (OSError, _Unwritable) as exc:
                self._lost += len(records)
                reason = _reason(exc)
            else:
                return
        with contextlib.suppress(AuditUnavailable):  # no request to refuse: logged and counted
            self._failed(reason)

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        reason = None
        with self._lock:
            try:
                self._commit_many([fields for fields, _ in batch])
            except (OSError, _Unwritable) as exc:
                self._lost += len(batch)
                reason = _reason(exc)
        for _, future in batch:
            if future.done():
                continue
            if reason is None:
                future.set_result(None)
                continue
            try:
                self._failed(reason)
            except AuditUnavailable as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

    def _commit_many(self, batch: list[dict[str, Any]]) -> None:
        """Write ``batch`` in order, with one ``write`` when possible; the caller holds the lock."""
        self._ready(recent_ok=True)
        if self._outage is not None or self._notes:
            for fields in batch:  # the resumed/notes records go first: one by one
                self._commit_locked(fields)
        else:
            self._write_batch(batch)

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        """Chain and write ``batch`` with one ``write``; on any failure the state is as before."""
        fd = self._fd
        if fd is None:
            raise _Unwritable("no audit file is open")
        saved = (self._seq, self._prev, self._rotated_from)
        lines = []
        for fields in batch:
            line = self._line(fields)
            lines.append(line)
            self._prev, self._seq, self._rotated_from = sha256(line[:-1]), self._seq + 1, None
        data = b"".join(lines)
        if self._size and self._size + len(data) > self._max_bytes:
            self._seq, self._prev, self._rotated_from = saved
            for fields in batch:  # crosses the rotation size: the careful path, one by one
                self._append(fields)
            return
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            self._seq, self._prev, self._rotated_from = saved
            if written:  # remove the partial lines, or move the file aside on next use
                try:
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                except OSError:
                    self._torn = True
            raise
        self._size += len(data)

    def _commit_locked(self, line_fields: dict[str, Any]) -> None:
        """:meth:`_commit` for a caller that holds the lock and handles failures."""
        if self._outage is not None:
            self._append(self._note("audit-resumed", self._resumed_detail()))
            self._log.warning("audit log writable again", path=str(self.path))
            self._outage, self._lost = None, 0
        while self._notes:
            self._append(self._notes[0])
            self._notes.pop(0)
        self._append(line_fields)

    def _commit(self, line_fields: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._ready()
                self._commit_locked(line_fields)
            except (OSError, _Unwritable) as exc:
                self._lost += 1
                self._failed(_reason(exc))

    def admin(
        self,
        *,
        action: str,
        principal: str | None = None,
        roles: Sequence[str] = (),
        request_id: str | None = None,
        trigger: str | None = None,
        model: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record an admin action (``reload``, ``key-added``, ...); fails like :meth:`record`.

        ``request_id`` names the request that asked for it, ``trigger`` anything else
        (``SIGHUP``, ``keys-file``); ``detail`` is short and must be safe to keep.
        """
        self.record(
            event="admin",
            action=action,
            principal=principal,
            roles=list(roles),
            request_id=request_id,
            trigger=trigger,
            model=model,
            detail=detail,
        )

    def check_writable(self) -> None:
        """Cheaply check that a record could be written now; call before predicting.

        Raises :class:`AuditUnavailable` (in "refuse" mode) when the file was made
        read-only, was replaced by another file, or was deleted and cannot be
        recreated. A write error from the disk (full, I/O) is only seen by the next
        :meth:`record`, which is still refused.
        """
        with self._lock:
            try:
                self._ready()
            except (OSError, _Unwritable) as exc:
                self._failed(_reason(exc))

    def close(self) -> None:
        """Write counted refusals and pending notes, fsync, log the chain head, release the file."""
        self._refusals.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                for note in self._notes:
                    self._write(fd, note)
                os.fsync(fd)
            except OSError as exc:
                self._log.error("audit log not flushed on close", reason=_reason(exc))
            finally:
                os.close(fd)
            self._log_head("close")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- start-up

    def _start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            self._continue_from_rotated()
            self._open_new()
            return
        try:
            info = os.fstat(fd)
            self._require_regular(info)
            self._lock_file(fd)
            last = tail(fd)
        except BaseException:
            os.close(fd)
            raise
        if last is None:  # empty: continue from the newest rotated file, if any
            self._continue_from_rotated()
        elif last.clean:
            self._prev, self._seq = last.hash, last.next_seq
        else:
            self._prev, self._seq = last.hash, last.next_seq
            target = self._rotated_name()
            self.path.rename(target)
            os.close(fd)
            fsync_folder(self.path.parent)
            self._rotated_from = target.name
            self._log.warning(
                "audit log ended with a torn or invalid line; moved it aside and started a "
                "new file (audit verify will report the damaged line)",
                path=str(self.path),
                moved_to=str(target),
            )
            self._open_new()
            self._prune()
            return
        self._adopt(fd, info.st_size)

    def _require_regular(self, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"[audit] path {self.path} is not a regular file; name a file.")

    def _continue_from_rotated(self) -> None:
        rotated = [p for p in chain_files(self.path) if p != self.path]
        if not rotated:
            return
        fd = os.open(rotated[-1], os.O_RDONLY | os.O_CLOEXEC)
        try:
            last = tail(fd)
        finally:
            os.close(fd)
        if last is not None:
            self._prev, self._seq = last.hash, last.next_seq
            self._rotated_from = rotated[-1].name

    def _lock_file(self, fd: int) -> None:
        if sys.platform == "win32":  # pragma: no cover - POSIX only
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"[audit] path {self.path} is being written by another process (or another "
                "AuditLog in this one); each process needs its own audit file. With several "
                "workers, give each its own [audit] path, or run one worker per container."
            ) from None

    def _open_new(self) -> None:
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC) | getattr(
            os, "O_NOFOLLOW", 0
        )
        fd = os.open(self.path, flags, 0o600)
        try:
            self._lock_file(fd)
        except BaseException:
            os.close(fd)
            raise
        fsync_folder(self.path.parent)
        self._adopt(fd, 0)

    def _adopt(self, fd: int, size: int) -> None:
        info = os.fstat(fd)
        self._fd, self._ident, self._size = fd, (info.st_dev, info.st_ino), size

    def _rotated_name(self) -> Path:
        pattern = rotated_pattern(self.path)
        numbers = [
            int(m.group(1)) for p in listdir(self.path.parent) if (m := pattern.match(p.name))
        ]
        return self.path.with_suffix(f".{max(numbers, default=0) + 1}.jsonl")

    # ----------------------------------------------------------------------- writing

    def _ready(self, *, recent_ok: bool = False) -> None:
        """Make sure the open descriptor is the file at ``path`` and may be written.

        With ``recent_ok`` (writing a batch whose requests each passed
        :meth:`check_writable` just before), a check of the path younger than
        :data:`_RECHECK_S` is trusted instead of looking again: one ``lstat`` per
        request instead of two. A write error from the disk is seen by the write itself.
        """
        if self._closed:
            raise _Unwritable("the audit log is closed")
        if self._fd is None:
            self._open_new()  # after a rotation or a deletion whose recreation failed
            return
        if self._torn:
            self._rotate()
            return
        now = time.monotonic()
        if recent_ok and now < self._checked_until:
            return
        self._checked_until = 0.0  # trusted again only once this look has passed
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            self._recreate()
            return
        if (info.st_dev, info.st_ino) != self._ident:
            raise _Unwritable("the audit file was replaced by another file; remove it")
        if not info.st_mode & stat.S_IWUSR:
            raise _Unwritable("the audit file was made read-only")
        self._checked_until = now + _RECHECK_S

    def _recreate(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._log.error(
            "audit file was deleted while open; starting a new file that continues the "
            "chain (the records it held are lost unless a copy exists)",
            path=str(self.path),
            seq=self._seq,
        )
        self._notes.append(
            self._note(
                "audit-file-recreated",
                "the audit file was deleted while the server was running; "
                "records before this one are not in this file",
            )
        )
        self._torn = False
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._open_new()

    def _note(self, action: str, detail: str) -> dict[str, Any]:
        return shape({"event": "admin", "action": action, "trigger": "audit", "detail": detail})

    def _resumed_detail(self) -> str:
        return (
            f"the audit log could not be written ({self._outage}); "
            f"{self._lost} records were not written"
        )

    def _append(self, fields: dict[str, Any]) -> None:
        fd = self._fd
        if fd is None:
            raise _Unwritable("no audit file is open")
        line = self._line(fields)
        if self._size and self._size + len(line) > self._max_bytes:
            self._rotate()
            fd = self._fd
            if fd is None:  # pragma: no cover - _rotate opens the new file or raises
                raise _Unwritable("no audit file is open")
            line = self._line(fields)
        self._write(fd, fields, line)

    def _line(self, fields: dict[str, Any]) -> bytes:
        fields = {**fields, "time": rfc3339(utc(self._clock())), "seq": self._seq}
        fields["prev"] = self._prev
        if self._rotated_from is not None:
            fields["rotated_from"] = self._rotated_from
        return _encoder.encode(fields) + b"\n"

    def _write(self, fd: int, fields: dict[str, Any], line: bytes | None = None) -> None:
        line = self._line(fields) if line is None else line
        written = 0
        try:
            while written < len(line):
                written += os.write(fd, line[written:])
        except OSError:
            if written:  # remove the partial line, or move the file aside on next use
                try:
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                except OSError:
                    self._torn = True
            raise
        self._size += len(line)
        self._prev = sha256(line[:-1])
        self._seq += 1
        self._rotated_from = None

    def _rotate(self) -> None:
        fd = self._fd
        if fd is None:  # pragma: no cover - callers hold an open file
            raise _Unwritable("no audit file is open")
        os.fsync(fd)
        target = self._rotated_name()
        self.path.rename(target)
        self._fd = None
        os.close(fd)
        fsync_folder(self.path.parent)
        self._rotated_from = target.name
        self._torn = False
        self._log_head("rotation", rotated_to=str(target))
        self._open_new()
        self._prune()

    def _prune(self) -> None:
        """Delete the rotated files beyond ``max_files``, after chaining a record that says so."""
        fd = self._fd
        victims = oldest_beyond(self.path, self._max_files)
        if not victims or fd is None:
            return
        names = [p.name for p in victims]
        try:
            end = last_line(victims)
        except OSError as exc:
            self._log.error("old audit files not removed", files=names, reason=_reason(exc))
            return
        note = pruned_fields(victims, end, self._max_files)
        try:
            self._write(fd, note)
        except OSError as exc:  # a full disk, most likely: removing the files is the remedy
            self._notes.append(note)
            self._log.error(
                "audit-pruned record not written yet; it goes before the next record",
                files=names,
                reason=_reason(exc),
            )
        else:
            _fsync(fd)  # the record is on disk before the files it names are gone
        for victim in victims:
            try:
                victim.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._log.error("old audit file not removed", file=str(victim), reason=_reason(exc))
        fsync_folder(self.path.parent)
        self._log.info(
            "old audit files removed",
            files=names,
            max_files=self._max_files,
            pruned_last_seq=note.get("pruned_last_seq"),
        )

    def _failed(self, reason: str) -> None:
        if self._outage is None:
            self._outage = reason
            self._log.error(
                "audit log cannot be written",
                path=str(self.path),
                reason=reason,
                on_write_error=self.on_write_error,
                consequence=(
                    "predictions are refused (503) until it can"
                    if self.on_write_error == "refuse"
                    else "requests are served without audit records"
                ),
            )
        if self.on_write_error == "refuse":
            raise AuditUnavailable(reason)

    def _log_head(self, why: str, **extra: Any) -> None:
        self._log.info(
            "audit chain head",
            path=str(self.path),
            why=why,
            next_seq=self._seq,
            head=self._prev,
            **extra,
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def _fsync(fd: int) -> None:
    """Best effort: the caller goes on whether the disk confirms or not."""
    with contextlib.suppress(OSError):
        os.fsync(fd)
