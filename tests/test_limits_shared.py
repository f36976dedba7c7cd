"""Rate limits shared through Redis by real ``secureserve run`` processes.

Three replicas on one Redis hold one global limit exactly; a Redis outage fails
closed (503 ``limits-unavailable``) and recovers when Redis returns; the logged
``on_storage_error = "memory"`` opt-in keeps serving on per-process counters.

Isolation: each test uses its own ``[limits] key_prefix`` (a random one, through
``SECURESERVE_LIMITS__KEY_PREFIX``) on the machine's Redis, and deletes only the keys
under it at the end; the outage tests run their own ``redis-server`` on a free port
and kill only that one. Without Redis these tests skip, unless
``SECURESERVE_REQUIRE_REDIS=1`` (set by .ci/run): then they fail.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from server_helpers import (
    HOST,
    Reply,
    ServerProcess,
    need_redis,
    production_iris,
    redis_answers,
    running_server,
    set_toml,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]

SHARED_REDIS_PORT = 6379
VALID = {"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}
PROBLEM = "urn:secureserve:problem:"
RECOVERY_TIMEOUT_S = 10.0  # the memory fallback retries Redis at most every 5 s
LOG_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- Redis


def fresh_prefix() -> str:
    """A ``[limits] key_prefix`` no other run uses, so counters are never shared by accident."""
    return f"sstest-{secrets.token_hex(6)}"


def delete_prefix(port: int, prefix: str) -> None:
    """Delete the keys under ``prefix`` (and only those) in DB 0 of the Redis on ``port``."""
    client = redis.Redis(host=HOST, port=port, db=0, socket_timeout=2)
    try:
        names = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if names:
            client.delete(*names)
    finally:
        client.close()


def count_prefix(port: int, prefix: str) -> int:
    """How many keys exist under ``prefix`` in DB 0 of the Redis on ``port``."""
    client = redis.Redis(host=HOST, port=port, db=0, socket_timeout=2)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}:*", count=500))
    finally:
        client.close()


# --------------------------------------------------------------------------- servers


@pytest.fixture
def production_project(tmp_path: Path) -> tuple[Path, Path, str]:
    """An iris project set up as in production: ``(project, CA certificate, API key)``.

    Non-dev servers, because ``--dev`` mints a new key on every start and revokes the
    previous one: replicas must share one key made with ``create_key``.
    """
    production = production_iris(tmp_path, "replicas")
    certs = production.certs
    set_toml(production.project, "tls", cert=certs.cert, key=certs.key)
    return production.project, certs.ca_cert, production.key.secret


def limits_env(storage: str, prefix: str, per_principal: str, **extra: str) -> dict[str, str]:
    """``[limits]`` through the environment: only ``per_principal`` counts (no quota).

    ``max_instances`` is lowered to 4 so that small rates are valid settings (start-up
    refuses a rate that could never admit a full request).
    """
    return {
        "SECURESERVE_SERVER__MAX_INSTANCES": "4",
        "SECURESERVE_LIMITS__STORAGE": storage,
        "SECURESERVE_LIMITS__KEY_PREFIX": prefix,
        "SECURESERVE_LIMITS__PER_PRINCIPAL": per_principal,
        "SECURESERVE_LIMITS__QUOTA": "null",
        **extra,
    }


@contextlib.contextmanager
def replicas(
    project: Path, ca: Path, key: str, env: dict[str, str], count: int
) -> Iterator[list[ServerProcess]]:
    """``count`` servers of one project, each with its own audit log; all stopped at the end."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                running_server(
                    project,
                    dev=False,
                    ca=ca,
                    key=key,
                    env={**env, "SECURESERVE_AUDIT__PATH": str(project / "audit" / f"r{n}.jsonl")},
                )
            )
            for n in range(count)
        ]
        yield servers


def round_robin(servers: list[ServerProcess], total: int) -> list[Reply]:
    """``total`` predictions, one after the other, to each server in turn."""
    return [servers[n % len(servers)].predict(VALID) for n in range(total)]


def problem_type(reply: Reply) -> str:
    """The ``type`` of a problem+json reply."""
    body = reply.json()
    assert isinstance(body, dict), reply.body
    return str(body["type"])


