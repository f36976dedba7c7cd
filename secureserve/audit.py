"""The audit trail: a hash-chained JSON-lines log, separate from the application log.

One line per prediction request and per admin action (reload, key changes), each a
compact JSON object with sorted keys, terminated by LF. Inputs and outputs appear only
as keyed digests (``hmac-sha256:<hex>``, see :meth:`AuditLog.digest`), never raw.

Chain. Every record carries ``seq`` (0, 1, 2, ... without gaps) and ``prev``, the hex
SHA-256 of the exact bytes of the previous line without its LF (``"0" * 64`` for the
first record ever). When a file reaches ``max_bytes`` it is renamed to
``<stem>.<n>.jsonl`` (``n`` increasing) and the chain continues in a new file whose
first record names the old one in ``rotated_from``. :func:`verify_chain` walks the
files oldest first and reports the first line that breaks the chain: an edited line
shows up on the line after it (its ``prev`` no longer matches), a deleted or moved line
on its own position (``seq`` jumps), a missing or swapped file on the first line of the
file after it. Editing the very last line cannot be seen from inside the chain; compare
the chain head that verification prints with the ``audit chain head`` lines the server
writes to its application log at every rotation and at shutdown.

Failure. When a record cannot be written (disk full, file made read-only, folder gone)
the default (``on_write_error="refuse"``) raises :class:`AuditUnavailable`, a 503 with
``Retry-After``, so the caller refuses the request (fail closed). ``"continue"`` logs
one error per outage and serves on; when writing works again, an ``audit-resumed``
record states how many records were lost.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

import msgspec

from secureserve._time import utc
from secureserve.errors import ConfigError, RequestRejected
from secureserve.secretfiles import create_new, read_private

if sys.platform != "win32":
    import fcntl

__all__ = [
    "DIGEST_PREFIX",
    "GENESIS",
    "AuditLog",
    "AuditRecord",
    "AuditUnavailable",
    "VerifyResult",
    "chain_files",
    "format_result",
    "generate_digest_key",
    "load_digest_key",
    "verify_chain",
]

GENESIS: Final = "0" * 64
DIGEST_PREFIX: Final = "hmac-sha256:"
_KEY_BYTES: Final = 32
_MAX_KEY_FILE: Final = 1024
_MAX_DETAIL: Final = 200
_KEY_SETTING: Final = "[audit] digest_key_file"
_KEY_HINT: Final = "create one with `secureserve audit key new PATH` (or `openssl rand -base64 32`)"
_HEX64: Final = "^[0-9a-f]{64}$"
_DIGEST: Final = f"^{DIGEST_PREFIX}[0-9a-f]{{64}}$"
# Written on every line of their event (null when absent), so every line has one shape.
_ALWAYS: Final = frozenset({"time", "seq", "prev", "event", "principal", "roles"})
_REQUEST: Final = frozenset(
    {
        "request_id",
        "route",
        "model",
        "model_version",
        "decision",
        "status",
        "latency_ms",
        "input_digest",
        "output_digest",
    }
)

Decision = Literal["allowed", "denied", "limited", "error"]
Digest = Annotated[str, msgspec.Meta(pattern=_DIGEST)]
_MAX_TEXT: Final = 1024


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One audit line. ``event`` says which of the optional fields are meaningful.

    Request records carry every request field (``null`` when absent); admin records
    carry ``action`` and whichever of ``request_id``/``trigger``/``model``/``detail``
    apply. ``rotated_from`` appears on the first record of a file that continues
    another.
    """

    time: str
    seq: Annotated[int, msgspec.Meta(ge=0)]
    prev: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    event: Literal["request", "admin"]
    principal: str | None = None
    roles: tuple[str, ...] = ()
    request_id: str | None = None
    route: str | None = None
    model: str | None = None
    model_version: str | None = None
    decision: Decision | None = None
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    input_digest: Digest | None = None
    output_digest: Digest | None = None
    action: str | None = None
    trigger: str | None = None
    detail: str | None = None
    rotated_from: str | None = None


class AuditUnavailable(RequestRejected):
    """The audit log cannot be written, so the request is refused (503, ``Retry-After: 5``).

    ``log_reason`` says why (deleted, read-only, the OS error); the client sees only
    the fixed title.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            "audit-unavailable",
            "Service temporarily unavailable",
            headers={"Retry-After": "5"},
            log_reason=f"audit log unavailable: {reason}",
        )


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


class _Unwritable(Exception):  # noqa: N818 - internal signal, never leaves this module
    """The file is there but must not be written (read-only, replaced)."""


_encoder: Final = msgspec.json.Encoder(order="sorted")
_decoder: Final = msgspec.json.Decoder(AuditRecord)


class RequestEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What a request record says; :meth:`AuditLog.request` adds time, seq and prev."""

    principal: str | None
    roles: Sequence[str]
    request_id: str
    route: str
    model: str | None
    model_version: str | None
    decision: Decision
    status: int
    latency_ms: float
    input_digest: str | None = None
    output_digest: str | None = None


