"""Counting windows for the rate limiter, and their implementation in this process.

A *charge* takes ``cost`` units from several windows at once, all or nothing: every
window is checked first, and only when each of them has room is the cost taken from
each. That is what a request needs ("one prediction per instance, on the principal's
window, the model's window and the quota, or none of them") and what ``limits``'
strategies cannot do, one window per call. Both backends keep ``limits``' data layout
and semantics, so the two agree to the unit and ``limits`` can still read what Redis
holds:

- a *moving* window (rates, failed authentications) admits ``cost`` when the units
  counted in the last ``expiry`` seconds plus ``cost`` stay within ``amount``; in
  Redis it is ``limits``' list of timestamps, newest first, trimmed to ``amount``;
- a *fixed* window (the quota) is a counter that starts with its first unit and
  expires ``expiry`` seconds later; in Redis a string counter with a TTL.

A refused charge takes nothing and says which window refused it, when that window
will have room for the same cost (``retry_at``, epoch seconds) and how many units it
has left.

Redis: :mod:`secureserve.redis_windows` (the same charges in one Lua script, batched
per event-loop iteration).

Memory. :class:`MemoryWindows` keeps, per moving window, a deque of entries: charges
within a thousandth of the window after an entry opened share it, dated by the latest of
them (so units are never released early), which bounds a window to about 1,000 entries
(and to ``amount``, since each costs at least one unit) whatever the rate; a fixed
window is a count and its reset time. Windows that emptied are swept at most every
:data:`_SWEEP_EVERY_S` seconds; each kind of limit holds at most ``max_keys`` windows
per rate (two models' own limits of different rates are two tables), and past that (a
flood of client addresses failing authentication) the oldest windows of that kind are
forgotten first, so a flood of addresses never evicts a principal's window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from limits import RateLimitItem

__all__ = ["Charge", "MemoryWindows", "Refusal", "Window"]

_SWEEP_EVERY_S: Final = 10.0
#: Units taken within this share of a window's length share one entry (memory bound).
_MERGE_WITHIN: Final = 0.001
#: Windows kept per kind of limit in memory (about 100 bytes each when empty of entries).
DEFAULT_MAX_KEYS: Final = 100_000


@dataclass(frozen=True, slots=True)
class Window:
    """One configured limit: its rate, whether it moves, its namespace and refusal reason.

    ``amount`` (units admitted) and ``expiry`` (length in seconds) are read off ``item``
    once, since every charge needs them. ``table`` names the windows kept together in
    memory: one namespace holds windows of several rates (the ``[models.<name>.limits]``
    of two models), which are counted apart, as Redis keys them apart.
    """

    item: RateLimitItem
    moving: bool
    reason: str  # per_principal, per_model, quota, auth_failures_per_ip
    amount: int = field(init=False)
    expiry: int = field(init=False)
    namespace: str = field(init=False)
    table: tuple[str, int, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", int(self.item.amount))
        object.__setattr__(self, "expiry", int(self.item.get_expiry()))
        object.__setattr__(self, "namespace", str(self.item.namespace))
        object.__setattr__(self, "table", (self.namespace, self.amount, self.expiry))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which window refused a charge, when it will have room for it, and what it has left."""

    window: Window
    retry_at: float
    remaining: int


#: One charge: ``cost`` units on each ``(window, identifier)``.
Charge = tuple[Sequence[tuple[Window, str]], int]