def assert_retry_after(reply: Reply, *, at_most: int) -> None:
    """``Retry-After`` is a whole number of seconds in ``1..at_most``."""
    value = reply.headers.get("retry-after")
    assert value is not None, reply.headers
    assert value.isdigit(), value
    assert 1 <= int(value) <= at_most, value


def events(server: ServerProcess) -> list[dict[str, object]]:
    """The server's JSON log lines (stdout), complete ones only."""
    return server.log_lines()


def wait_for_event(
    server: ServerProcess, match: Callable[[dict[str, object]], bool]
) -> dict[str, object]:
    """The first log line ``match`` accepts, waiting up to LOG_TIMEOUT_S for it."""
    deadline = time.monotonic() + LOG_TIMEOUT_S
    while True:
        found = next((line for line in events(server) if match(line)), None)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"no such log line; the log ends:\n{server.stdout()[-3000:]}")
        time.sleep(0.05)


def starts_with(text: str) -> Callable[[dict[str, object]], bool]:
    """A log-line matcher on the start of ``event``."""
    return lambda line: str(line.get("event", "")).startswith(text)


# --------------------------------------------------------------------------- tests


def test_limits_shared_across_three_replicas_exact(production_project):
    """Three replicas on one Redis accept exactly ``per_principal`` requests in total.

    21 predictions go round-robin, one at a time, to three servers limited to 7 a minute
    per principal: exactly 7 succeed, the other 14 are 429 ``rate-limited`` with
    ``Retry-After`` and ``RateLimit-Remaining: 0``. The same three replicas with memory
    storage accept all 21 (7 each): the shared storage is what makes the limit global.
    """
    if not redis_answers(SHARED_REDIS_PORT):
        need_redis(f"no Redis answers on {HOST}:{SHARED_REDIS_PORT}")
    project, ca, key = production_project
    prefix = fresh_prefix()
    shared = limits_env(f"redis://{HOST}:{SHARED_REDIS_PORT}/0", prefix, "7/minute")
    try:
        with replicas(project, ca, key, shared, 3) as servers:
            replies = round_robin(servers, 21)
            assert count_prefix(SHARED_REDIS_PORT, prefix) > 0  # the counters are in Redis
    finally:
        delete_prefix(SHARED_REDIS_PORT, prefix)

    statuses = [reply.status for reply in replies]
    assert statuses == [200] * 7 + [429] * 14, statuses
    for reply in replies[:7]:
        body = reply.json()
        assert isinstance(body, dict), reply.body
        assert body["predictions"][0]["label"] == "setosa"
    for reply in replies[7:]:
        assert problem_type(reply) == PROBLEM + "rate-limited", reply.body
        assert_retry_after(reply, at_most=60)
        assert reply.headers["ratelimit-limit"] == "7"
        assert reply.headers["ratelimit-remaining"] == "0"

    alone = limits_env("memory://", fresh_prefix(), "7/minute")
    with replicas(project, ca, key, alone, 3) as servers:
        assert [reply.status for reply in round_robin(servers, 21)] == [200] * 21


def test_limits_redis_outage_fails_closed_then_recovers(production_project, own_redis):
    """With Redis gone, predictions are 503 ``limits-unavailable``; they succeed once it is back.

    The default ``on_storage_error = "refuse"``: after ``redis-server`` is killed no
    prediction succeeds (the first one is already refused, bounded by the 0.5 s Redis
    timeouts), each refusal carries ``Retry-After`` and no internals, and ``/healthz``
    still answers. Restarted on the same port, predictions succeed again within seconds.
    """
    project, ca, key = production_project
    env = limits_env(own_redis.url, fresh_prefix(), "1000/minute")
    with replicas(project, ca, key, env, 1) as (server,):
        assert server.predict(VALID).status == 200

        own_redis.kill()
        refused = [server.predict(VALID) for _ in range(3)]
        for reply in refused:
            assert reply.status == 503, (reply.status, reply.body)
            assert problem_type(reply) == PROBLEM + "limits-unavailable"
            assert_retry_after(reply, at_most=60)
            text = reply.body.decode().lower()
            assert "redis" not in text, text
            assert "connection" not in text, text
        assert server.request("GET", "/healthz").status == 200
        wait_for_event(server, starts_with("rate-limit storage unavailable: refusing"))

        own_redis.start()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while (reply := server.predict(VALID)).status != 200:
            assert reply.status == 503, (reply.status, reply.body)
            assert time.monotonic() < deadline, "predictions still refused after Redis returned"
            time.sleep(0.2)
        wait_for_event(server, starts_with("rate-limit storage answers again"))
        assert server.alive()


