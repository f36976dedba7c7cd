"""Rate limits, quotas, auth-failure throttling, client addresses, Redis sharing and outages."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from app_helpers import RecordingLogger
from server_helpers import OwnRedis, need_redis, redis_answers

from secureserve.errors import ConfigError, RequestRejected
from secureserve.ratelimit import RateLimiter, client_ip

SHARED_REDIS_PORT = 6379


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run one async scenario in a fresh event loop (a limiter lives in one loop)."""
    return asyncio.run(fn())  # type: ignore[arg-type]


async def rejected(awaitable: Awaitable[Any]) -> RequestRejected:
    """The ``RequestRejected`` that ``awaitable`` raises."""
    with pytest.raises(RequestRejected) as info:
        await awaitable
    return info.value


async def accepted_count(limiter: RateLimiter, principal: str, model: str, tries: int) -> int:
    """How many of ``tries`` checks pass (refusals must be 429s)."""
    ok, refused = 0, []
    for _ in range(tries):
        try:
            await limiter.check(principal, model)
        except RequestRejected as exc:
            refused.append(exc.status)
        else:
            ok += 1
    assert set(refused) <= {429}
    return ok


def assert_429_headers(exc: RequestRejected, limit: int) -> None:
    """Retry-After is a positive integer and the RateLimit-* headers describe ``limit``."""
    assert exc.status == 429
    assert exc.headers["Retry-After"].isdigit()
    assert int(exc.headers["Retry-After"]) > 0
    assert exc.headers["RateLimit-Limit"] == str(limit)
    assert exc.headers["RateLimit-Remaining"] == "0"
    assert int(exc.headers["RateLimit-Reset"]) > 0


# ---- memory storage --------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_check_allows_n_then_429(limit):
    """N requests pass, the next is 429 with Retry-After and RateLimit headers."""

    async def scenario():
        limiter = RateLimiter(per_principal=f"{limit}/minute", quota=None)
        for _ in range(limit):
            assert await limiter.check("alice", "iris") is None
        exc = await rejected(limiter.check("alice", "iris"))
        assert (exc.slug, exc.title, exc.log_reason) == (
            "rate-limited",
            "Too many requests",
            "per_principal",
        )
        assert_429_headers(exc, limit)
        assert 55 <= int(exc.headers["Retry-After"]) <= 60

    run(scenario)


def test_check_per_model_limit_shared_by_principals():
    """The per-model limit counts every principal together; the refusal names per_model."""

    async def scenario():
        limiter = RateLimiter(per_principal=None, per_model="3/minute", quota=None)
        await limiter.check("alice", "iris")
        await limiter.check("alice", "iris")
        await limiter.check("bob", "iris")
        exc = await rejected(limiter.check("bob", "iris"))
        assert (exc.slug, exc.log_reason) == ("rate-limited", "per_model")
        assert_429_headers(exc, 3)
        await limiter.check("bob", "other-model")  # another model has its own budget

    run(scenario)


def test_check_quota_exhausted_is_distinct_from_rate_limit():
    """An exhausted quota is 429 quota-exhausted (not rate-limited), with its own headers."""

    async def scenario():
        limiter = RateLimiter(per_principal="100/minute", quota="2/day")
        await limiter.check("alice", "iris")
        await limiter.check("alice", "iris")
        exc = await rejected(limiter.check("alice", "iris"))
        assert (exc.slug, exc.title, exc.log_reason) == (
            "quota-exhausted",
            "Quota exhausted",
            "quota",
        )
        assert_429_headers(exc, 2)
        assert int(exc.headers["Retry-After"]) > 86000
        await limiter.check("bob", "iris")  # quotas are per principal

    run(scenario)


def test_check_refused_rate_does_not_consume_quota():
    """Requests refused by the rate limit leave the quota untouched."""

    async def scenario():
        limiter = RateLimiter(per_principal="2/second", quota="3/day")
        assert await accepted_count(limiter, "alice", "iris", 10) == 2  # 8 refused by the rate
        await asyncio.sleep(1.05)
        await limiter.check("alice", "iris")  # the third quota unit, not the eleventh
        exc = await rejected(limiter.check("alice", "iris"))
        assert exc.slug == "quota-exhausted"
        assert (exc.headers["RateLimit-Limit"], exc.headers["RateLimit-Remaining"]) == ("3", "0")

    run(scenario)


