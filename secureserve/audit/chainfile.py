"""The audit file on disk: :class:`ChainFile` holds the open file and the chain's position.

It opens the file at start-up under an exclusive lock and continues the chain from
its last line (or from the newest rotated file; a torn last line moves the file
aside), turns record fields into chained lines (``time``, ``seq``, ``prev``,
``rotated_from``) written with one ``write`` each batch, rotates at ``max_bytes``,
prunes rotated files beyond ``max_files`` after chaining an ``audit-pruned`` record,
and notices a file deleted (a new file, with an ``audit-file-recreated`` note),
replaced or made read-only (:class:`Unwritable`). While it holds the lock, the file
``<path>.pid`` beside it holds this process's id, so that a second server refused the
lock can say which process to stop. It knows nothing of requests,
batching or what to do when a write fails:
:class:`~secureserve.audit.writer.AuditLog` decides that, and holds its lock around
every call made here.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from secureserve._time import utc
from secureserve.atomic import write_atomically
from secureserve.audit.records import GENESIS, rfc3339, sha256, shape
from secureserve.audit.retention import last_line, oldest_beyond, pruned_fields, tail
from secureserve.audit.verify import chain_files, listdir, rotated_pattern
from secureserve.errors import ConfigError
from secureserve.secretfiles import fsync_folder, read_regular

if sys.platform != "win32":
    import fcntl

__all__ = ["ChainFile", "Unwritable", "note", "reason"]


class Unwritable(Exception):  # noqa: N818 - internal signal of the audit package
    """The file is there but must not be written (read-only, replaced, closed)."""


_encoder: Final = msgspec.json.Encoder(order="sorted")
#: How long a passed check of the audit file's path is trusted (see ChainFile.ready).
_RECHECK_S: Final = 0.01
#: Suffix of the file beside the audit file that names the process holding its lock.
_OWNER_SUFFIX: Final = ".pid"
_MAX_OWNER_BYTES: Final = 32


def note(action: str, detail: str) -> dict[str, Any]:
    """The fields of an admin record the audit log writes about itself (``trigger="audit"``)."""
    return shape({"event": "admin", "action": action, "trigger": "audit", "detail": detail})


def reason(exc: BaseException) -> str:
    """What went wrong, for the application log: the OS error's text, never a path."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


