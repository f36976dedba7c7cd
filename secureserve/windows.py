"""Counting windows for the rate limiter: in this process, or in Redis with one script.

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

Redis. :class:`RedisWindows` charges with one ``EVALSHA`` per event-loop iteration:
the charges of every request that arrived in that iteration go in one call to
:data:`_CHARGE_LUA`, which handles each in turn, atomically. A request therefore costs
one round trip, shared with its neighbours, instead of one per window.

Memory. :class:`MemoryWindows` keeps, per moving window, a deque of entries: charges
within a thousandth of the window after an entry opened share it, dated by the latest of
them (so units are never released early), which bounds a window to about 1,000 entries
(and to ``amount``, since each costs at least one unit) whatever the rate; a fixed
window is a count and its reset time. Windows that emptied are swept at most every
:data:`_SWEEP_EVERY_S` seconds; each kind of limit holds at most ``max_keys`` windows,
and past that (a flood of client addresses failing authentication) the oldest windows
of that kind are forgotten first, so a flood of addresses never evicts a principal's
window.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from limits import RateLimitItem

__all__ = ["Charge", "MemoryWindows", "RedisWindows", "Refusal", "Window"]

_SWEEP_EVERY_S: Final = 10.0
#: Units taken within this share of a window's length share one entry (memory bound).
_MERGE_WITHIN: Final = 0.001
#: Windows kept per kind of limit in memory (about 100 bytes each when empty of entries).
DEFAULT_MAX_KEYS: Final = 100_000


@dataclass(frozen=True, slots=True)
class Window:
    """One configured limit: its rate, whether it moves, its namespace and refusal reason.

    ``amount`` (units admitted) and ``expiry`` (length in seconds) are read off ``item``
    once, since every charge needs them.
    """

    item: RateLimitItem
    moving: bool
    reason: str  # per_principal, per_model, quota, auth_failures_per_ip
    amount: int = field(init=False)
    expiry: int = field(init=False)
    namespace: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", int(self.item.amount))
        object.__setattr__(self, "expiry", int(self.item.get_expiry()))
        object.__setattr__(self, "namespace", str(self.item.namespace))


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
        self._tables: dict[str, _Table] = {}  # one per kind of limit (its namespace)
        self._next_sweep = time.time() + _SWEEP_EVERY_S

    async def charge(self, charges: Sequence[Charge]) -> list[Refusal | None]:
        """Charge each in turn (see the module docstring); None where a charge was taken."""
        return [self.charge_now(plan, cost) for plan, cost in charges]

    def charge_now(self, plan: Sequence[tuple[Window, str]], cost: int) -> Refusal | None:
        """One charge, synchronously."""
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        for window, ident in plan:
            refusal = self._check(window, ident, cost, now)
            if refusal is not None:
                return refusal
        for window, ident in plan:
            self._table(window)[ident].take(now, cost)
        return None

    async def blocked_until(self, window: Window, ident: str) -> float | None:
        """None if one more unit fits in the window, else when it will (epoch seconds)."""
        refusal = self._check(window, ident, 1, time.time())
        return None if refusal is None else refusal.retry_at

    def _check(self, window: Window, ident: str, cost: int, now: float) -> Refusal | None:
        table = self._tables.get(window.namespace)
        counter = table.get(ident) if table is not None else None
        used = 0 if counter is None else counter.used(now)
        if used + cost <= window.amount:
            return None
        if counter is None or cost > window.amount:  # never fits: a whole window from now
            room_at = now + window.expiry
        else:
            room_at = counter.room_at(window.amount - cost)
        return Refusal(window, room_at, max(0, window.amount - used))

    def _table(self, window: Window) -> _Table:
        table = self._tables.get(window.namespace)
        if table is None:
            table = self._tables[window.namespace] = _Table(window, self._max_keys)
        return table

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY_S
        for table in self._tables.values():
            for ident in [i for i, counter in table.items() if counter.used(now) == 0]:
                del table[ident]


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


# Charges several windows, all or nothing, for each of several requests in turn.
# KEYS: every window's key, in order. ARGV: now; the number of window kinds, then per
# kind 1 (moving) or 0 (fixed), amount, expiry; the number of charges, then per charge
# its cost, its number of windows and each window's kind (1-based). Returns one entry
# per charge: 0 when taken, else {window index (1-based), retry_at, remaining} with
# retry_at as a string (Lua numbers become integers on the way out).
_CHARGE_LUA: Final = """
local now = tonumber(ARGV[1])
local kinds = tonumber(ARGV[2])
local moving, amount, expiry = {}, {}, {}
for k = 1, kinds do
  moving[k] = ARGV[3 * k] == '1'
  amount[k] = tonumber(ARGV[3 * k + 1])
  expiry[k] = tonumber(ARGV[3 * k + 2])
end
local arg = 3 * kinds + 3
local charges = tonumber(ARGV[arg])
arg = arg + 1
local results = {}
local key = 1

local function in_window(k, size, since)
  local low, high, found = 0, size - 1, -1
  while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = tonumber(redis.call('lindex', k, mid))
    if value and value >= since then
      found = mid
      low = mid + 1
    else
      high = mid - 1
    end
  end
  return found + 1
end