def test_check_per_model_refusal_does_not_consume_quota():
    """A request refused by the shared per-model limit leaves its principal's quota untouched."""

    async def scenario():
        limiter = RateLimiter(per_principal=None, per_model="1/minute", quota="1/day")
        await limiter.check("alice", "iris")
        assert (await rejected(limiter.check("bob", "iris"))).log_reason == "per_model"
        await limiter.check("bob", "other")  # bob's single quota unit is still there

    run(scenario)


def test_check_refusal_by_any_window_charges_none():
    """A charge is all or nothing: refused by the model's window, the principal's stays whole."""

    async def scenario():
        limiter = RateLimiter(per_principal="2/minute", per_model="1/minute", quota=None)
        await limiter.check("alice", "iris")
        assert (await rejected(limiter.check("alice", "iris"))).log_reason == "per_model"
        await limiter.check("alice", "other")  # the refused request took none of alice's two
        assert (await rejected(limiter.check("alice", "third"))).log_reason == "per_principal"

    run(scenario)


def test_check_counts_predictions_not_requests():
    """``cost`` instances are charged together: 60/minute admits 60 predictions, in any split."""

    async def scenario():
        limiter = RateLimiter(per_principal="60/minute", quota="100/day")
        admitted, refusals = 0, []
        for _ in range(10):  # what one client sending 32 instances a request gets in a minute
            try:
                await limiter.check("alice", "iris")
                admitted += 1
                await limiter.check("alice", "iris", 31)
                admitted += 31
            except RequestRejected as exc:
                refusals.append(exc.status)
        assert refusals == [429] * 9
        assert admitted == 41  # one whole request (32), then 1 admitted per refused request
        exc = await rejected(limiter.check("alice", "iris", 30))
        assert exc.log_reason == "per_principal"
        assert exc.headers["RateLimit-Remaining"] == "19"  # a smaller request would still fit
        assert 55 <= int(exc.headers["Retry-After"]) <= 60
        await limiter.check("alice", "iris", 19)
        await rejected(limiter.check("alice", "iris"))

    run(scenario)


def test_check_quota_counts_predictions():
    """The daily quota is spent by instances; a request that would overrun it is refused whole."""

    async def scenario():
        limiter = RateLimiter(per_principal=None, quota="100/day")
        await limiter.check("alice", "iris", 64)
        exc = await rejected(limiter.check("alice", "iris", 40))
        assert (exc.slug, exc.headers["RateLimit-Remaining"]) == ("quota-exhausted", "36")
        await limiter.check("alice", "iris", 36)
        await rejected(limiter.check("alice", "iris"))

    run(scenario)


def test_check_unknown_model_charges_only_the_principal():
    """``model=None`` (a name the caller cannot see) spends its own windows, no model's."""

    async def scenario():
        limiter = RateLimiter(per_principal="3/minute", per_model="1/minute", quota="10/day")
        for _ in range(3):
            await limiter.check("alice", None)
        assert (await rejected(limiter.check("alice", None))).log_reason == "per_principal"
        await limiter.check("bob", "iris")  # the per-model window was not touched by alice

    run(scenario)


@pytest.mark.parametrize(
    ("blocked_ip", "other_ip", "shared"),
    [
        ("203.0.113.7", "203.0.113.8", False),
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),  # one /64 is one host
        ("::ffff:203.0.113.7", "203.0.113.7", True),  # IPv4-mapped is the IPv4 address
    ],
)
def test_auth_blocked_after_n_failures(blocked_ip, other_ip, shared):
    """N failures from one address block it (Retry-After); other addresses are unaffected."""

    async def scenario():
        limiter = RateLimiter(auth_failures_per_ip="3/minute")
        for _ in range(3):
            assert await limiter.auth_blocked(blocked_ip) is None
            await limiter.auth_failure(blocked_ip)
        headers = await limiter.auth_blocked(blocked_ip)
        assert headers is not None
        assert 0 < int(headers["Retry-After"]) <= 60
        assert (await limiter.auth_blocked(other_ip) is not None) is shared

    run(scenario)


