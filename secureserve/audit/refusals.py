"""Refusals of unauthenticated callers, counted per window instead of written one by one.

Anyone can send requests without a credential, so a record per 401 (or 429, 403,
413, ...) would let anyone fill the audit disk. :class:`RefusalCounter` counts them
per (client address, route, status, reason) and writes one ``refusals`` record per
key when the window ends: ``refusal_window_s`` seconds after its first refusal, on a
timer of the running event loop (or with the next refusal or :meth:`~RefusalCounter.close`
when there is no loop to run the timer). Counting costs a dictionary update; the
records of a window are written together.

Bound: at most :data:`MAX_CLIENTS` keys per window (under 5 MB). A refusal with a new
key once that many are counted goes to one overflow bucket, written with client
``"*"`` and ``null`` route, status and reason; so a window writes at most
``MAX_CLIENTS + 1`` records whatever the traffic. Uses the records module only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from secureserve.audit.records import refusals_fields

__all__ = ["MAX_CLIENTS", "OVERFLOW", "RefusalCounter"]

#: Keys (client, route, status, reason) counted per window before the overflow bucket.
MAX_CLIENTS: Final = 10_000
#: The client of the overflow bucket.
OVERFLOW: Final = "*"
_MAX_KEY_TEXT: Final = 64  # a client address or reason is cut to this (IPv6 fits in 45)
_OVERFLOW_KEY: Final = (OVERFLOW, None, None, None)

_Key = tuple[str, str | None, int | None, str | None]
_Write = Callable[[list[dict[str, Any]]], None]


class _Count:
    """How often one key was refused in this window, when first and last, and a request id."""

    __slots__ = ("count", "first", "last", "request_id")

    def __init__(self, now: datetime, request_id: str) -> None:
        self.count = 1
        self.first = now
        self.last = now
        self.request_id = request_id  # the first one: its application log line has the details


class RefusalCounter:
    """Counts refusals per key for one window and hands their records to ``write``.

    ``window_s`` 0 writes each refusal at once as a record with count 1. ``clock``
    gives the (UTC) times written in the records; ``monotonic`` measures the window.
    ``write`` receives the fields of one window's records, in the order their keys
    first appeared (the overflow bucket last) and must not raise.
    """

    def __init__(
        self,
        *,
        window_s: float,
        write: _Write,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self._window_s = window_s
        self._write = write
        self._clock = clock
        self._monotonic = monotonic
        self._max = max_clients
        self._lock = threading.Lock()
        self._counts: dict[_Key, _Count] = {}
        self._deadline = 0.0
        self._window = 0  # which window a timer belongs to: a flushed window's timer is stale
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def __len__(self) -> int:
        """The number of keys counted in the current window (at most ``max_clients + 1``)."""
        return len(self._counts)

    def add(
        self,
        *,
        client: str,
        route: str,
        status: int,
        reason: str | None,
        request_id: str,
    ) -> None:
        """Count one refusal; write the window first if its time is up and no timer did."""
        key: _Key = (client[:_MAX_KEY_TEXT], route, status, reason and reason[:_MAX_KEY_TEXT])
        now = self._clock()
        due: dict[_Key, _Count] = {}
        with self._lock:
            if self._closed or self._window_s == 0:
                due[key] = _Count(now, request_id)
            else:
                if self._counts and self._monotonic() >= self._deadline:  # no timer ran
                    due = self._take()
                self._count(key, now, request_id)
        if due:
            self._write(_records(due))

    def flush(self) -> None:
        """Write what this window counted so far, and start a new window with the next refusal."""
        with self._lock:
            due = self._take()
        if due:
            self._write(_records(due))

    def close(self) -> None:
        """Write what is counted; from now on every refusal is written at once."""
        with self._lock:
            self._closed = True
            due = self._take()
        if due:
            self._write(_records(due))

    def _count(self, key: _Key, now: datetime, request_id: str) -> None:
        counts = self._counts
        entry = counts.get(key)
        if entry is None and len(counts) >= self._max:
            key = _OVERFLOW_KEY
            entry = counts.get(key)
        if entry is not None:
            entry.count += 1
            entry.last = now
            return
        counts[key] = _Count(now, request_id)
        if len(counts) == 1:
            self._start_window()

    def _start_window(self) -> None:
        self._window += 1
        self._deadline = self._monotonic() + self._window_s
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the next refusal or close() ends it
            self._timer = None
            return
        self._timer = loop.call_later(self._window_s, self._window_over, self._window)

    def _window_over(self, window: int) -> None:
        with self._lock:
            if window != self._window:  # that window was written already
                return
            due = self._take()
        if due:
            self._write(_records(due))

    def _take(self) -> dict[_Key, _Count]:
        """The counts of the current window, which ends; the caller holds the lock."""
        counts, self._counts = self._counts, {}
        self._window += 1
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        return counts


def _records(counts: dict[_Key, _Count]) -> list[dict[str, Any]]:
    return [
        refusals_fields(
            client=client,
            route=route,
            status=status,
            reason=reason,
            count=entry.count,
            first=entry.first,
            last=entry.last,
            request_id=entry.request_id,
        )
        for (client, route, status, reason), entry in counts.items()
    ]