def _request_fields(entry: RequestEntry) -> dict[str, Any]:
    """The fields of a request record, as :meth:`AuditLog.record` would shape them."""
    fields = msgspec.structs.asdict(entry)
    fields["roles"] = list(entry.roles)
    fields["latency_ms"] = round(entry.latency_ms, 3)
    return {"event": "request", **fields}


def decision(status: int) -> Decision:
    """The audit decision an HTTP status stands for: 429 limited, other 4xx denied, 5xx error."""
    if status < 400:  # noqa: PLR2004 - HTTP status classes
        return "allowed"
    if status == 429:  # noqa: PLR2004
        return "limited"
    return "denied" if status < 500 else "error"  # noqa: PLR2004


def _sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _parse(line: bytes) -> AuditRecord | None:
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError:
        return None


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
        on_write_error: Literal["refuse", "continue"] = "refuse",
        logger: Any = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if not isinstance(digest_key, bytes) or len(digest_key) < _KEY_BYTES:
            raise ConfigError(
                f"the audit digest key must be at least {_KEY_BYTES} bytes; load it with "
                f"secureserve.audit.load_digest_key ({_KEY_HINT})."
            )
        if max_bytes < 1:
            raise ConfigError("[audit] max_bytes must be positive.")
        if logger is None:
            from secureserve.logs import get_logger  # noqa: PLC0415 - only when none is given

            logger = get_logger("secureserve.audit")
        self.path = path
        self.on_write_error = on_write_error
        self._key = digest_key
        self._max_bytes = max_bytes
        self._log = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
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
        return DIGEST_PREFIX + hmac.digest(self._key, data, "sha256").hex()

    def record(self, **fields: Any) -> None:
        """Append one record; ``time``, ``seq``, ``prev`` (and ``rotated_from``) are filled in.

        ``fields`` are :class:`AuditRecord` fields; a wrong name or type, a digest field
        that is not a digest, or a missing ``route``/``decision``/``status`` (request)
        or ``action`` (admin) is a programming error (:class:`TypeError` /
        :class:`ValueError`). An unwritable log raises :class:`AuditUnavailable` in
        "refuse" mode; in "continue" mode it logs one error per outage and returns.
        """
        self._commit(_shape(fields))

    def request(self, entry: RequestEntry) -> None:
        """Append a request record: :meth:`record` for the hot path.

        Every field comes from secureserve itself (typed, bounded: route names, ids
        matching fixed patterns, digests made by :meth:`digest`), so the generic
        validation of :meth:`record` is skipped; the line is the same.
        """
        self._commit(_request_fields(entry))

    async def request_async(self, entry: RequestEntry) -> None:
        """:meth:`request` with one ``write`` per event-loop iteration for every record queued.

        Returns once this record is in the file (a prediction still never answers
        before its record is written); raises :class:`AuditUnavailable` like
        :meth:`request`. The records of one iteration are chained in order and written
        with a single system call instead of one each.
        """
        line_fields = _request_fields(entry)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush_batch)
        self._batch.append((line_fields, future))
        await future

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        reason = None
        with self._lock:
            try:
                self._ready()
                if self._outage is not None or self._notes:
                    for fields, _ in batch:  # the resumed/notes records go first: one by one
                        self._commit_locked(fields)
                else:
                    self._write_batch([fields for fields, _ in batch])
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
            self._prev, self._seq, self._rotated_from = _sha256(line[:-1]), self._seq + 1, None
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
        """Write pending notes, fsync, log the chain head and release the file."""
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
            tail = _tail(fd)
        except BaseException:
            os.close(fd)
            raise
        if tail is None:  # empty: continue from the newest rotated file, if any
            self._continue_from_rotated()
        elif tail[2]:
            self._prev, self._seq = tail[0], tail[1]
        else:
            self._prev, self._seq = tail[0], tail[1]
            target = self._rotated_name()
            self.path.rename(target)
            os.close(fd)
            _fsync_dir(self.path.parent)
            self._rotated_from = target.name
            self._log.warning(
                "audit log ended with a torn or invalid line; moved it aside and started a "
                "new file (audit verify will report the damaged line)",
                path=str(self.path),
                moved_to=str(target),
            )
            self._open_new()
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
            tail = _tail(fd)
        finally:
            os.close(fd)
        if tail is not None:
            self._prev, self._seq = tail[0], tail[1]
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
        _fsync_dir(self.path.parent)
        self._adopt(fd, 0)

    def _adopt(self, fd: int, size: int) -> None:
        info = os.fstat(fd)
        self._fd, self._ident, self._size = fd, (info.st_dev, info.st_ino), size

    def _rotated_name(self) -> Path:
        pattern = _rotated_pattern(self.path)
        numbers = [
            int(m.group(1)) for p in _listdir(self.path.parent) if (m := pattern.match(p.name))
        ]
        return self.path.with_suffix(f".{max(numbers, default=0) + 1}.jsonl")

    # ----------------------------------------------------------------------- writing

    def _ready(self) -> None:
        """Make sure the open descriptor is the file at ``path`` and may be written."""
        if self._closed:
            raise _Unwritable("the audit log is closed")
        if self._fd is None:
            self._open_new()  # after a rotation or a deletion whose recreation failed
            return
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            self._recreate()
            return
        if (info.st_dev, info.st_ino) != self._ident:
            raise _Unwritable("the audit file was replaced by another file; remove it")
        if not info.st_mode & stat.S_IWUSR:
            raise _Unwritable("the audit file was made read-only")
        if self._torn:
            self._rotate()

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
        return _shape({"event": "admin", "action": action, "trigger": "audit", "detail": detail})

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
        fields = {**fields, "time": _rfc3339(utc(self._clock())), "seq": self._seq}
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
        self._prev = _sha256(line[:-1])
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
        _fsync_dir(self.path.parent)
        self._rotated_from = target.name
        self._torn = False
        self._log_head("rotation", rotated_to=str(target))
        self._open_new()

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