def test_auth_block_is_logged_once_when_it_starts(monkeypatch):
    """A blocked address is one warning naming it and the setting, not one per request.

    It is where to look when a working key gets 429 after a few mistakes: the 429's body
    does not say which limit refused it. A block that starts again later is said again.
    """
    clock = [1_000_000.0]
    monkeypatch.setattr("secureserve.ratelimit.time.time", lambda: clock[0])
    monkeypatch.setattr("secureserve.windows.time.time", lambda: clock[0])

    async def scenario():
        log = RecordingLogger()
        limiter = RateLimiter(auth_failures_per_ip="2/minute", logger=log)
        for _ in range(2):
            await limiter.auth_failure("198.51.100.7")
        for _ in range(5):
            assert await limiter.auth_blocked("198.51.100.7") is not None
        warnings = [e for e in log.events if e[0] == "warning"]
        assert [(event, fields["client"], fields["limit"]) for _, event, fields in warnings] == [
            (
                "client address blocked after failed authentications",
                "198.51.100.7",
                '[limits] auth_failures_per_ip = "2/minute"',
            )
        ]
        assert 0 < warnings[0][2]["retry_after_s"] <= 60
        clock[0] += 61  # the failures have left the window: not blocked, nothing said
        assert await limiter.auth_blocked("198.51.100.7") is None
        for _ in range(2):
            await limiter.auth_failure("198.51.100.7")
        assert await limiter.auth_blocked("198.51.100.7") is not None
        assert len([e for e in log.events if e[0] == "warning"]) == 2

    run(scenario)


@pytest.mark.parametrize(
    "disabled", ["per_principal", "per_model", "quota", "auth_failures_per_ip"]
)
def test_none_disables_a_limit(disabled):
    """A limit set to None never refuses; the others still do."""
    tight = {"per_principal": "2/minute", "per_model": "2/minute", "quota": "2/day"}
    options: dict[str, Any] = {**tight, "auth_failures_per_ip": "2/minute", disabled: None}

    async def scenario():
        limiter = RateLimiter(**options)
        for _ in range(5):
            await limiter.auth_failure("198.51.100.1")
        assert (await limiter.auth_blocked("198.51.100.1") is None) is (
            disabled == "auth_failures_per_ip"
        )
        for _ in range(2):
            await limiter.check("alice", "iris")
        assert (await rejected(limiter.check("alice", "iris"))).log_reason != disabled

    run(scenario)


def test_all_limits_disabled_allow_everything():
    """With every limit None, checks pass and nothing is ever blocked."""

    async def scenario():
        limiter = RateLimiter(
            per_principal=None, per_model=None, quota=None, auth_failures_per_ip=None
        )
        for _ in range(50):
            assert await limiter.check("alice", "iris") is None
            await limiter.auth_failure("198.51.100.1")
        assert await limiter.auth_blocked("198.51.100.1") is None
        assert await limiter.healthy()

    run(scenario)


def test_windows_reset():
    """A tiny moving window refuses, then accepts again once its entries expire."""

    async def scenario():
        limiter = RateLimiter(per_principal="2/second", auth_failures_per_ip="1/second", quota=None)
        assert await accepted_count(limiter, "alice", "iris", 3) == 2
        await limiter.auth_failure("203.0.113.9")
        assert await limiter.auth_blocked("203.0.113.9") == {"Retry-After": "1"}
        await asyncio.sleep(1.05)
        assert await accepted_count(limiter, "alice", "iris", 3) == 2
        assert await limiter.auth_blocked("203.0.113.9") is None

    run(scenario)