for c = 1, charges do
  local cost, count = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
  arg = arg + 2
  local refused = 0
  for i = 0, count - 1 do
    local k, kind = KEYS[key + i], tonumber(ARGV[arg + i])
    local size, window = amount[kind], expiry[kind]
    if moving[kind] then
      local entry = nil
      if cost <= size then
        entry = tonumber(redis.call('lindex', k, size - cost))
      end
      if cost > size or (entry and entry >= now - window) then
        local retry = now + window
        if entry then retry = entry + window end
        refused = {i + 1, tostring(retry), size - in_window(k, size, now - window)}
        break
      end
    else
      local used = tonumber(redis.call('get', k) or '0')
      if used + cost > size then
        local ttl = redis.call('ttl', k)
        if ttl < 0 then ttl = window end
        local left = size - used
        if left < 0 then left = 0 end
        refused = {i + 1, tostring(now + ttl), left}
        break
      end
    end
  end
  if refused == 0 then
    for i = 0, count - 1 do
      local k, kind = KEYS[key + i], tonumber(ARGV[arg + i])
      if moving[kind] then
        local stamps = {}
        for n = 1, math.min(cost, 5000) do stamps[n] = ARGV[1] end
        local pushed = 0
        while pushed < cost do
          local n = math.min(cost - pushed, 5000)
          redis.call('lpush', k, unpack(stamps, 1, n))
          pushed = pushed + n
        end
        redis.call('ltrim', k, 0, amount[kind] - 1)
        redis.call('expire', k, expiry[kind])
      elseif redis.call('incrby', k, cost) == cost then
        redis.call('expire', k, expiry[kind])
      end
    end
  end
  results[c] = refused
  arg = arg + count
  key = key + count
end
return results
"""


class RedisWindows:
    """Windows in Redis, through the client of a ``limits`` Redis storage (its key prefix).

    Charges made during one event-loop iteration go to Redis together in one script
    call; each caller awaits its own result. Every call has a deadline of ``timeout_s``
    (one per script call, shared by the charges in it): past it, each waiter gets a
    ``TimeoutError``.
    """

    def __init__(self, storage: Any, *, timeout_s: float) -> None:
        self.storage = storage
        self._timeout_s = timeout_s
        bridge = storage.bridge
        self._prefixed = bridge.prefixed_key
        self._script = bridge.get_connection().register_script(_CHARGE_LUA)
        self._pending: list[tuple[Charge, asyncio.Future[Refusal | None]]] = []

    async def charge(self, charges: Sequence[Charge]) -> list[Refusal | None]:
        """Charge each in turn, with the other charges of this loop iteration, in one call."""
        loop = asyncio.get_running_loop()
        futures = []
        if not self._pending:
            loop.call_soon(self._flush)
        for charge in charges:
            future: asyncio.Future[Refusal | None] = loop.create_future()
            self._pending.append((charge, future))
            futures.append(future)
        return [await future for future in futures]

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        task.add_done_callback(_retrieve)

    async def _send(self, batch: list[tuple[Charge, asyncio.Future[Refusal | None]]]) -> None:
        try:
            keys, args = self._command([charge for charge, _ in batch])
            async with asyncio.timeout(self._timeout_s):
                results = await self._script(keys, args)
            outcomes = [
                _outcome(plan, result)
                for ((plan, _), _), result in zip(batch, results, strict=True)
            ]
        except BaseException as exc:  # every waiter learns of it; none is left hanging
            for _, future in batch:
                if not future.done():
                    future.set_exception(_copy(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    def _command(self, charges: list[Charge]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of :data:`_CHARGE_LUA` for ``charges``."""
        keys: list[str] = []
        kinds: dict[int, int] = {}  # id(window) -> its 1-based number in this call
        head: list[Any] = []
        body: list[Any] = [len(charges)]
        for plan, cost in charges:
            body += [cost, len(plan)]
            for window, ident in plan:
                keys.append(self._prefixed(window.item.key_for(ident)))
                kind = kinds.get(id(window))
                if kind is None:
                    kind = kinds[id(window)] = len(kinds) + 1
                    head += [1 if window.moving else 0, window.amount, window.expiry]
                body.append(kind)
        return keys, [repr(time.time()), len(kinds), *head, *body]

    async def blocked_until(self, window: Window, ident: str) -> float | None:
        """None if one more unit fits in the window, else when it will (epoch seconds)."""
        async with asyncio.timeout(self._timeout_s):
            return await self._blocked_until(window, ident)

    async def _blocked_until(self, window: Window, ident: str) -> float | None:
        key = window.item.key_for(ident)
        if window.moving:
            start, count = await self.storage.get_moving_window(key, window.amount, window.expiry)
            return None if count < window.amount else float(start) + window.expiry
        if await self.storage.get(key) < window.amount:
            return None
        return float(await self.storage.get_expiry(key))


def _outcome(plan: Sequence[tuple[Window, str]], result: Any) -> Refusal | None:
    """One charge's answer from the script: 0, or ``[window index, retry_at, remaining]``."""
    if result == 0:
        return None
    index, retry_at, remaining = result
    return Refusal(plan[int(index) - 1][0], float(retry_at), int(remaining))


class StorageFailedError(ConnectionError):
    """The limits storage failed to answer; ``kind`` names the original error for the log."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"limits storage call failed: {kind}")
        self.kind = kind


def _copy(exc: BaseException) -> BaseException:
    """A new exception of the same kind for each waiter: one instance is never raised twice."""
    if isinstance(exc, asyncio.CancelledError):
        return asyncio.CancelledError()
    if isinstance(exc, TimeoutError):
        return TimeoutError("limits storage did not answer in time")
    return StorageFailedError(type(getattr(exc, "storage_error", exc)).__name__)


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # already handed to the waiters; keeps asyncio from logging it