def _shape(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate caller fields as an :class:`AuditRecord` and keep the ones its event writes."""
    for name in ("time", "seq", "prev", "rotated_from"):
        if name in fields:
            raise TypeError(f"audit field {name!r} is filled in by AuditLog, not the caller")
    try:
        record = msgspec.convert({**fields, "time": "", "seq": 0, "prev": GENESIS}, AuditRecord)
    except msgspec.ValidationError as exc:
        raise TypeError(f"invalid audit record: {exc}") from None
    if record.event == "request" and None in (record.route, record.decision, record.status):
        raise ValueError("a request audit record needs route, decision and status")
    if record.event == "admin" and record.action is None:
        raise ValueError("an admin audit record needs an action")
    values = msgspec.structs.asdict(record)
    for name, value in values.items():  # long client-influenced text is cut, not refused
        limit = _MAX_DETAIL if name == "detail" else _MAX_TEXT
        if isinstance(value, str) and len(value) > limit:
            values[name] = value[: limit - 1] + "…"
    if record.latency_ms is not None:
        values["latency_ms"] = round(record.latency_ms, 3)
    always = _ALWAYS | _REQUEST if record.event == "request" else _ALWAYS
    return {
        name: value
        for name, value in values.items()
        if name not in {"time", "seq", "prev"} and (name in always or value is not None)
    }


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fsync_dir(folder: Path) -> None:
    """Make a rename or creation durable; best effort (not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tail(fd: int) -> tuple[str, int, bool] | None:
    """(hash of the last line, next seq, last line is a clean record) or None if empty.

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
    record = _parse(last) if clean else None
    if record is not None:
        return _sha256(last), record.seq + 1, True
    next_seq = 0
    for line in reversed(os.pread(fd, start, 0).split(b"\n")):  # rare: damaged tail
        earlier = _parse(line)
        if earlier is not None:
            next_seq = earlier.seq + 1
            break
    return _sha256(last), next_seq, False


# --------------------------------------------------------------------------- verification


def _rotated_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(path.stem) + r"\.(\d+)\.jsonl\Z")


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def chain_files(path: Path) -> list[Path]:
    """The rotated files of ``path`` (``<stem>.<n>.jsonl``, by ``n``) then ``path`` if it exists."""
    pattern = _rotated_pattern(path)
    rotated = sorted(
        (int(m.group(1)), p) for p in _listdir(path.parent) if (m := pattern.match(p.name))
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
        record = _parse(raw[:-1])
        if record is None:
            return "the line is not an audit record (not JSON, or fields missing or wrong)"
        problem = self._link(record, first_in_file=first_in_file)
        if problem is None:
            self.prev, self.expected = _sha256(raw[:-1]), record.seq + 1
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


# --------------------------------------------------------------------------- digest key


def generate_digest_key(path: Path) -> None:
    """Write 32 random bytes, base64 and a newline, to a new file ``path`` (mode 0600).

    Never overwrites: an existing file is a :class:`ConfigError` (digests made with
    the old key could no longer be matched).
    """
    content = base64.b64encode(os.urandom(_KEY_BYTES)) + b"\n"
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
        hint=_KEY_HINT,
        max_bytes=_MAX_KEY_FILE,
    )
    text = content.strip(b" \t\r\n")
    if not text:
        raise ConfigError(f"{source} is empty; {_KEY_HINT}.")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} is not valid base64; {_KEY_HINT}.") from None
    if len(key) < _KEY_BYTES:
        raise ConfigError(
            f"{source} decodes to {len(key)} bytes; the digest key needs at least "
            f"{_KEY_BYTES}. {_KEY_HINT[0].upper()}{_KEY_HINT[1:]}."
        )
    return key