def test_memory_checks_never_leave_the_event_loop(monkeypatch):
    """Memory limits run inline (no thread hop, no task per check) and windows still expire."""
    hops: list[int] = []
    to_thread = asyncio.to_thread

    async def counting(*args, **kwargs):
        hops.append(1)
        return await to_thread(*args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)

    async def scenario():
        limiter = RateLimiter(per_principal="1/second", quota=None)
        for n in range(100):
            await limiter.check(f"p{n}", "iris")
            await asyncio.sleep(0.001)  # a server's loop idles between requests
        assert hops == []
        await limiter.check("again", "iris")
        await rejected(limiter.check("again", "iris"))
        await asyncio.sleep(1.05)
        await limiter.check("again", "iris")  # the window moved on

    run(scenario)


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"per_principal": "sixty a minute"}, "per_principal"),
        ({"per_model": "1/second;10/minute"}, "per_model"),
        ({"quota": "0/day"}, "quota"),
        ({"auth_failures_per_ip": "5/fortnight"}, "auth_failures_per_ip"),
        ({"storage": "memcached://127.0.0.1:11211"}, "storage"),
        ({"storage": "127.0.0.1:6379"}, "storage"),
        ({"on_storage_error": "ignore"}, "on_storage_error"),
    ],
)
def test_bad_settings_are_config_errors(options, names):
    """A malformed rate, an unsupported storage or fallback stops start-up naming the key."""
    with pytest.raises(ConfigError, match=rf"\[limits\] {names}"):
        RateLimiter(**options)


# ---- client_ip ---------------------------------------------------------------------------


def scope_for(peer: str | None, *xff: str) -> dict[str, Any]:
    """An ASGI HTTP scope from ``peer`` with one X-Forwarded-For header per ``xff`` value."""
    headers = [(b"x-forwarded-for", value.encode()) for value in xff]
    return {"type": "http", "client": (peer, 443) if peer else None, "headers": headers}


TRUSTED = ["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("198.51.100.9", ["203.0.113.5"], "198.51.100.9"),  # untrusted peer: XFF ignored
        ("10.1.2.3", [], "10.1.2.3"),  # trusted proxy, no header
        ("10.1.2.3", ["203.0.113.5"], "203.0.113.5"),
        ("10.1.2.3", ["6.6.6.6, 203.0.113.5"], "203.0.113.5"),  # right-most untrusted wins
        ("10.1.2.3", ["6.6.6.6, 203.0.113.5, 192.0.2.1, 10.9.9.9"], "203.0.113.5"),  # chain
        ("10.1.2.3", ["6.6.6.6", "203.0.113.5, 10.9.9.9"], "203.0.113.5"),  # two headers
        ("10.1.2.3", ["10.7.7.7, 192.0.2.1"], "10.7.7.7"),  # every hop trusted: the farthest
        ("10.1.2.3", ["not-an-ip"], "10.1.2.3"),
        ("10.1.2.3", ["203.0.113.5, <script>, 10.9.9.9"], "10.1.2.3"),
        ("10.1.2.3", [""], "10.1.2.3"),
        ("10.1.2.3", ["6.6.6.6, , 10.9.9.9"], "10.1.2.3"),
        ("10.1.2.3", ["203.0.113.5:4711"], "203.0.113.5"),  # a port is dropped
        ("10.1.2.3", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("2001:db8:ffff::1", ["2001:db8::5"], "2001:db8::5"),  # IPv6 proxy and client
        ("2001:db8:ffff::1", ["2001:0db8:0000::0005, 2001:db8:ffff::2"], "2001:db8::5"),
        ("2001:db8:1::1", ["203.0.113.5"], "2001:db8:1::1"),  # untrusted IPv6 peer
        ("::ffff:10.1.2.3", ["203.0.113.5"], "203.0.113.5"),  # IPv4-mapped peer is trusted
        ("192.0.2.1", ["::ffff:203.0.113.5"], "203.0.113.5"),
        (None, ["203.0.113.5"], "unknown"),
    ],
)
def test_client_ip(peer, xff, expected):
    """The peer, unless it is a trusted proxy: then the right-most untrusted XFF entry."""
    assert client_ip(scope_for(peer, *xff), TRUSTED) == expected


