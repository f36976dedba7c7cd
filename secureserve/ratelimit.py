"""Rate limits, quotas and failed-authentication throttling, counted in predictions.

One :class:`RateLimiter` per process answers three questions for the middleware and
the routes: may this principal have ``cost`` more predictions of this model now
(:meth:`RateLimiter.check`), may this address try to authenticate
(:meth:`RateLimiter.auth_blocked`, asked *before* credentials are verified) and is the
shared storage up (:meth:`RateLimiter.healthy`).

Predictions, not requests. ``per_principal``, ``per_model`` and ``quota`` count
instances: a route charges 1 when it admits a request (before the body is read, so a
bad body still costs) and ``n - 1`` more once the body decoded to ``n`` instances. A
charge is taken from the principal's window, the model's window and the quota together
or not at all (:mod:`secureserve.windows`), so a request that would cross any of them is
refused whole, with ``Retry-After`` saying when a request of that size fits again.
A request for a model name the principal cannot see charges only the principal's own
windows (``model=None``), never a per-model window named by a made-up name.

Strategies. Rates (``per_principal``, ``per_model``) and failed authentications are
moving windows: no burst of twice the limit at a window edge. The long ``quota`` is a
fixed window starting at a principal's first prediction: a budget, not a burst control,
and one counter instead of one entry per prediction.

Keys (``limits``' layout, so its tools read them; the prefix is ``key_prefix``)::

    secureserve:mw:principal/<principal id>/60/1/minute
    secureserve:mw:model/<model>/600/1/minute          (all principals together)
    secureserve:mw:auth-ip/<ip or IPv6 /64>/10/1/minute
    secureserve:fw:quota/<principal id>/10000/1/day
    secureserve:mw:model-principal/<model>/<principal id>/5/1/minute   ([models.<name>.limits])
    secureserve:fw:model-quota/<model>/<principal id>/1000/1/day

Storage errors. Every call on the shared storage has a deadline,
``storage_timeout_s``; a call that fails or misses it marks the storage down. Then
``on_storage_error="refuse"`` (the default) fails closed: 503 ``limits-unavailable``
with ``Retry-After``, at once for every request until the next retry, at most every
:data:`_RETRY_S` second (so a hung Redis costs one request per second its deadline, not
every request). ``"memory"`` counts in per-process memory meanwhile, logging one warning
per outage. The first call the storage answers again restores it (logged). IPv6 clients
are throttled per /64, the block one host is given. Use one ``RateLimiter`` from one
event loop (the Redis client's connections belong to the loop that opened them).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal, TypeVar

from limits.aio.storage import Storage
from limits.errors import ConfigurationError
from limits.storage import storage_from_string

from secureserve.addresses import address_key, client_ip
from secureserve.config import parse_rate
from secureserve.errors import ConfigError, RequestRejected
from secureserve.logs import get_logger
from secureserve.redis_windows import RedisWindows
from secureserve.settings import DEFAULT_STORAGE_TIMEOUT_S
from secureserve.windows import MemoryWindows, Refusal, Window

__all__ = ["RateLimiter", "address_key", "client_ip"]  # the last two from addresses.py

_T = TypeVar("_T")
_RETRY_S: Final = 1.0
_UNAVAILABLE_RETRY_AFTER: Final = "5"
_SCHEMES: Final = {
    "memory": "async+memory",
    "redis": "async+redis",
    "rediss": "async+rediss",
    "async+memory": "async+memory",
    "async+redis": "async+redis",
    "async+rediss": "async+rediss",
}
_Backend = MemoryWindows | RedisWindows


def _window(key: str, value: str | None, namespace: str, *, moving: bool) -> Window | None:
    if value is None:
        return None
    item = parse_rate(key, value)
    return Window(type(item)(item.amount, item.multiples, namespace=namespace), moving, key)


def throttle_window(value: str) -> Window:
    """The moving window of ``[model.extraction] throttle_rate``.

    A principal suspected of extraction is charged on it too while ``action`` is
    ``throttle``.
    """
    item = parse_rate("throttle_rate", value, section="model.extraction")
    limit = type(item)(item.amount, item.multiples, namespace="mw:throttle")
    return Window(limit, moving=True, reason="throttle")


def _storage(storage: str, key_prefix: str, timeout_s: float) -> Storage:
    scheme, sep, rest = storage.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(
            f'[limits] storage: unsupported scheme {scheme!r}; use "memory://" (one process) '
            'or "redis://host:port/db" (shared by replicas)'
        )
    uri = f"{_SCHEMES[scheme]}://{rest}"
    try:
        built = storage_from_string(
            uri, wrap_exceptions=True, **_redis_options(key_prefix, timeout_s)
        )
    except (ConfigurationError, ImportError):
        raise ConfigError(
            '[limits] storage: Redis storage needs the "redis" package (>= 5.2); '
            'install it with: pip install "redis>=5.2"'
        ) from None
    if not isinstance(built, Storage):  # pragma: no cover - the async+ schemes map here
        raise ConfigError("[limits] storage: not an asynchronous storage")
    return built


def _redis_options(key_prefix: str, timeout_s: float) -> dict[str, Any]:
    """redis-py options: our key prefix, bounded waits, one retry on a new connection.

    The retry matters when Redis comes back: pooled connections to the dead server
    fail once each, and without it every one of them would cost a refused request.
    The limiter's own deadline bounds the whole call, retry included.
    """
    from redis.asyncio.retry import Retry  # noqa: PLC0415 - optional: only with Redis storage
    from redis.backoff import NoBackoff  # noqa: PLC0415

    return {
        "implementation": "redispy",
        "key_prefix": key_prefix,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }


def _seconds_until(epoch: float) -> str:
    return str(max(1, math.ceil(epoch - time.time())))


#: Addresses each per-address table holds (recent failures, blocks logged) before it is
#: emptied: a flood of addresses costs at most this many entries (a few MB) per table.
_MAX_RECENT_FAILURES: Final = 100_000


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
        explain_per_principal: str | None = "10/minute",
        on_storage_error: Literal["refuse", "memory"] = "refuse",
        storage_timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S,
        key_prefix: str = "secureserve",
        logger: Any = None,
        model_limits: Mapping[str, tuple[str | None, str | None]] | None = None,
    ) -> None:
        if on_storage_error not in {"refuse", "memory"}:
            raise ConfigError(
                f'[limits] on_storage_error = {on_storage_error!r}: use "refuse" or "memory"'
            )
        self._principal = _window("per_principal", per_principal, "mw:principal", moving=True)
        self._model = _window("per_model", per_model, "mw:model", moving=True)
        self._quota = _window("quota", quota, "fw:quota", moving=False)
        self._explain = _window(
            "explain_per_principal", explain_per_principal, "mw:explain", moving=True
        )
        self._auth = _window(
            "auth_failures_per_ip", auth_failures_per_ip, "mw:auth-ip", moving=True
        )
        # a model's own per-principal rate and quota ([models.<name>.limits]), by model
        self._per_model: dict[str, tuple[Window | None, Window | None]] = {
            model: (
                _window("per_principal", rate, "mw:model-principal", moving=True),
                _window("quota", quota, "fw:model-quota", moving=False),
            )
            for model, (rate, quota) in (model_limits or {}).items()
        }
        self._recent_failures: dict[str, float] = {}  # address key -> last failure here
        self._blocked: dict[str, float] = {}  # address key -> end of the block logged
        self._auth_setting = auth_failures_per_ip
        shared_storage = _SCHEMES.get(storage.partition("://")[0]) != "async+memory"
        self._shared: _Backend = (
            RedisWindows(
                _storage(storage, key_prefix, storage_timeout_s), timeout_s=storage_timeout_s
            )
            if shared_storage
            else MemoryWindows()
        )
        self._fallback = (
            MemoryWindows() if on_storage_error == "memory" and shared_storage else None
        )
        self._timeout_s = storage_timeout_s
        self._retry_s = _RETRY_S
        self._down = False
        self._next_try = 0.0
        self._log = logger if logger is not None else get_logger("secureserve.ratelimit")

    async def check(
        self,
        principal_id: str,
        model: str | None,
        cost: int = 1,
        *,
        throttle: Window | None = None,
    ) -> None:
        """Charge ``cost`` predictions by ``principal_id`` on ``model``, all windows or none.

        ``model`` is None for a name the principal may not see: only the principal's own
        windows are charged. ``throttle`` is one more window for this principal (a
        suspected extraction). Raises ``RequestRejected`` 429 ``rate-limited`` or
        ``quota-exhausted`` (with ``Retry-After`` and ``RateLimit-*``), or 503
        ``limits-unavailable``.
        """
        own_rate, own_quota = self._per_model.get(model, (None, None)) if model else (None, None)
        plan = [
            (window, ident)
            for window, ident in (
                (self._principal, principal_id),
                (self._model, model),
                (self._quota, principal_id),
            )
            if window is not None and ident is not None
        ]
        if own_rate is not None or own_quota is not None:  # this principal on this model
            mine = f"{model}/{principal_id}"
            plan += [(window, mine) for window in (own_rate, own_quota) if window is not None]
        if throttle is not None:
            plan.append((throttle, self.throttle_key(model, principal_id)))
        if not plan or cost < 1:
            return
        shared = self._shared
        if isinstance(shared, MemoryWindows):  # what _run would do, without its awaits
            refusal = shared.charge_now(plan, cost)
        else:
            refusal = (await self._run(lambda backend: backend.charge([(plan, cost)])))[0]
        if refusal is not None:
            raise _refused(refusal)

    @property
    def explain_amount(self) -> int | None:
        """Instances ``explain_per_principal`` admits per window (None: no such limit)."""
        return self._explain.amount if self._explain is not None else None

    async def check_explain(
        self,
        principal_id: str,
        model: str,
        instances: int,
        evaluations: int,
        *,
        throttle: Window | None = None,
    ) -> None:
        """Charge an explanation of ``model``, 429 like :meth:`check`.

        ``instances`` go on ``explain_per_principal``, the model's own per-principal
        rate (``[models.<name>.limits]``) and ``throttle`` (a suspected extraction's extra
        window); then the model ``evaluations`` it runs on the quota and the model's own
        quota. Each window is charged on its own: one that refuses does not undo the
        ones before.
        """
        own_rate, own_quota = self._per_model.get(model, (None, None))
        mine = f"{model}/{principal_id}"
        charges = (
            (self._explain, principal_id, instances),
            (own_rate, mine, instances),
            (throttle, self.throttle_key(model, principal_id), instances),
            (self._quota, principal_id, evaluations),
            (own_quota, mine, evaluations),
        )
        for window, ident, cost in charges:
            if window is not None and cost >= 1:
                await self._charge_one(window, ident, cost)

    @staticmethod
    def throttle_key(model: str | None, principal_id: str) -> str:
        """Whom a throttle window counts: the principal on that model (models apart)."""
        return f"{model}/{principal_id}" if model else principal_id

    async def _charge_one(self, window: Window, ident: str, cost: int) -> None:
        plan = [(window, ident)]
        refusal = (await self._run(lambda backend: backend.charge([(plan, cost)])))[0]
        if refusal is not None:
            raise _refused(refusal)

    async def auth_failure(self, ip: str) -> None:
        """Record one failed authentication from ``ip``."""
        if self._auth is not None:
            auth, key = self._auth, address_key(ip)
            failures = self._recent_failures
            if len(failures) >= _MAX_RECENT_FAILURES:  # a flood of addresses: forget the hints
                failures.clear()
            failures[key] = time.monotonic()
            await self._run(lambda backend: backend.charge([([(auth, key)], 1)]))

    async def auth_blocked(self, ip: str) -> dict[str, str] | None:
        """None if ``ip`` may try to authenticate, else the 429 headers (``Retry-After``).

        The counters are consulted only for an address that failed in this process
        within the window: every other request is spared a storage call (a Redis round
        trip). With replicas, an address blocked by its failures on another replica gets
        at most one more failure here before this replica consults the shared count too.
        """
        if self._auth is None:
            return None
        auth, key = self._auth, address_key(ip)
        last = self._recent_failures.get(key)
        if last is None:
            return None
        if time.monotonic() - last > auth.expiry:
            self._recent_failures.pop(key, None)
            return None
        until = await self._run(lambda backend: backend.blocked_until(auth, key))
        if until is None:
            return None
        retry_after = _seconds_until(until)
        if self._blocked.get(key, 0.0) < time.time():  # a new block: said once, at its start
            if len(self._blocked) >= _MAX_RECENT_FAILURES:  # bounded like the hints above
                self._blocked.clear()
            self._blocked[key] = time.time() + int(retry_after)  # this clock's, not the store's
            self._log.warning(
                "client address blocked after failed authentications",
                client=key,
                limit=f'[limits] auth_failures_per_ip = "{self._auth_setting}"',
                retry_after_s=int(retry_after),
            )
        return {"Retry-After": retry_after}

    @property
    def shared(self) -> bool:
        """Whether the limits live in a storage shared by replicas (Redis)."""
        return not isinstance(self._shared, MemoryWindows)

    async def set_mark(self, name: str, *, on: bool) -> bool:
        """Set or remove a mark every replica sees (a suspected extraction); False on failure.

        Nothing to do with ``memory://``: one process, its own state is the truth.
        """
        shared = self._shared
        if isinstance(shared, MemoryWindows):
            return True
        try:
            await shared.set_mark(name, on=on)
        except Exception as exc:  # noqa: BLE001 - reported; the caller keeps its own state
            self._log.error("shared mark not written", error=type(exc).__name__)
            return False
        return True

    async def marked(self, name: str) -> bool | None:
        """Whether another replica (or this one) set the mark; None if unknown."""
        shared = self._shared
        if isinstance(shared, MemoryWindows):
            return None
        try:
            return await shared.marked(name)
        except Exception as exc:  # noqa: BLE001 - unknown: the caller keeps its own state
            self._log.error("shared mark not read", error=type(exc).__name__)
            return None

    async def healthy(self) -> bool:
        """Whether the configured (shared) storage answers."""
        shared = self._shared
        if isinstance(shared, MemoryWindows):
            return True
        try:
            async with asyncio.timeout(self._timeout_s):
                return bool(await shared.storage.check())
        except Exception:  # noqa: BLE001 - any failure to answer is "not healthy"
            return False

    async def aclose(self) -> None:
        """Close the shared storage's connections; call at shutdown, on the loop that used it.

        ``limits`` has no close of its own for Redis, so this reaches its redis-py client.
        """
        storage = getattr(self._shared, "storage", None)
        client = getattr(getattr(storage, "bridge", None), "storage", None)
        close = getattr(client, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def _run(self, op: Callable[[_Backend], Awaitable[_T]]) -> _T:
        """``op`` on the shared storage; on failure (or its deadline), 503 or memory.

        The Redis backend bounds each of its calls by ``storage_timeout_s`` itself (one
        deadline per batched script call, not one per request).
        """
        shared = self._shared
        if isinstance(shared, MemoryWindows):  # inline on the loop: nothing to wait for
            return await op(shared)
        fallback = self._fallback
        if not self._down or time.monotonic() >= self._next_try:
            self._next_try = time.monotonic() + self._retry_s
            try:
                result = await op(shared)
            except Exception as exc:  # noqa: BLE001 - no storage error may escape: fail closed
                self._failed(exc)
            else:
                self._up()
                return result
        if fallback is None:
            raise _unavailable()
        try:
            return await op(fallback)
        except Exception as exc:  # noqa: BLE001 - the memory storage failing is still closed
            self._log.error("rate-limit memory storage failed", error=type(exc).__name__)
            raise _unavailable() from None

    def _failed(self, exc: Exception) -> None:
        error = getattr(exc, "kind", None) or type(getattr(exc, "storage_error", exc)).__name__
        if not self._down:
            self._down = True
            if self._fallback is None:
                self._log.error(
                    "rate-limit storage unavailable: refusing requests",
                    error=error,
                    retry_s=self._retry_s,
                )
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


def _refused(refusal: Refusal) -> RequestRejected:
    window = refusal.window
    quota = not window.moving
    retry_after = _seconds_until(refusal.retry_at)
    return RequestRejected(
        429,
        "quota-exhausted" if quota else "rate-limited",
        "Quota exhausted" if quota else "Too many requests",
        headers={
            "Retry-After": retry_after,
            "RateLimit-Limit": str(window.amount),
            "RateLimit-Remaining": str(refusal.remaining),
            "RateLimit-Reset": retry_after,
        },
        log_reason=window.reason,
    )


def _unavailable() -> RequestRejected:
    return RequestRejected(
        503,
        "limits-unavailable",
        "Service unavailable",
        headers={"Retry-After": _UNAVAILABLE_RETRY_AFTER},
        log_reason="limits-storage",
    )
