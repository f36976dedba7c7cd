"""Soak: many requests, valid and refused, and what stays in the server's memory.

Two measurements against ``secureserve run`` (set up as in run.py: a copy of
examples/iris, a local CA and certificate, an API key, the audit log on):

1. **404 flood**: ``--flood`` bodiless requests to ``POST /v1/models/other:predict`` on one
   connection by an authenticated principal (the request the outside audit used to grow
   the server by 10 KB each); RSS before and after.
2. **Mixed soak**: ``--requests`` requests from ``--clients`` keep-alive connections:
   mostly valid predictions, with refused ones mixed in (401 wrong key, 404 unknown
   model, 422 bad instance, 413 oversized body, and 429 from an address that failed to
   authenticate too often). RSS is read after the first ``--warmup`` share of the
   requests and at the end; any answer other than the expected one is an error.

Only 127.0.0.1 and 127.0.0.2 are contacted; every phase is bounded in requests and time.

    .venv/bin/python benchmarks/soak.py --requests 100000 --flood 8000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # the harness beside this file

BODY = run.BODY
BIG = b'{"instances":[' + b'{"features":[1,2,3,4]},' * 90_000 + b'{"features":[1,2,3,4]}]}'
BAD = b'{"instances":[{"features":[1,2]}]}'
WRONG_KEY = "ss_000000000000_" + "A" * 43

# (share of requests, path, body, key kind, expected status, source address)
MIX: list[tuple[int, str, bytes, str, set[int], str]] = [
    (80, run.PATH, BODY, "good", {200}, "127.0.0.1"),
    (5, "/v1/models/other:predict", BODY, "good", {404}, "127.0.0.1"),
    (5, run.PATH, BAD, "good", {422}, "127.0.0.1"),
    (4, run.PATH, BODY, "wrong", {401, 429}, "127.0.0.2"),  # 429 once the address is blocked
    (1, run.PATH, BIG, "good", {413}, "127.0.0.1"),
    (5, "/v1/models", b"", "good", {200}, "127.0.0.1"),
]


def _request(path: str, body: bytes, key: str) -> bytes:
    method = "POST" if path.endswith(":predict") else "GET"
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Authorization: Bearer {key}"]
    if method == "POST":
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if len(body) > 1 << 20:  # oversized: the head and a first piece; the 413 comes early
        body = body[: 1 << 16]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body if method == "POST" else b"")


class Connection:
    """One keep-alive TLS connection that reconnects when the server closes it."""

    def __init__(self, port: int, ctx: ssl.SSLContext, source: str) -> None:
        self.port, self.ctx, self.source = port, ctx, source
        self.tls: ssl.SSLSocket | None = None
        self.buffer = b""

    def exchange(self, raw: bytes) -> tuple[int, bool]:
        """Send ``raw``, read one response; (status, connection closed by the server)."""
        if self.tls is None:
            sock = socket.create_connection(
                ("127.0.0.1", self.port), timeout=30, source_address=(self.source, 0)
            )
            self.tls = self.ctx.wrap_socket(sock, server_hostname="localhost")
            self.buffer = b""
        with contextlib.suppress(OSError):  # an early answer (413) may have closed it
            self.tls.sendall(raw)
        while b"\r\n\r\n" not in self.buffer:
            data = self.tls.recv(65536)
            if not data:
                raise ConnectionError("closed before a response")
            self.buffer += data
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = self.tls.recv(65536)
            if not data:
                raise ConnectionError("closed inside a response")
            rest += data
        self.buffer = rest[length:]
        closed = headers.get("connection") == "close"
        if closed:
            self.close()
        return status, closed

    def close(self) -> None:
        if self.tls is not None:
            self.tls.close()
            self.tls = None


def flood(port: int, ctx: ssl.SSLContext, token: str, count: int, pid: int) -> dict[str, Any]:
    """``count`` 404s on one connection; RSS before and after."""
    conn = Connection(port, ctx, "127.0.0.1")
    # No body: a refusal sent before a declared body arrived closes the connection (and
    # each reconnection would add a TLS session to OpenSSL's bounded cache); an empty one
    # keeps the flood on one connection, as in the audit that found the leak.
    raw = _request("/v1/models/other:predict", b"", token)
    for _ in range(200):  # warm-up
        conn.exchange(raw)
    before = run.rss_kib(pid)
    start = time.perf_counter()
    statuses: collections.Counter[int] = collections.Counter()
    for _ in range(count):
        statuses[conn.exchange(raw)[0]] += 1
    seconds = time.perf_counter() - start
    time.sleep(0.5)
    after = run.rss_kib(pid)
    conn.close()
    return {
        "requests": count,
        "seconds": round(seconds, 2),
        "statuses": dict(statuses),
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
    }


def soak(
    args: argparse.Namespace, port: int, ctx: ssl.SSLContext, token: str, pid: int
) -> dict[str, Any]:
    """The mixed soak; see the module docstring."""
    plan: list[int] = []
    for index, row in enumerate(MIX):
        plan += [index] * row[0]
    counts: collections.Counter[tuple[int, int]] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    done = [0]
    rss: dict[str, int] = {}
    warm_at = int(args.requests * args.warmup)

    def client(number: int, share: int) -> None:
        conns: dict[str, Connection] = {}
        for n in range(share):
            path, body, kind, expected, source = MIX[plan[(n * 7 + number) % len(plan)]][1:]
            key = token if kind == "good" else WRONG_KEY
            conn = conns.setdefault(source, Connection(port, ctx, source))
            try:
                status, _ = conn.exchange(_request(path, body, key))
            except (OSError, ConnectionError) as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                conn.close()
                continue
            with lock:
                counts[plan[(n * 7 + number) % len(plan)], status] += 1
                if status not in expected:
                    errors[f"{path} -> {status}"] += 1
                done[0] += 1
                if done[0] == warm_at:
                    rss["after_warmup"] = run.rss_kib(pid)
        for conn in conns.values():
            conn.close()

    share = args.requests // args.clients
    threads = [threading.Thread(target=client, args=(n, share)) for n in range(args.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.timeout)
    seconds = time.perf_counter() - start
    time.sleep(0.5)
    rss["end"] = run.rss_kib(pid)
    by_status: collections.Counter[int] = collections.Counter()
    for (_, status), n in counts.items():
        by_status[status] += n
    growth = (rss["end"] - rss["after_warmup"]) / rss["after_warmup"] * 100
    return {
        "requests": sum(counts.values()),
        "seconds": round(seconds, 1),
        "req_per_s": round(sum(counts.values()) / seconds),
        "statuses": dict(sorted(by_status.items())),
        "errors": dict(errors),
        "rss_after_warmup_mib": round(rss["after_warmup"] / 1024, 1),
        "rss_end_mib": round(rss["end"] / 1024, 1),
        "rss_growth_pct": round(growth, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--flood", type=int, default=8_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of requests")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--ss-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup = run.make_setup(
        argparse.Namespace(
            core=None,
            log="devnull",
            pin=args.pin,
            ss_port=18443,
            bare_port=18444,
            ss_env=["SECURESERVE_LIMITS__AUTH_FAILURES_PER_IP=10/minute", *args.ss_env],
        )
    )
    ctx = run.client_context(setup.ca)
    with run.server(setup, run.SS) as (proc, _):
        pid = proc.pid
        results = {
            "flood": flood(setup.ss_port, ctx, setup.token, args.flood, pid),
            "soak": soak(args, setup.ss_port, ctx, setup.token, pid),
        }
    print(json.dumps(results, indent=2))
    return 0 if not results["soak"]["errors"] and results["soak"]["rss_growth_pct"] < 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