@pytest.mark.parametrize("trusted", [[], ["10.0.0.1"]])
def test_client_ip_without_trust_is_the_peer(trusted):
    """With no trusted proxies (or another one) the header is never believed."""
    assert client_ip(scope_for("10.1.2.3", "203.0.113.5"), trusted) == "10.1.2.3"


def test_client_ip_bad_trusted_proxy_is_config_error():
    """A trusted_proxies entry that is no address or network is a ConfigError."""
    with pytest.raises(ConfigError, match="trusted_proxies"):
        client_ip(scope_for("10.1.2.3"), ["10.0.0.0/33"])


# ---- Redis -------------------------------------------------------------------------------


@pytest.fixture
def shared_redis() -> str:
    """The storage URL of the Redis on 127.0.0.1:6379 (skipped when it does not answer)."""
    if not redis_answers(SHARED_REDIS_PORT):
        need_redis("no Redis on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


async def wipe(limiter: RateLimiter) -> None:
    """Delete every key under the limiter's prefix in its shared storage, then close it."""
    await limiter._shared.storage.reset()
    await limiter.aclose()


@pytest.mark.redis
def test_redis_two_instances_share_limits_exactly(shared_redis):
    """Two limiters (two processes) on one Redis accept exactly N in total, even concurrently."""
    prefix = f"test-{uuid.uuid4().hex}"

    async def scenario():
        first, second = (
            RateLimiter(
                storage=shared_redis, key_prefix=prefix, per_principal="7/minute", quota="20/day"
            )
            for _ in range(2)
        )
        try:
            outcomes = await asyncio.gather(
                *(limiter.check("alice", "iris") for limiter in (first, second) * 10),
                return_exceptions=True,
            )
            refused = [exc for exc in outcomes if isinstance(exc, BaseException)]
            assert len(outcomes) - len(refused) == 7
            assert all(
                isinstance(exc, RequestRejected) and exc.log_reason == "per_principal"
                for exc in refused
            )
            for _ in range(3):  # auth failures are shared too
                await (first if _ % 2 else second).auth_failure("203.0.113.7")
            assert await second.auth_blocked("203.0.113.7") is None
            assert await first.healthy()
        finally:
            await wipe(first)
            await second.aclose()

    run(scenario)


@pytest.mark.redis
def test_redis_moving_and_fixed_keys_do_not_collide(shared_redis):
    """The same rate string as a moving window and a fixed quota lives under separate keys."""
    prefix = f"test-{uuid.uuid4().hex}"

    async def scenario():
        import redis.asyncio

        limiter = RateLimiter(
            storage=shared_redis, key_prefix=prefix, per_principal="3/day", quota="3/day"
        )
        client = redis.asyncio.Redis.from_url(shared_redis)
        try:
            for _ in range(3):
                await limiter.check("alice", "iris")
            exc = await rejected(limiter.check("alice", "iris"))
            assert (exc.status, exc.log_reason) == (429, "per_principal")
            keys = {
                key.decode(): (await client.type(key)).decode()
                for key in await client.keys(f"{prefix}:*")
            }
            assert keys == {
                f"{prefix}:mw:principal/alice/3/1/day": "list",
                f"{prefix}:fw:quota/alice/3/1/day": "string",
            }
        finally:
            await wipe(limiter)
            await client.aclose()

    run(scenario)


@pytest.mark.redis
@pytest.mark.slow
def test_redis_outage_refuse_mode_fails_closed(own_redis):
    """With on_storage_error="refuse" a dead Redis is a 503 with Retry-After, logged once."""

    async def scenario():
        log = RecordingLogger()
        limiter = RateLimiter(storage=own_redis.url, logger=log, per_principal="5/minute")
        try:
            await refuse_then_recover(limiter, log, own_redis)
        finally:
            await limiter.aclose()

    run(scenario)


async def refuse_then_recover(
    limiter: RateLimiter, log: RecordingLogger, own_redis: OwnRedis
) -> None:
    """Use, kill, expect 503s logged once; restart, expect service and one recovery line."""
    await limiter.check("alice", "iris")
    own_redis.kill()
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: limiter.check("alice", "iris"),
        lambda: limiter.auth_failure("203.0.113.7"),
        lambda: limiter.auth_blocked("203.0.113.7"),  # consults the store after a failure
        lambda: limiter.check("bob", "iris"),
    ]
    for call in calls:
        exc = await rejected(call())
        assert (exc.status, exc.slug, exc.log_reason) == (
            503,
            "limits-unavailable",
            "limits-storage",
        )
        assert exc.headers == {"Retry-After": "5"}
        assert exc.__cause__ is None  # no redis exception chained to it
    assert not await limiter.healthy()
    assert log.levels() == ["error"]
    own_redis.start()
    returned = time.monotonic()
    while True:  # full service within 2 s of its return (a retry at most every second)
        try:
            await limiter.check("alice", "iris")
            break
        except RequestRejected as exc:
            status = exc.status
        assert status == 503
        assert time.monotonic() - returned < 2.0
        await asyncio.sleep(0.05)
    assert await limiter.healthy()
    assert log.levels() == ["error", "info"]