def test_limits_redis_outage_memory_opt_in(production_project, own_redis):
    """``on_storage_error = "memory"`` serves through an outage on per-process counters.

    Start-up logs the "insecure opt-in" warning. With Redis killed, predictions still
    succeed and a warning names the fallback; the memory counters still enforce
    ``per_principal`` (4 a minute: the 5th in the outage is a 429). When Redis returns,
    the next retry of it (at most every 5 s) switches back: a prediction succeeds again,
    counted in the (empty) restarted Redis, and the switch is logged.
    """
    project, ca, key = production_project
    env = limits_env(
        own_redis.url, fresh_prefix(), "4/minute", SECURESERVE_LIMITS__ON_STORAGE_ERROR="memory"
    )
    with replicas(project, ca, key, env, 1) as (server,):
        opt_in = wait_for_event(server, starts_with("insecure opt-in: [limits] on_storage_error"))
        assert opt_in["level"] == "warning"
        assert server.predict(VALID).status == 200

        own_redis.kill()
        during = [server.predict(VALID) for _ in range(5)]
        assert [reply.status for reply in during] == [200] * 4 + [429], [r.body for r in during]
        assert problem_type(during[-1]) == PROBLEM + "rate-limited"
        fallback = wait_for_event(
            server, starts_with("rate-limit storage unavailable: per-process memory")
        )
        assert fallback["level"] == "warning"
        assert server.request("GET", "/healthz").status == 200

        own_redis.start()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while (reply := server.predict(VALID)).status != 200:
            assert reply.status == 429, (reply.status, reply.body)  # memory counters, still full
            assert time.monotonic() < deadline, "Redis not used again after it returned"
            time.sleep(0.25)
        wait_for_event(server, starts_with("rate-limit storage answers again"))


def test_limits_redis_hung_then_dead_under_load(production_project, own_redis):
    """Under a load of 8 connections, Redis hung and then killed: fail closed, fast, and back.

    Redis is first stopped (SIGSTOP: it accepts connections and never answers), then
    killed and restarted on the same port, while 8 clients predict in a loop. While it is
    down every answer is a 503 ``limits-unavailable``; no answer takes much longer than
    ``storage_timeout_s`` (0.3 s); each time it answers again, predictions are served
    again within 2 s (a retry at most every second).
    """
    project, ca, key = production_project
    env = limits_env(
        own_redis.url, fresh_prefix(), "100000/minute", SECURESERVE_LIMITS__STORAGE_TIMEOUT_S="0.3"
    )
    outages: list[tuple[float, float]] = []  # (down at, answering again at)
    with replicas(project, ca, key, env, 1) as (server,):
        assert server.predict(VALID).status == 200
        samples: list[tuple[float, float, int]] = []  # (start, seconds, status)
        lock = threading.Lock()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                start = time.monotonic()
                status = server.predict(VALID).status
                with lock:
                    samples.append((start, time.monotonic() - start, status))

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            assert own_redis.process is not None
            own_redis.process.send_signal(signal.SIGSTOP)
            down = time.monotonic()
            time.sleep(3)
            own_redis.process.send_signal(signal.SIGCONT)
            outages.append((down, time.monotonic()))
            time.sleep(3)
            own_redis.kill()
            down = time.monotonic()
            time.sleep(3)
            own_redis.start()  # returns once it answers PING
            outages.append((down, time.monotonic()))
            time.sleep(3)
        finally:
            if own_redis.process is not None:
                own_redis.process.send_signal(signal.SIGCONT)
            stop.set()
            for thread in threads:
                thread.join(20)
    assert max(seconds for _, seconds, _ in samples) < 0.3 + 1.0
    for down, back in outages:
        during = [status for start, _, status in samples if down + 0.5 < start < back - 0.5]
        assert during, "no request was sent while Redis was down"
        assert set(during) == {503}
        served = [start for start, _, status in samples if start > back and status == 200]
        assert served, "no prediction served after Redis came back"
        assert min(served) - back < 2.0
        # before the next outage begins, 3 s after this one ended
        settled = [status for start, _, status in samples if back + 2.0 < start < back + 2.8]
        assert settled
        assert set(settled) == {200}