class ChainFile:
    """The open audit file at ``path``, its size, and the chain's next ``seq`` and ``prev``.

    Every method may raise :class:`OSError` or :class:`Unwritable`; after a failed
    write the chain position is as before and no partial line stays in the file (it
    is truncated away, or the file is moved aside before the next write). ``notes``
    are records this object had to chain but could not write yet (a recreated file,
    a prune during a full disk): the caller writes them before its next record.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_files: int,
        logger: Any,
        clock: Callable[[], datetime],
    ) -> None:
        self.path = path
        self.max_files = max_files
        self.notes: list[dict[str, Any]] = []
        self._max_bytes = max_bytes
        self._log = logger
        self._clock = clock
        self._fd: int | None = None
        self._closed = False
        self._checked_until = 0.0  # ready() looked at the path and found it fine until then
        self._ident = (0, 0)
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        self._rotated_from: str | None = None
        self._torn = False
        self._owner: Path | None = None  # the pid file this object wrote
        try:
            self._start()
        except OSError as exc:
            self._release_owner()
            raise ConfigError(
                f"[audit] path {path} cannot be opened for appending ({exc.strerror}); check "
                "that its folder can be created and written by this user."
            ) from None

    # ----------------------------------------------------------------------- writing

    def ready(self, *, recent_ok: bool = False) -> None:
        """Make sure the open descriptor is the file at ``path`` and may be written.

        With ``recent_ok`` (writing a batch whose requests each passed this check just
        before), a check of the path younger than :data:`_RECHECK_S` is trusted
        instead of looking again: one ``lstat`` per request instead of two. A write
        error from the disk is seen by the write itself.
        """
        if self._closed:
            raise Unwritable("the audit log is closed")
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
            raise Unwritable("the audit file was replaced by another file; remove it")
        if not info.st_mode & stat.S_IWUSR:
            raise Unwritable("the audit file was made read-only")
        self._checked_until = now + _RECHECK_S

    def append(self, fields: dict[str, Any]) -> None:
        """Chain and write one record, rotating first if the line would cross ``max_bytes``."""
        fd = self._open_fd()
        line = self._line(fields)
        if self._size and self._size + len(line) > self._max_bytes:
            self._rotate()
            fd = self._open_fd()
            line = self._line(fields)
        self._write(fd, fields, line)

    def append_batch(self, batch: list[dict[str, Any]]) -> None:
        """Chain and write ``batch`` with one ``write``; on any failure the state is as before."""
        fd = self._open_fd()
        saved = (self._seq, self._prev, self._rotated_from)
        moment = rfc3339(utc(self._clock()))  # one write: one time for all its records
        lines = []
        for fields in batch:
            line = self._encode(fields, moment)
            lines.append(line)
            self._prev, self._seq, self._rotated_from = sha256(line), self._seq + 1, None
        lines.append(b"")
        data = b"\n".join(lines)
        if self._size and self._size + len(data) > self._max_bytes:
            self._seq, self._prev, self._rotated_from = saved
            for fields in batch:  # crosses the rotation size: the careful path, one by one
                self.append(fields)
            return
        try:
            self._write_all(fd, data)
        except OSError:
            self._seq, self._prev, self._rotated_from = saved
            raise
        self._size += len(data)

    def close(self) -> None:
        """Write pending notes, fsync, log the chain head and release the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            for fields in self.notes:
                self._write(fd, fields)
            os.fsync(fd)
        except OSError as exc:
            self._log.error("audit log not flushed on close", reason=reason(exc))
        finally:
            self._release_owner()  # while the lock is held: no one else can have claimed it
            os.close(fd)
        self._log_head("close")

    def _open_fd(self) -> int:
        if self._fd is None:
            raise Unwritable("no audit file is open")
        return self._fd

    def _line(self, fields: dict[str, Any]) -> bytes:
        return self._encode(fields, rfc3339(utc(self._clock()))) + b"\n"

    def _encode(self, fields: dict[str, Any], moment: str) -> bytes:
        """The next record of ``fields`` written at ``moment``, without its LF."""
        fields = {**fields, "time": moment, "seq": self._seq, "prev": self._prev}
        if self._rotated_from is not None:
            fields["rotated_from"] = self._rotated_from
        return _encoder.encode(fields)

    def _write(self, fd: int, fields: dict[str, Any], line: bytes | None = None) -> None:
        line = self._line(fields) if line is None else line
        self._write_all(fd, line)
        self._size += len(line)
        self._prev = sha256(line[:-1])
        self._seq += 1
        self._rotated_from = None

    def _write_all(self, fd: int, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            if written:  # remove the partial lines, or move the file aside on next use
                try:
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                except OSError:
                    self._torn = True
            raise

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
            raise ConfigError(_locked_message(self.path, _owner(self.path))) from None
        self._claim_owner()

    def _claim_owner(self) -> None:
        """Write this process's id beside the file; best effort (the lock is what counts)."""
        if self._owner is not None:
            return
        owner = _owner_path(self.path)
        try:
            write_atomically(owner, f"{os.getpid()}\n".encode(), mode=0o600)
        except OSError as exc:
            self._log.warning(
                "audit lock owner not recorded; a second server will not be told this pid",
                path=str(owner),
                reason=reason(exc),
            )
            return
        self._owner = owner

    def _release_owner(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            with contextlib.suppress(OSError):
                owner.unlink()

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

    # ----------------------------------------------------------------------- rotation

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
        self.notes.append(
            note(
                "audit-file-recreated",
                "the audit file was deleted while the server was running; "
                "records before this one are not in this file",
            )
        )
        self._torn = False
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._open_new()

    def _rotate(self) -> None:
        fd = self._open_fd()
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
        victims = oldest_beyond(self.path, self.max_files)
        if not victims or fd is None:
            return
        names = [p.name for p in victims]
        try:
            end = last_line(victims)
        except OSError as exc:
            self._log.error("old audit files not removed", files=names, reason=reason(exc))
            return
        fields = pruned_fields(victims, end, self.max_files)
        try:
            self._write(fd, fields)
        except OSError as exc:  # a full disk, most likely: removing the files is the remedy
            self.notes.append(fields)
            self._log.error(
                "audit-pruned record not written yet; it goes before the next record",
                files=names,
                reason=reason(exc),
            )
        else:
            with contextlib.suppress(OSError):  # best effort: the files go either way
                os.fsync(fd)  # the record is on disk before the files it names are gone
        for victim in victims:
            try:
                victim.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._log.error("old audit file not removed", file=str(victim), reason=reason(exc))
        fsync_folder(self.path.parent)
        self._log.info(
            "old audit files removed",
            files=names,
            max_files=self.max_files,
            pruned_last_seq=fields.get("pruned_last_seq"),
        )

    def _log_head(self, why: str, **extra: Any) -> None:
        self._log.info(
            "audit chain head",
            path=str(self.path),
            why=why,
            next_seq=self._seq,
            head=self._prev,
            **extra,
        )


def _owner_path(path: Path) -> Path:
    return path.with_name(path.name + _OWNER_SUFFIX)


def _owner(path: Path) -> int | None:
    """The id of the live process that recorded itself as holding ``path``'s lock, if any."""
    try:
        text = read_regular(
            _owner_path(path), max_bytes=_MAX_OWNER_BYTES, source="audit lock owner"
        ).strip()
    except (OSError, ConfigError):
        return None
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:
        return pid  # it exists, under another user
    except (OSError, OverflowError):
        return None  # gone (or no pid at all): the holder is someone else
    return pid


def _locked_message(path: Path, pid: int | None) -> str:
    """Why a second AuditLog on ``path`` is refused, naming the holder when it is known."""
    fix = "stop it first, or give this one its own [audit] path."
    if pid is None:
        return (
            f"another process is already writing the audit log {path} (it is locked), most "
            f"likely another secureserve serving this folder; {fix}"
        )
    if pid == os.getpid():
        return (
            f"the audit log {path} is already open in this process (pid {pid}): another "
            "AuditLog holds its lock (or another process does). Each open audit log needs "
            "its own file; close the first one, or give this one its own [audit] path."
        )
    return (
        f"another secureserve (pid {pid}) is already serving this folder (audit log {path} "
        f"is locked); {fix}"
    )
