"""The audit writer: :class:`AuditLog`, what the server calls to keep its audit trail.

It shapes request, admin and refusal records, batches the request records of one
event-loop iteration into one write, counts refusals of unauthenticated callers per
window instead of writing each, and decides what a failed write means: it fails
closed (:class:`~secureserve.audit.records.AuditUnavailable`) or logs one error per
outage, and chains an ``audit-resumed`` record (with the number lost) once writing
works again. The file itself (opening, chaining lines, rotation, retention, a file
deleted or replaced) is :class:`~secureserve.audit.chainfile.ChainFile`'s; this module
holds the lock around every call to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from secureserve._time import utc
from secureserve.audit.chainfile import ChainFile, Unwritable, note, reason
from secureserve.audit.digest_key import KEY_BYTES, KEY_HINT
from secureserve.audit.records import (
    DIGEST_PREFIX,
    AuditUnavailable,
    RequestEntry,
    request_fields,
    shape,
)
from secureserve.audit.refusals import RefusalCounter
from secureserve.errors import ConfigError
from secureserve.settings import DEFAULT_AUDIT_MAX_FILES, DEFAULT_REFUSAL_WINDOW_S

__all__ = [
    "AuditLog",
]


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
        self._log = logger
        self._lock = threading.Lock()
        self._batch: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._outage: str | None = None
        self._lost = 0
        self._refusals = RefusalCounter(
            window_s=refusal_window_s,
            write=self._write_refusals,
            clock=lambda: utc(clock()),
        )
        self._file = ChainFile(
            path, max_bytes=max_bytes, max_files=max_files, logger=logger, clock=clock
        )

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

    async def request_async(
        self, entry: RequestEntry, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """:meth:`request` with one ``write`` per event-loop iteration for every record queued.

        Returns once this record is in the file (a prediction still never answers
        before its record is written); raises :class:`AuditUnavailable` like
        :meth:`request`. The records of one iteration are chained in order and written
        with a single system call instead of one each. ``loop`` is the running loop,
        when the caller has it at hand (asking for it costs a system call on 3.11).
        """
        line_fields = request_fields(entry)
        loop = loop or asyncio.get_running_loop()
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
            except (OSError, Unwritable) as exc:
                self._lost += len(records)
                why = reason(exc)
            else:
                return
        with contextlib.suppress(AuditUnavailable):  # no request to refuse: logged and counted
            self._failed(why)

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        why = None
        with self._lock:
            try:
                self._commit_many([fields for fields, _ in batch])
            except (OSError, Unwritable) as exc:
                self._lost += len(batch)
                why = reason(exc)
        for _, future in batch:
            if future.done():
                continue
            if why is None:
                future.set_result(None)
                continue
            try:
                self._failed(why)
            except AuditUnavailable as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

    def _commit_many(self, batch: list[dict[str, Any]]) -> None:
        """Write ``batch`` in order, with one ``write`` when possible; the caller holds the lock."""
        self._file.ready(recent_ok=True)
        if self._outage is not None or self._file.notes:
            for fields in batch:  # the resumed/notes records go first: one by one
                self._commit_locked(fields)
        else:
            self._file.append_batch(batch)

    def _commit_locked(self, line_fields: dict[str, Any]) -> None:
        """:meth:`_commit` for a caller that holds the lock and handles failures."""
        if self._outage is not None:
            detail = (
                f"the audit log could not be written ({self._outage}); "
                f"{self._lost} records were not written"
            )
            self._file.append(note("audit-resumed", detail))
            self._log.warning("audit log writable again", path=str(self.path))
            self._outage, self._lost = None, 0
        notes = self._file.notes
        while notes:
            self._file.append(notes[0])
            notes.pop(0)
        self._file.append(line_fields)

    def _commit(self, line_fields: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._file.ready()
                self._commit_locked(line_fields)
            except (OSError, Unwritable) as exc:
                self._lost += 1
                self._failed(reason(exc))

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
        recreated. A look at the path younger than ``_RECHECK_S`` (10 ms) is trusted,
        as for the write itself: under load, one ``lstat`` per 10 ms, not per request
        (at one request at a time this check was a tenth of the app's CPU). A write
        error from the disk (full, I/O) is only seen by the next :meth:`record`, which
        is still refused.
        """
        with self._lock:
            try:
                self._file.ready(recent_ok=True)
            except (OSError, Unwritable) as exc:
                self._failed(reason(exc))

    def close(self) -> None:
        """Write counted refusals and pending notes, fsync, log the chain head, release the file."""
        self._refusals.close()
        with self._lock:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _failed(self, why: str) -> None:
        if self._outage is None:
            self._outage = why
            self._log.error(
                "audit log cannot be written",
                path=str(self.path),
                reason=why,
                on_write_error=self.on_write_error,
                consequence=(
                    "predictions are refused (503) until it can"
                    if self.on_write_error == "refuse"
                    else "requests are served without audit records"
                ),
            )
        if self.on_write_error == "refuse":
            raise AuditUnavailable(why)