@pytest.mark.redis
@pytest.mark.slow
def test_redis_outage_memory_mode_falls_back_and_recovers(own_redis):
    """With "memory" a dead Redis means per-process limits and one warning; recovery re-shares."""

    async def scenario():
        logs = [RecordingLogger(), RecordingLogger()]
        first, second = (
            RateLimiter(
                storage=own_redis.url,
                on_storage_error="memory",
                logger=log,
                per_principal="4/minute",
            )
            for log in logs
        )
        try:
            await fall_back_then_recover(first, second, logs, own_redis)
        finally:
            await first.aclose()
            await second.aclose()

    run(scenario)


async def fall_back_then_recover(
    first: RateLimiter, second: RateLimiter, logs: list[RecordingLogger], own_redis: OwnRedis
) -> None:
    """Share 4/minute, kill Redis: 4 each per process; restart: 4 shared again."""
    for limiter in (first, second):
        limiter._retry_s = 0.3
    assert await accepted_count(first, "alice", "iris", 2) == 2
    assert await accepted_count(second, "alice", "iris", 1) == 1
    own_redis.kill()
    # Each process now counts alone, from zero: 4 each, then 429 (not 503).
    assert await accepted_count(first, "alice", "iris", 6) == 4
    assert await accepted_count(second, "alice", "iris", 6) == 4
    await first.auth_failure("203.0.113.7")
    assert await first.auth_blocked("203.0.113.7") is None
    assert not await first.healthy()
    await asyncio.sleep(0.35)
    assert await accepted_count(first, "bob", "iris", 1) == 1  # Redis tried again: still down
    assert [log.levels() for log in logs] == [["warning"], ["warning"]]
    own_redis.start()  # empty again: it kept nothing
    await asyncio.sleep(0.35)
    assert await accepted_count(first, "alice", "iris", 3) == 3
    assert await accepted_count(second, "alice", "iris", 3) == 1  # 4 shared in total
    assert [log.levels() for log in logs] == [["warning", "info"], ["warning", "info"]]
    assert await second.healthy()


def test_auth_blocked_spares_the_store_for_addresses_without_failures(monkeypatch):
    """Only an address that failed here recently costs a storage call before authenticating."""

    async def scenario():
        limiter = RateLimiter(auth_failures_per_ip="2/minute")
        calls: list[str] = []
        backend = type(limiter._shared)
        blocked_until = backend.blocked_until

        async def counting(self, window, ident):
            calls.append(ident)
            return await blocked_until(self, window, ident)

        monkeypatch.setattr(backend, "blocked_until", counting)
        assert await limiter.auth_blocked("198.51.100.9") is None
        assert calls == []
        await limiter.auth_failure("198.51.100.9")
        await limiter.auth_failure("198.51.100.9")
        assert await limiter.auth_blocked("198.51.100.9") is not None
        assert calls == ["198.51.100.9"]

    run(scenario)


