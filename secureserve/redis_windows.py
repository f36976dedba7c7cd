"""The rate limiter's windows in Redis: every charge of one loop iteration in one script call.

The semantics are :mod:`secureserve.windows`' (all-or-nothing charges over moving and
fixed windows, refusals with ``retry_at`` and ``remaining``) in ``limits``' own key
layout, so ``limits`` can read what is stored. :class:`RedisWindows` collects the
charges of every request that arrives during one event-loop iteration and sends them in
one ``EVALSHA`` of :data:`_CHARGE_LUA`, which handles each in turn, atomically: a request
costs one round trip, shared with its neighbours, instead of one per window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

from secureserve.windows import Charge, Refusal, Window

__all__ = ["RedisWindows", "StorageFailedError"]


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

    async def set_mark(self, name: str, *, on: bool) -> None:
        """Set or remove the shared mark ``name`` (no expiry: it holds until removed)."""
        connection = self.storage.bridge.get_connection()
        key = self._prefixed(f"mark/{name}")
        async with asyncio.timeout(self._timeout_s):
            if on:
                await connection.set(key, b"1")
            else:
                await connection.delete(key)

    async def marked(self, name: str) -> bool:
        """Whether the shared mark ``name`` is set."""
        connection = self.storage.bridge.get_connection()
        async with asyncio.timeout(self._timeout_s):
            return bool(await connection.exists(self._prefixed(f"mark/{name}")))

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
