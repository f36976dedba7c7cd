"""Rate limits, quotas and failed-authentication throttling, over ``limits``.

One :class:`RateLimiter` per process answers three questions for the middleware:
may this principal call this model now (:meth:`RateLimiter.check`), may this
address try to authenticate (:meth:`RateLimiter.auth_blocked`, asked *before*
credentials are verified) and is the shared storage up (:meth:`RateLimiter.healthy`).

Strategies. Request rates (``per_principal``, ``per_model``) and failed
authentications use ``limits``' moving window: no burst of twice the limit at a
window edge. The long ``quota`` uses a fixed window: it is a budget, not a burst
control (bursts are ``per_principal``'s job), and a moving window would keep one
timestamp per request, 10,000 entries per principal for ``"10000/day"``. The fixed
window starts at a principal's first counted request, not at midnight.

Keys. The storage prefix is ``key_prefix``; every limit kind has its own namespace
that also names its strategy, so a moving-window list and a fixed-window counter can
never share a Redis key (they would, with the same rate string, and fail WRONGTYPE)::

    secureserve:mw:principal/<principal id>/60/1/minute
    secureserve:mw:model/<model>/600/1/minute          (all principals together)
    secureserve:mw:auth-ip/<ip or IPv6 /64>/10/1/minute
    secureserve:fw:quota/<principal id>/10000/1/day

Order. :meth:`RateLimiter.check` hits per-principal, then per-model, then the
quota, and stops at the first refusal: each hit is one atomic call, so counts stay
exact across processes (a ``test()`` first would double the round trips and still
race). A request refused by a rate never reaches the quota; one refused by the
per-model limit has counted once in its principal's window (a moving-window entry
cannot be refunded), and a principal over its own rate never eats the shared
per-model budget. IPv6 clients are throttled per /64, the block one host is given.

Storage errors. ``on_storage_error="refuse"`` (the default) fails closed: every
call the storage cannot answer is a 503 ``limits-unavailable`` with ``Retry-After``.
``"memory"`` falls back to per-process memory counters, logs one warning per outage,
and retries the shared storage with the next call at most every
``_SHARED_RETRY_S`` seconds; the first call it answers switches back (logged).
Redis calls time out after ``_SOCKET_TIMEOUT_S`` so a hung server cannot hang
requests. Use one ``RateLimiter`` from one event loop (the Redis client's
connections belong to the loop that opened them).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from limits import RateLimitItem
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError
from limits.storage import MemoryStorage as SyncMemoryStorage
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter as SyncMovingWindow

from secureserve.config import parse_rate
from secureserve.errors import ConfigError, RequestRejected
from secureserve.logs import get_logger

__all__ = ["RateLimiter", "client_ip"]

_T = TypeVar("_T")
_SHARED_RETRY_S: Final = 5.0
_SOCKET_TIMEOUT_S: Final = 0.5
_UNAVAILABLE_RETRY_AFTER: Final = "5"
_SCHEMES: Final = {
    "memory": "async+memory",
    "redis": "async+redis",
    "rediss": "async+rediss",
    "async+memory": "async+memory",
    "async+redis": "async+redis",
    "async+rediss": "async+rediss",
}


@dataclass(frozen=True, slots=True)
class _Limit:
    """One configured limit: the rate, whether it is a moving window, and its names."""

    item: RateLimitItem
    moving: bool
    reason: str  # log_reason of a refusal: per_principal, per_model, quota, auth_failures


class _Backend:
    """A storage and the moving-window strategy over it; fixed windows use the storage."""

    __slots__ = ("moving", "storage")

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.moving = MovingWindowRateLimiter(storage)

    async def hit(self, limit: _Limit, ident: str) -> int | None:
        """Count one; the requests then left, or None when the hit was refused.

        A fixed window is ``FixedWindowRateLimiter.hit`` inlined: its ``incr`` returns
        the count, which saves the round trip that ``get_window_stats`` would spend.
        """
        item = limit.item
        if limit.moving:
            return -1 if await self.moving.hit(item, ident) else None
        count = await self.storage.incr(item.key_for(ident), item.get_expiry())
        return item.amount - count if count <= item.amount else None

    async def stats(self, limit: _Limit, ident: str, left: int = -1) -> tuple[int, float]:
        """``(remaining, reset epoch seconds)``; ``left`` is what :meth:`hit` returned."""
        if limit.moving:
            reset, remaining = await self.moving.get_window_stats(limit.item, ident)
            return max(0, remaining), reset
        return max(0, left), await self.storage.get_expiry(limit.item.key_for(ident))


class _MemoryBackend:
    """Per-process counters on ``limits``' synchronous memory storage.

    ``limits``' async memory storage costs tens of microseconds a check on a live
    event loop (asyncio locks, and upstream 5.8 starts a sweep task with a thread hop
    per key after nearly every hit); the synchronous storage is a dict behind a lock
    held for microseconds (about 4 µs a hit), so calling it on the loop never blocks.
    Same interface as :class:`_Backend`.
    """

    __slots__ = ("moving", "storage")

    def __init__(self) -> None:
        self.storage = SyncMemoryStorage()
        self.moving = SyncMovingWindow(self.storage)

    async def hit(self, limit: _Limit, ident: str) -> int | None:
        """See :meth:`_Backend.hit`."""
        item = limit.item
        if limit.moving:
            return -1 if self.moving.hit(item, ident) else None
        count = self.storage.incr(item.key_for(ident), item.get_expiry())
        return item.amount - count if count <= item.amount else None

    async def stats(self, limit: _Limit, ident: str, left: int = -1) -> tuple[int, float]:
        """See :meth:`_Backend.stats`."""
        if limit.moving:
            window = self.moving.get_window_stats(limit.item, ident)
            return max(0, window.remaining), window.reset_time
        return max(0, left), self.storage.get_expiry(limit.item.key_for(ident))


def _limit(key: str, value: str | None, namespace: str, *, moving: bool) -> _Limit | None:
    if value is None:
        return None
    item = parse_rate(key, value)
    return _Limit(type(item)(item.amount, item.multiples, namespace=namespace), moving, key)


def _storage(storage: str, key_prefix: str) -> Storage:
    scheme, sep, rest = storage.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(
            f'[limits] storage: unsupported scheme {scheme!r}; use "memory://" (one process) '
            'or "redis://host:port/db" (shared by replicas)'
        )
    uri = f"{_SCHEMES[scheme]}://{rest}"
    options: dict[str, Any] = {"wrap_exceptions": True}
    try:
        if "redis" in scheme:
            options |= _redis_options(key_prefix)
        built = storage_from_string(uri, **options)
    except (ConfigurationError, ImportError):
        raise ConfigError(
            '[limits] storage: Redis storage needs the "redis" package (>= 5.2); '
            'install it with: pip install "redis>=5.2"'
        ) from None
    if not isinstance(built, Storage):  # pragma: no cover - the async+ schemes map here
        raise ConfigError("[limits] storage: not an asynchronous storage")
    return built


def _redis_options(key_prefix: str) -> dict[str, Any]:
    """redis-py options: our key prefix, bounded waits, one retry on a new connection.

    The retry matters when Redis comes back: pooled connections to the dead server
    fail once each, and without it every one of them would cost a refused request.
    """
    from redis.asyncio.retry import Retry  # noqa: PLC0415 - optional: only with Redis storage
    from redis.backoff import NoBackoff  # noqa: PLC0415

    return {
        "implementation": "redispy",
        "key_prefix": key_prefix,
        "socket_timeout": _SOCKET_TIMEOUT_S,
        "socket_connect_timeout": _SOCKET_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 1),
    }


def _seconds_until(epoch: float) -> str:
    return str(max(1, math.ceil(epoch - time.time())))


_IPV4_DOTS: Final = 3
_MAX_RECENT_FAILURES: Final = 100_000


def _ip_key(ip: str) -> str:
    """The address itself for IPv4, its /64 for IPv6 (one host gets a whole /64)."""
    if ":" not in ip and ip.count(".") == _IPV4_DOTS and ip.replace(".", "").isdigit():
        return ip  # dotted IPv4 as the server reported it: nothing to normalise
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class RateLimiter:
    """Per-principal and per-model rates, a per-principal quota, and auth-failure throttling.

    Rate strings are ``limits`` notation (``"60/minute"``); ``None`` disables a limit.
    ``storage`` is ``"memory://"`` (one process) or ``"redis://host:port/db"``.
    """

    def __init__(
        self,
        *,
        storage: str = "memory://",
        per_principal: str | None = "60/minute",
        per_model: str | None = None,
        auth_failures_per_ip: str | None = "10/minute",
        quota: str | None = "10000/day",
        on_storage_error: Literal["refuse", "memory"] = "refuse",
        key_prefix: str = "secureserve",
        logger: Any = None,
    ) -> None:
        if on_storage_error not in {"refuse", "memory"}:
            raise ConfigError(
                f'[limits] on_storage_error = {on_storage_error!r}: use "refuse" or "memory"'
            )
        self._principal = _limit("per_principal", per_principal, "mw:principal", moving=True)
        self._model = _limit("per_model", per_model, "mw:model", moving=True)
        self._quota = _limit("quota", quota, "fw:quota", moving=False)
        self._auth = _limit("auth_failures_per_ip", auth_failures_per_ip, "mw:auth-ip", moving=True)
        self._recent_failures: dict[str, float] = {}  # address key -> last failure here
        self._shared = (
            _MemoryBackend()
            if _SCHEMES.get(storage.partition("://")[0]) == "async+memory"
            else _Backend(_storage(storage, key_prefix))
        )
        # Redis answers several reads at once over separate connections; memory is faster
        # awaited in turn than through tasks.
        shared_storage = "redis" in storage.partition("://")[0]
        self._fallback = (
            _MemoryBackend() if on_storage_error == "memory" and shared_storage else None
        )
        self._retry_s = _SHARED_RETRY_S
        self._down = False
        self._next_try = 0.0
        self._log = logger if logger is not None else get_logger("secureserve.ratelimit")

    async def check(self, principal_id: str, model: str) -> None:
        """Count one request by ``principal_id`` on ``model``: principal, then model, then quota.

        Raises ``RequestRejected`` 429 ``rate-limited`` or ``quota-exhausted`` (with
        ``Retry-After`` and ``RateLimit-*``), or 503 ``limits-unavailable``.
        """
        plan = [
            (limit, ident)
            for limit, ident in (
                (self._principal, principal_id),
                (self._model, model),
                (self._quota, principal_id),
            )
            if limit is not None
        ]
        if plan:
            await self._run(lambda backend: self._count(backend, plan))

    async def auth_failure(self, ip: str) -> None:
        """Record one failed authentication from ``ip``."""
        if self._auth is not None:
            auth, key = self._auth, _ip_key(ip)
            failures = self._recent_failures
            if len(failures) >= _MAX_RECENT_FAILURES:  # a flood of addresses: forget the hints
                failures.clear()
            failures[key] = time.monotonic()
            await self._run(lambda backend: backend.hit(auth, key))

    async def auth_blocked(self, ip: str) -> dict[str, str] | None:
        """None if ``ip`` may try to authenticate, else the 429 headers (``Retry-After``).

        The counters are consulted only for an address that failed in this process
        within the window: every other request is spared a storage call (a Redis round
        trip). With replicas, an address blocked by its failures on another replica gets
        at most one more failure here before this replica consults the shared count too.
        """
        if self._auth is None:
            return None
        auth, key = self._auth, _ip_key(ip)
        last = self._recent_failures.get(key)
        if last is None:
            return None
        if time.monotonic() - last > auth.item.get_expiry():
            self._recent_failures.pop(key, None)
            return None
        remaining, reset = await self._run(lambda backend: backend.stats(auth, key))
        return None if remaining > 0 else {"Retry-After": _seconds_until(reset)}

    async def healthy(self) -> bool:
        """Whether the configured (shared) storage answers."""
        shared = self._shared
        if isinstance(shared, _MemoryBackend):
            return True
        try:
            return bool(await shared.storage.check())
        except Exception:  # noqa: BLE001 - any failure to answer is "not healthy"
            return False

    async def aclose(self) -> None:
        """Close the shared storage's connections; call at shutdown, on the loop that used it.

        ``limits`` has no close of its own for Redis, so this reaches its redis-py client.
        """
        client = getattr(getattr(self._shared.storage, "bridge", None), "storage", None)
        close = getattr(client, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def _count(
        self, backend: _Backend | _MemoryBackend, plan: list[tuple[_Limit, str]]
    ) -> None:
        for limit, ident in plan:
            if await backend.hit(limit, ident) is None:
                _, reset = await backend.stats(limit, ident, 0)
                quota = not limit.moving
                raise RequestRejected(
                    429,
                    "quota-exhausted" if quota else "rate-limited",
                    "Quota exhausted" if quota else "Too many requests",
                    headers={"Retry-After": _seconds_until(reset)} | _headers(limit, 0, reset),
                    log_reason=limit.reason,
                )
        # A counted request gets no RateLimit headers: reading every window back would
        # double the storage work of each prediction (a round trip each with Redis).
        # Refusals carry Retry-After and RateLimit-*.

    async def _run(self, op: Callable[[_Backend | _MemoryBackend], Awaitable[_T]]) -> _T:
        """``op`` on the shared storage; on failure, 503 or the memory fallback."""
        fallback = self._fallback
        if fallback is None or not self._down or time.monotonic() >= self._next_try:
            self._next_try = time.monotonic() + self._retry_s
            try:
                result = await op(self._shared)
            except RequestRejected:
                self._up()
                raise
            except Exception as exc:  # noqa: BLE001 - no storage error may escape: fail closed
                self._failed(exc)
                if fallback is None:
                    raise _unavailable() from None
            else:
                self._up()
                return result
        try:
            return await op(fallback)
        except RequestRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - the memory storage failing is still closed
            self._log.error("rate-limit memory storage failed", error=type(exc).__name__)
            raise _unavailable() from None

    def _failed(self, exc: Exception) -> None:
        error = type(getattr(exc, "storage_error", exc)).__name__
        if not self._down:
            self._down = True
            if self._fallback is None:
                self._log.error("rate-limit storage unavailable: refusing requests", error=error)
            else:
                self._log.warning(
                    "rate-limit storage unavailable: per-process memory limits until it answers",
                    error=error,
                    retry_s=self._retry_s,
                )

    def _up(self) -> None:
        if self._down:
            self._down = False
            self._log.info("rate-limit storage answers again: shared limits restored")


def _headers(limit: _Limit, remaining: int, reset: float) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit.item.amount),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": _seconds_until(reset),
    }


def _unavailable() -> RequestRejected:
    return RequestRejected(
        503,
        "limits-unavailable",
        "Service unavailable",
        headers={"Retry-After": _UNAVAILABLE_RETRY_AFTER},
        log_reason="limits-storage",
    )


# ---- client address ------------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in trusted)
    except ValueError as exc:
        raise ConfigError(
            f"[server] trusted_proxies: {exc}; list IP addresses or CIDR blocks"
        ) from None


def _parse_ip(text: str) -> _Address | None:
    """An address from an ``X-Forwarded-For`` entry or a peer (``[v6]:port``, ``v4:port``)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_ip(scope: Mapping[str, Any], trusted_proxies: Sequence[str]) -> str:
    """The client's address for per-IP limits.

    The socket peer, unless the peer is one of ``trusted_proxies`` (addresses or CIDR
    blocks): then the right-most ``X-Forwarded-For`` entry that is not a trusted proxy
    (the left-most entry when every one is trusted). A malformed entry met on the way
    means the chain cannot be believed: the peer is used. ``"unknown"`` without a peer.
    """
    client = scope.get("client")
    peer_text = str(client[0]) if client else "unknown"
    if not client or not trusted_proxies:  # only the socket to believe: the server's literal
        return peer_text
    peer = _parse_ip(peer_text)
    if peer is None:
        return peer_text
    networks = _networks(tuple(trusted_proxies))
    if not any(peer in net for net in networks):
        return str(peer)
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"x-forwarded-for"]
    entries = b",".join(values).decode("latin-1").split(",") if values else []
    found: _Address | None = None
    for entry in reversed(entries):
        found = _parse_ip(entry)
        if found is None:
            return str(peer)
        if not any(found in net for net in networks):
            return str(found)
    return str(found if found is not None else peer)