@pytest.mark.redis
def test_redis_charges_predictions_like_memory(shared_redis):
    """The Redis script and the memory windows refuse the same charges, with the same headers."""
    prefix = f"test-{uuid.uuid4().hex}"
    steps = [
        ("alice", "iris", 5),
        ("alice", "iris", 4),
        ("alice", "iris", 2),
        ("bob", "iris", 2),
        ("bob", "iris", 1),
        ("alice", None, 1),
        ("bob", "other", 3),
        ("bob", "other", 1),
    ]

    async def outcomes(limiter: RateLimiter) -> list[tuple[Any, ...]]:
        seen: list[tuple[Any, ...]] = []
        for principal, model, cost in steps:
            try:
                await limiter.check(principal, model, cost)
                seen.append(("ok",))
            except RequestRejected as exc:
                headers = exc.headers
                seen.append(
                    (
                        exc.log_reason,
                        headers["RateLimit-Remaining"],
                        headers["RateLimit-Limit"],
                        headers["Retry-After"],
                    )
                )
        return seen

    async def scenario():
        options = {"per_principal": "10/minute", "per_model": "12/minute", "quota": "11/day"}
        memory = await outcomes(RateLimiter(**options))
        shared = RateLimiter(storage=shared_redis, key_prefix=prefix, **options)
        try:
            assert await outcomes(shared) == memory
        finally:
            await wipe(shared)
        assert memory[:3] == [("ok",), ("ok",), ("per_principal", "1", "10", memory[2][3])]

    run(scenario)


@pytest.mark.redis
def test_redis_one_round_trip_for_the_charges_of_one_loop_iteration(shared_redis, monkeypatch):
    """32 concurrent requests cost one script call (one round trip), not one per window."""
    prefix = f"test-{uuid.uuid4().hex}"

    async def scenario():
        limiter = RateLimiter(
            storage=shared_redis,
            key_prefix=prefix,
            per_principal="20/minute",
            per_model="100/minute",
            quota="1000/day",
        )
        script = limiter._shared._script
        calls: list[int] = []

        class Counting:
            async def __call__(self, keys, args):
                calls.append(len(keys))
                return await script(keys, args)

        monkeypatch.setattr(limiter._shared, "_script", Counting())
        try:
            outcomes = await asyncio.gather(
                *(limiter.check("alice", "iris") for _ in range(32)), return_exceptions=True
            )
            assert calls == [96]  # 32 charges of 3 windows each, in one call
            refused = [o for o in outcomes if isinstance(o, RequestRejected)]
            assert len(refused) == 12
            assert {o.log_reason for o in refused} == {"per_principal"}
        finally:
            await wipe(limiter)

    run(scenario)


@pytest.mark.redis
@pytest.mark.slow
def test_redis_hung_costs_at_most_the_storage_timeout(own_redis):
    """A stopped Redis (connects, never answers) costs at most storage_timeout_s.

    Then 503 at once until the next retry; service is back within 2 s of it answering.
    """

    async def scenario():
        log = RecordingLogger()
        limiter = RateLimiter(storage=own_redis.url, logger=log, storage_timeout_s=0.3)
        try:
            await limiter.check("alice", "iris")
            assert own_redis.process is not None
            own_redis.process.send_signal(signal.SIGSTOP)
            waits = []
            for _ in range(20):
                start = time.monotonic()
                exc = await rejected(limiter.check("alice", "iris"))
                waits.append(time.monotonic() - start)
                assert (exc.status, exc.slug) == (503, "limits-unavailable")
                await asyncio.sleep(0.1)
            assert max(waits) < 0.3 + 0.25  # the deadline, never the socket's retries on top
            assert sorted(waits)[len(waits) // 2] < 0.05  # most fail at once between retries
            own_redis.process.send_signal(signal.SIGCONT)
            returned = time.monotonic()
            while True:
                try:
                    await limiter.check("alice", "iris")
                    break
                except RequestRejected:
                    assert time.monotonic() - returned < 2.0
                    await asyncio.sleep(0.05)
        finally:
            if own_redis.process is not None:
                own_redis.process.send_signal(signal.SIGCONT)
            await limiter.aclose()

    run(scenario)