class MemoryWindows:
    """Windows in this process; every call runs inline on the event loop (microseconds)."""

    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._tables: dict[tuple[str, int, int], _Table] = {}  # one per kind and rate
        self._next_sweep = time.time() + _SWEEP_EVERY_S

    async def charge(self, charges: Sequence[Charge]) -> list[Refusal | None]:
        """Charge each in turn (see the module docstring); None where a charge was taken."""
        return [self.charge_now(plan, cost) for plan, cost in charges]

    def charge_now(self, plan: Sequence[tuple[Window, str]], cost: int) -> Refusal | None:
        """One charge, synchronously."""
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        counters = []  # each window's counter as checked (None: not made yet)
        for window, ident in plan:
            table = self._tables.get(window.table)
            counter = table.get(ident) if table is not None else None
            used = 0 if counter is None else counter.used(now)
            if used + cost > window.amount:
                return _refusal(window, counter, cost, used, now)
            counters.append(counter)
        for (window, ident), counter in zip(plan, counters, strict=True):
            (counter or self._table(window)[ident]).take(now, cost)
        return None

    async def blocked_until(self, window: Window, ident: str) -> float | None:
        """None if one more unit fits in the window, else when it will (epoch seconds)."""
        refusal = self._check(window, ident, 1, time.time())
        return None if refusal is None else refusal.retry_at

    def _check(self, window: Window, ident: str, cost: int, now: float) -> Refusal | None:
        table = self._tables.get(window.table)
        counter = table.get(ident) if table is not None else None
        used = 0 if counter is None else counter.used(now)
        if used + cost <= window.amount:
            return None
        return _refusal(window, counter, cost, used, now)

    def _table(self, window: Window) -> _Table:
        table = self._tables.get(window.table)
        if table is None:
            table = self._tables[window.table] = _Table(window, self._max_keys)
        return table

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY_S
        for table in self._tables.values():
            for ident in [i for i, counter in table.items() if counter.used(now) == 0]:
                del table[ident]


def _refusal(
    window: Window, counter: _Moving | _Fixed | None, cost: int, used: int, now: float
) -> Refusal:
    """``window`` refuses ``cost`` with ``used`` units counted: when it will have room."""
    if counter is None or cost > window.amount:  # never fits: a whole window from now
        room_at = now + window.expiry
    else:
        room_at = counter.room_at(window.amount - cost)
    return Refusal(window, room_at, max(0, window.amount - used))


class _Moving:
    """One moving window: entries oldest first, and their total.

    An entry is ``[time, cost, opened]``: ``cost`` units counted from ``time`` (the
    latest charge merged into it), gathering charges for at most a thousandth of the
    window after ``opened`` (its first). Counting every merged unit from the latest time
    never releases one early; closing an entry after that thousandth keeps steady
    traffic from merging into one entry whose time never grows old.
    """

    __slots__ = ("entries", "expiry", "merge_s", "total")

    def __init__(self, expiry: int) -> None:
        self.entries: deque[list[Any]] = deque()
        self.total = 0
        self.expiry = expiry
        self.merge_s = expiry * _MERGE_WITHIN

    def used(self, now: float) -> int:
        """Units counted in the window that ends ``now``."""
        entries, since = self.entries, now - self.expiry
        while entries and entries[0][0] < since:
            self.total -= entries.popleft()[1]
        return self.total

    def take(self, now: float, cost: int) -> None:
        entries = self.entries
        self.total += cost
        if entries and now - entries[-1][2] < self.merge_s:
            last = entries[-1]
            last[0], last[1] = now, last[1] + cost
        else:
            entries.append([now, cost, now])

    def room_at(self, keep: int) -> float:
        """When at most ``keep`` units will be counted (the entries before then expired)."""
        left = self.total
        for moment, cost, _ in self.entries:
            left -= cost
            if left <= keep:
                return float(moment) + self.expiry
        return time.time()  # pragma: no cover - only asked when over ``keep``


class _Fixed:
    """One fixed window: a count that starts with its first unit and resets at ``reset_at``."""

    __slots__ = ("count", "expiry", "reset_at")

    def __init__(self, expiry: int) -> None:
        self.count = 0
        self.expiry = expiry
        self.reset_at = 0.0

    def used(self, now: float) -> int:
        """Units counted in the current window (0 once it is over)."""
        if self.reset_at <= now:
            self.count = 0
        return self.count

    def take(self, now: float, cost: int) -> None:
        if self.count == 0:
            self.reset_at = now + self.expiry
        self.count += cost

    def room_at(self, keep: int) -> float:  # noqa: ARG002 - the whole count resets at once
        """When the window resets."""
        return self.reset_at


class _Table(dict[str, "_Moving | _Fixed"]):
    """The windows of one kind of limit, created on first use, at most ``max_keys``."""

    def __init__(self, window: Window, max_keys: int) -> None:
        super().__init__()
        self._window = window
        self._max_keys = max_keys

    def __missing__(self, ident: str) -> _Moving | _Fixed:
        if len(self) >= self._max_keys:  # forget the oldest tenth of this kind's windows
            for old in list(self)[: max(1, self._max_keys // 10)]:
                del self[old]
        window = self._window
        counter = _Moving(window.expiry) if window.moving else _Fixed(window.expiry)
        self[ident] = counter
        return counter
