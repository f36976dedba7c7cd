"""The HTTP edge of ``secureserve run`` (secureserve/protocol.py), over real TLS sockets.

Deadlines for silent connections, slow heads and TLS handshakes; caps on connections per
address; bounds on header count and size; refusals before the body closes the
connection; and every answer the connection sends itself (parser errors included) is a
problem with a request id, the security headers and an access-log line.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from server_helpers import (
    HOST,
    NO_LIMITS,
    ServerProcess,
    _early_answer,
    copy_iris,
    read_reply,
    request_head,
    running_server,
)

pytestmark = pytest.mark.slow

PROBLEM = "application/problem+json"
PREDICT = "/v1/models/iris:predict"
VALID = b'{"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}'
EDGE = {
    "SECURESERVE_SERVER__HEADER_TIMEOUT_S": "1",
    "SECURESERVE_SERVER__IDLE_TIMEOUT_S": "1",
    "SECURESERVE_SERVER__HANDSHAKE_TIMEOUT_S": "1",
    "SECURESERVE_SERVER__MAX_CONNECTIONS": "4000",
    "SECURESERVE_SERVER__MAX_CONNECTIONS_PER_IP": "3",
    **NO_LIMITS,
}
SECURITY_HEADERS = (
    "strict-transport-security",
    "x-content-type-options",
    "cache-control",
    "content-security-policy",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A ``--dev`` server with 1 s deadlines and at most 3 connections per address."""
    project = copy_iris(tmp_path_factory.mktemp("edge") / "iris")
    with running_server(project, env=EDGE) as running:
        yield running


def _read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Everything the server sends within ``seconds``, and whether it closed the connection."""
    data = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data.extend(chunk)
    return bytes(data), False


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``seconds``, reading past data."""
    return _read_until_closed(sock, seconds)[1]


def _assert_problem(reply, status: int) -> dict:
    """A problem+json with its request id in body and header, and the security headers."""
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["content-type"] == PROBLEM
    body = json.loads(reply.body)
    assert body["status"] == status
    assert body["request_id"] == reply.headers["x-request-id"]
    assert set(body) <= {"type", "title", "status", "request_id", "error", "detail"}
    for name in SECURITY_HEADERS:
        assert name in reply.headers, name
    assert "server" not in reply.headers
    return body


def _logged(server: ServerProcess, request_id: str) -> dict:
    """The access line of ``request_id``, waiting a little for it to be written."""
    deadline = time.monotonic() + 5
    while True:
        for line in server.log_lines():
            if line.get("event") == "request" and line.get("request_id") == request_id:
                return line
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- deadlines


def test_protocol_silent_connection_closed_after_idle_timeout(server):
    """A connection that sends nothing after its handshake is closed (idle_timeout_s = 1)."""
    with server.connect() as tls:
        assert _closed_within(tls, 5)


def test_protocol_slow_head_gets_408_problem_and_close(server):
    """A head trickled a byte at a time is answered 408 at header_timeout_s, then closed."""
    head = request_head("GET", "/v1/models", key=server.key, content_type=None)
    with server.connect() as tls:
        start = time.monotonic()
        early = b""
        for byte in head[:40]:
            tls.sendall(bytes([byte]))
            time.sleep(0.1)
            early = _early_answer(tls)
            if early:
                break  # answered: a client stops sending (else its unread answer may be reset)
        reply = read_reply(tls, prefix=early)
        assert time.monotonic() - start < 5
        body = _assert_problem(reply, 408)
        assert body["type"].endswith(":header-timeout")
        assert _closed_within(tls, 5)
    assert _logged(server, body["request_id"])["status"] == 408


def test_protocol_tls_handshake_deadline(server):
    """A TCP connection that never starts TLS is dropped at handshake_timeout_s (1 s)."""
    with socket.create_connection((HOST, server.port), timeout=10) as raw:
        assert _closed_within(raw, 5)


def test_protocol_refusal_before_the_body_closes_the_connection(server):
    """A 401 sent before a declared 1 GB body arrived ends the connection at once."""
    head = request_head("POST", PREDICT, content_length=1 << 30)
    with server.connect() as tls:
        tls.sendall(head + b"{" * 1024)
        reply = read_reply(tls)
        assert reply.status == 401
        assert reply.headers["connection"] == "close"
        assert _closed_within(tls, 5)


def test_protocol_answered_request_keeps_the_connection(server):
    """A prediction whose body was read keeps its keep-alive connection (no needless close)."""
    head = request_head("POST", PREDICT, key=server.key, content_length=len(VALID))
    with server.connect() as tls:
        for _ in range(2):
            tls.sendall(head + VALID)
            reply = read_reply(tls)
            assert reply.status == 200
            assert reply.headers.get("connection") != "close"


# --------------------------------------------------------------------------- connection caps


def test_protocol_connections_per_address_are_capped(server):
    """A 4th connection from one address is closed unanswered; another address still gets in."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(server.connect()) for _ in range(3)]
        for tls in held:  # keep them busy past the idle deadline with a slow body
            tls.sendall(request_head("POST", PREDICT, key=server.key, content_length=10))
        try:
            extra = server.connect()
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass  # closed while the handshake finished: refused just the same
        else:
            with extra:
                with contextlib.suppress(OSError):
                    extra.sendall(request_head("GET", "/healthz", content_type=None))
                extra.settimeout(5)
                try:
                    answer = extra.recv(65536)
                except (ConnectionResetError, ssl.SSLError):
                    answer = b""
                assert answer == b"", answer[:100]  # closed without a response
        with server.connect(source="127.0.0.2") as other:
            other.sendall(request_head("GET", "/healthz", content_type=None))
            assert read_reply(other).status == 200


def test_protocol_thousand_idle_and_slow_connections_do_not_stop_a_good_client(server):
    """1,000 silent or slow connections from other addresses: a prediction is still answered."""
    opened: list[ssl.SSLSocket] = []
    lock = threading.Lock()

    def open_some(first: int, count: int) -> None:
        for n in range(first, first + count):
            source = f"127.1.{n // 250}.{n % 250 + 1}"
            try:
                tls = server.connect(source=source)
            except OSError:
                continue
            if n % 2:
                tls.sendall(b"POST /v1/models/iris:pre")  # a head that never finishes
            with lock:
                opened.append(tls)

    workers = [threading.Thread(target=open_some, args=(i * 250, 250)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    try:
        assert len(opened) >= 950  # each address may hold 3: none of these was refused
        start = time.monotonic()
        reply = server.predict(json.loads(VALID))
        assert reply.status == 200
        assert time.monotonic() - start < 10
        # past both 1 s deadlines the server closes them all; on a loaded machine (the
        # suite runs on every core) closing 1,000 takes a while: wait for it, bounded
        time.sleep(2)
        still_open = opened
        deadline = time.monotonic() + 20
        while still_open and time.monotonic() < deadline:
            still_open = [tls for tls in still_open if not _closed_within(tls, 0.01)]
            if still_open:
                time.sleep(0.5)
        assert len(still_open) == 0
    finally:
        for tls in opened:
            tls.close()


# --------------------------------------------------------------------------- head bounds


@pytest.mark.parametrize(
    ("extra", "status", "slug"),
    [
        ([(f"X-Filler-{n}", "x") for n in range(10_000)], 431, "header-fields-too-large"),
        ([(f"X-Filler-{n}", "x") for n in range(101)], 431, "header-fields-too-large"),
        ([("X-Big", "y" * 17_000)], 431, "header-fields-too-large"),
    ],
    ids=["10000-headers", "101-headers", "17KB-header"],
)
def test_protocol_head_bounds_431(server, extra, status, slug):
    """More than 100 headers, or a head over 16 KiB, is a 431 problem."""
    head = request_head("GET", "/v1/models", key=server.key, content_type=None, extra=extra)
    body = _assert_problem(server.exchange(head), status)
    assert body["type"].endswith(slug)


def test_protocol_long_target_414(server):
    """A 64 KiB request target is a 414 problem."""
    head = request_head("GET", "/" + "a" * 65536, key=server.key, content_type=None)
    body = _assert_problem(server.exchange(head), 414)
    assert _logged(server, body["request_id"])["status"] == 414


def test_protocol_hundred_headers_are_fine(server):
    """Exactly 100 headers (the bound) are served."""
    extra = [(f"X-Filler-{n}", "x") for n in range(97)]  # + Host and Authorization
    head = request_head("GET", "/v1/models", key=server.key, content_type=None, extra=extra)
    assert server.exchange(head).status == 200


# --------------------------------------------------------------------------- doubled headers


@pytest.mark.parametrize(
    "doubled",
    [
        [("Authorization", "Bearer ss_000000000000_" + "a" * 43)],
        [("Content-Type", "text/plain")],
        [("Content-Length", str(len(VALID)))],
        [("Transfer-Encoding", "chunked")],
        [("Host", "elsewhere.example")],
    ],
    ids=["authorization", "content-type", "content-length", "transfer-encoding", "host"],
)
def test_protocol_doubled_headers_are_400(server, doubled):
    """A second Authorization, Content-Type, Content-Length, Transfer-Encoding or Host is 400."""
    head = request_head("POST", PREDICT, key=server.key, content_length=len(VALID), extra=doubled)
    reply = server.exchange(head + VALID)
    _assert_problem(reply, 400)


# --------------------------------------------------------------------------- parser errors


PARSER_CASES = {
    "bare-lf": b"GET /healthz HTTP/1.1\nHost: x\n\n",
    "bare-cr-in-header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "obs-fold": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n",
    "nul-in-header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "cl-and-te": (
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "obfuscated-te": (
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
    ),
    "negative-cl": (
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    ),
    "non-ascii-path": "GET /v1/models/\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "not-http": b"\x16\x03\x01 hello there\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(PARSER_CASES.values()), ids=list(PARSER_CASES))
def test_protocol_parser_errors_are_problems_with_request_id(server, raw):
    """What the HTTP parser refuses is a 400 problem with X-Request-ID, logged with that id."""
    with server.connect() as tls:
        tls.sendall(raw)
        reply = read_reply(tls)
        body = _assert_problem(reply, 400)
        assert reply.headers["connection"] == "close"
        assert _closed_within(tls, 5)
    line = _logged(server, body["request_id"])
    assert line["status"] == 400
    assert line["reason"]


def test_protocol_endless_header_line_is_431_and_does_not_stall_others(server):
    """One header line that never ends is refused past max_head_bytes; others are served.

    httptools hands a header over only once its line is complete and copies the part it
    has at every read, so the bound must count raw bytes, not finished headers.
    """
    with server.connect() as tls:
        tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
        early = b""
        for _ in range(64):  # up to 1 MiB in 16 KiB reads, unless answered first
            try:
                tls.sendall(b"a" * 16384)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
            early = _early_answer(tls)
            if early:
                break
        start = time.monotonic()
        good = server.predict(json.loads(VALID))
        assert good.status == 200
        assert time.monotonic() - start < 5
        body = _assert_problem(read_reply(tls, prefix=early), 431)
        assert body["type"].endswith(":header-fields-too-large")


def test_protocol_refused_connections_do_not_hold_server_slots(tmp_path):
    """Connections refused by the per-address cap stop counting at once.

    With max_connections 6 and 2 per address, one address opening 12 more connections
    must not fill the server: another address is still served.
    """
    project = copy_iris(tmp_path / "iris")
    env = {
        **NO_LIMITS,
        "SECURESERVE_SERVER__MAX_CONNECTIONS": "6",
        "SECURESERVE_SERVER__MAX_CONNECTIONS_PER_IP": "2",
    }
    with running_server(project, env=env) as small, contextlib.ExitStack() as stack:
        for _ in range(2):
            held = stack.enter_context(small.connect())
            held.sendall(request_head("POST", PREDICT, key=small.key, content_length=10))
        for _ in range(12):
            with contextlib.suppress(OSError):
                stack.enter_context(small.connect())
        time.sleep(0.5)
        with small.connect(source="127.0.0.2") as other:
            other.sendall(request_head("GET", "/healthz", content_type=None))
            assert read_reply(other).status == 200


def test_protocol_trusted_ipv6_proxy_is_exempt_from_the_address_cap():
    """A trusted IPv6 proxy's connections are not capped (its key is a /64, not itself)."""
    from secureserve.addresses import address_key
    from secureserve.logs import AccessLog
    from secureserve.protocol import Edge
    from secureserve.settings import ServerSettings

    server = ServerSettings(max_connections_per_ip=2, trusted_proxies=("2001:db8::1",))
    edge = Edge(server=server, access=AccessLog())
    proxy, other = "2001:db8::1", "2001:db8::2"
    assert all(edge.admit(address_key(proxy), proxy) for _ in range(10))
    other_edge = Edge(server=server, access=AccessLog())
    assert [other_edge.admit(address_key(other), other) for _ in range(3)] == [True, True, False]


# --------------------------------------------------------------------------- one write per response


RECORD_HEADER = 5  # a TLS record's type (1 byte), version (2) and length (2)
APPLICATION_DATA = (
    23  # the record type of application data (and, in TLS 1.3, of all after the handshake)
)


class _CountingClient:
    """A TLS client over memory BIOs that counts the TLS records each reply came in."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection((HOST, server.port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = server.client_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname=HOST
        )
        self.raw = b""  # received bytes not yet split into whole records
        self.records = 0  # application-data records received
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send()
                self._receive()
        self._send()

    def _send(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.incoming.write(data)
        self.raw += data
        while len(self.raw) >= RECORD_HEADER:
            end = RECORD_HEADER + int.from_bytes(self.raw[3:RECORD_HEADER], "big")
            if len(self.raw) < end:
                break
            self.records += self.raw[0] == APPLICATION_DATA
            self.raw = self.raw[end:]

    def exchange(self, request: bytes, *, head_only: bool = False) -> tuple[bytes, int]:
        """Send ``request``; its whole reply and the number of records it came in."""
        self.records = 0
        self.tls.write(request)
        self._send()
        reply = b""
        while not _whole(reply, head_only=head_only):
            self._receive()
            with contextlib.suppress(ssl.SSLWantReadError):
                while chunk := self.tls.read(65536):
                    reply += chunk
        return reply, self.records

    def close(self) -> None:
        self.sock.close()


def _whole(reply: bytes, *, head_only: bool) -> bool:
    head, found, body = reply.partition(b"\r\n\r\n")
    if not found:
        return False
    if head_only:
        return True
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    return len(body) >= length


def test_protocol_a_response_leaves_in_one_tls_record(server):
    """Head and body of a response are one write: one TLS record, one client wake-up.

    Also for a response without body bytes (HEAD), whose head must not stay held.
    """
    predict = request_head("POST", PREDICT, key=server.key, content_length=len(VALID)) + VALID
    client = _CountingClient(server)
    try:
        reply, _ = client.exchange(predict)  # the first reply may share the session tickets
        assert reply.startswith(b"HTTP/1.1 200")
        reply, records = client.exchange(predict)
        assert reply.startswith(b"HTTP/1.1 200")
        assert b'"predictions"' in reply
        assert records == 1
        reply, records = client.exchange(
            request_head("HEAD", "/healthz", content_type=None), head_only=True
        )
        assert reply.startswith(b"HTTP/1.1 200")
        assert b"x-request-id" in reply.lower()
        assert records == 1
        reply, records = client.exchange(predict)  # the connection goes on after it
        assert reply.startswith(b"HTTP/1.1 200")
        assert records == 1
    finally:
        client.close()


class _Transport:
    """What a response cycle writes, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _cycle(method: str = "POST", *, expect_100: bool = False, keep_alive: bool = True):
    """A uvicorn response cycle writing through secureserve's writer to a recording transport.

    Its ``on_response`` is what the protocol does: the writer's end of response, then a
    note that it ended.
    """
    import asyncio
    import logging

    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from secureserve.protocol import _ResponseWriter

    transport = _Transport()
    writer = _ResponseWriter(transport)  # type: ignore[arg-type]
    completed: list[bool] = []

    def on_response() -> None:
        writer.end_response()
        completed.append(True)

    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "headers": []},
        transport=writer,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=expect_100,
        keep_alive=keep_alive,
        on_response=on_response,
    )
    return cycle, transport, completed


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"{}"}


def test_protocol_writer_sends_head_and_body_as_one_write():
    import asyncio

    async def run() -> None:
        cycle, transport, completed = _cycle()
        await cycle.send(START)
        assert transport.writes == []  # held until its body
        await cycle.send(BODY)
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200")
        assert transport.writes[0].endswith(b"\r\n\r\n{}")
        assert completed == [True]
        # the connection's next response, through the same writer: held and sent alike
        cycle.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert len(transport.writes) == 1
        cycle.transport.write(b"[]")
        assert transport.writes[1] == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]"

    asyncio.run(run())


def test_protocol_writer_sends_100_continue_at_once_and_a_head_without_body():
    import asyncio

    async def run() -> None:
        cycle, transport, _ = _cycle(expect_100=True)
        cycle.more_body = False
        cycle.message_event.set()
        await cycle.receive()  # the app asks for the body: 100 Continue goes out now
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        head, transport2, completed = _cycle("HEAD")
        await head.send(START)
        await head.send({"type": "http.response.body", "body": b""})
        assert completed == [True]
        assert len(transport2.writes) == 1
        assert transport2.writes[0].startswith(b"HTTP/1.1 200")

    asyncio.run(run())


def test_protocol_writer_flushes_the_head_before_closing():
    import asyncio

    async def run() -> None:
        cycle, transport, _ = _cycle(keep_alive=False)
        await cycle.send(START)
        cycle.transport.close()  # as uvicorn does when the app fails after starting
        assert transport.closed
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200")

    asyncio.run(run())


def test_protocol_pipelined_requests_are_answered_whole_and_in_order(server):
    """Two requests in one TLS write: two whole answers, in order, each head with its body."""
    predict = request_head("POST", PREDICT, key=server.key, content_length=len(VALID)) + VALID
    health = request_head("GET", "/healthz", content_type=None)
    with server.connect() as tls:
        tls.sendall(predict + health + predict)
        first = read_reply(tls)
        second = read_reply(tls)
        third = read_reply(tls)
    assert (first.status, second.status, third.status) == (200, 200, 200)
    assert b"predictions" in first.body
    assert b"predictions" in third.body
    assert second.body == b'{"status":"ok"}'
    assert len({first.headers["x-request-id"], third.headers["x-request-id"]}) == 2


def test_protocol_100_continue_comes_before_the_answer(server):
    """``Expect: 100-continue`` gets its interim answer at once, before the body is sent."""
    head = request_head(
        "POST",
        PREDICT,
        key=server.key,
        content_length=len(VALID),
        extra=[("Expect", "100-continue")],
    )
    with server.connect() as tls:
        tls.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            data = tls.recv(65536)
            assert data, "closed before the interim answer"
            interim += data
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        tls.sendall(VALID)
        reply = read_reply(tls, prefix=interim.partition(b"\r\n\r\n")[2])
    assert reply.status == 200
    assert b"predictions" in reply.body


def test_protocol_puts_its_loop_in_the_scope():
    """The app reads the serving loop from the scope (asking asyncio costs a getpid on 3.11)."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from secureserve.deadlines import SCOPE_LOOP, running_loop
    from secureserve.logs import AccessLog
    from secureserve.protocol import Edge, SecureHttpProtocol
    from secureserve.settings import ServerSettings

    seen: list[object] = []

    async def app(scope, receive, send) -> None:
        seen.append(scope.get(SCOPE_LOOP))
        seen.append(running_loop(scope))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> None:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None)
        config.load()
        edge = Edge(server=ServerSettings(), access=AccessLog())
        protocol = type("Bound", (SecureHttpProtocol,), {"edge": edge})(
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
        transport = _Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(b"GET /x HTTP/1.1\r\nhost: example\r\n\r\n")
        for _ in range(100):
            if transport.writes:
                break
            await asyncio.sleep(0.01)
        assert transport.writes[0].startswith(b"HTTP/1.1 204")
        assert seen == [loop, loop]
        protocol.connection_lost(None)

    asyncio.run(run())


# ------------------------------------------------------- trailers, pipelining, stalled reads


def _replies(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The consecutive responses in ``data`` (each with a Content-Length): status, headers, body."""
    replies = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"a response cut short: {data[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }
        length = int(headers.get("content-length", "0"))
        replies.append((int(status_line.split(" ")[1]), headers, rest[:length]))
        data = rest[length:]
    return replies


def _chunked(body: bytes, trailer: list[tuple[str, str]]) -> bytes:
    fields = "".join(f"{name}: {value}\r\n" for name, value in trailer)
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n" + fields.encode() + b"\r\n"


def test_protocol_trailer_fields_never_become_request_headers(server):
    """A key, a request id or a second Authorization sent after a chunked body counts for nothing.

    uvicorn adds trailer fields to the header list the app reads: a credential in the
    trailer alone was accepted, a trailer X-Request-ID named the request.
    """
    head = request_head("POST", PREDICT, chunked=True, extra=[("Connection", "close")])
    with server.connect() as tls:
        tls.sendall(head + _chunked(VALID, [("Authorization", f"Bearer {server.key}")]))
        assert read_reply(tls).status == 401
    head = request_head("POST", PREDICT, key=server.key, chunked=True)
    trailer = [
        ("Authorization", "Bearer not-a-key"),
        ("X-Request-ID", "from-the-trailer-1"),
        ("Content-Type", "text/plain"),
    ]
    with server.connect() as tls:
        tls.sendall(head + _chunked(VALID, trailer))
        reply = read_reply(tls)
    assert reply.status == 200, reply.body[:300]
    assert b"predictions" in reply.body
    assert reply.headers["x-request-id"] != "from-the-trailer-1"


def test_protocol_pipelining_past_the_bound_is_refused_after_the_answers_before_it(server):
    """40 requests in one write: the first 17 are answered, the next gets a 429, then close.

    Every request parsed ahead holds its scope and headers: with no bound, one
    connection sending requests without reading grew the server by 2.4 KB per request.
    """
    from secureserve.protocol import MAX_PIPELINED

    health = request_head("GET", "/healthz", content_type=None)
    with server.connect() as tls:
        tls.sendall(health * 40)
        data, closed = _read_until_closed(tls, 10)
    replies = _replies(data)
    statuses = [status for status, _, _ in replies]
    assert closed
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {200}
    assert MAX_PIPELINED + 1 <= len(statuses) - 1 < 40
    _, headers, body = replies[-1]
    assert headers["content-type"] == PROBLEM
    assert headers["retry-after"] == "1"
    problem = json.loads(body)
    assert problem["request_id"] == headers["x-request-id"]
    assert _logged(server, problem["request_id"])["reason"] == "max_pipelined"


@pytest.mark.parametrize(
    "broken",
    [
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x01b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["broken-head", "upgrade", "broken-chunk"],
)
def test_protocol_broken_pipelined_request_is_answered_after_those_before_it(server, broken):
    """A good request, a broken one, a good one: 200, then the broken one's 400, then close.

    The broken request never runs, even when its head was whole and it was queued
    (an upgrade, a broken body): it gets the parser's 400 and nothing else.
    """
    good = request_head("POST", PREDICT, key=server.key, content_length=len(VALID)) + VALID
    with server.connect() as tls:
        tls.sendall(good + broken + good)
        data, closed = _read_until_closed(tls, 10)
    replies = _replies(data)
    assert closed
    assert [status for status, _, _ in replies] == [200, 400]
    _, headers, body = replies[1]
    assert headers["content-type"] == PROBLEM
    problem = json.loads(body)
    assert _logged(server, problem["request_id"])["status"] == 400


def _bound_protocol(settings):
    """A ``SecureHttpProtocol`` on the running loop, connected to a recording transport."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from secureserve.logs import AccessLog
    from secureserve.protocol import Edge, SecureHttpProtocol

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None)
    config.load()
    edge = Edge(server=settings, access=AccessLog())
    protocol = type("Bound", (SecureHttpProtocol,), {"edge": edge})(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def test_protocol_a_client_that_reads_nothing_is_dropped_after_idle_timeout():
    """Answers the client does not read are not held for ever: idle_timeout_s, then dropped.

    The transport pauses writing when its buffer is full (the client reads nothing);
    without a deadline, the request being answered stayed in flight, and held one of
    ``max_in_flight`` slots, for as long as the client kept the connection. A client that
    reads in time keeps it.
    """
    import asyncio

    from secureserve.settings import ServerSettings

    settings = ServerSettings(idle_timeout_s=0.2)

    async def run() -> None:
        stalled, stalled_transport = _bound_protocol(settings)
        reading, reading_transport = _bound_protocol(settings)
        stalled.pause_writing()
        reading.pause_writing()
        await asyncio.sleep(0.1)
        reading.resume_writing()
        await asyncio.sleep(0.5)
        assert stalled_transport.aborted
        assert not reading_transport.aborted
        for protocol in (stalled, reading):
            protocol.connection_lost(None)

    asyncio.run(run())


@pytest.mark.parametrize(
    "path",
    ["/v1/models%2Firis%3Apredict", "/v1/models/iris%3apredict", "/v1/models%2firis:predict"],
)
def test_protocol_encoded_slash_or_colon_in_the_path_is_400(server, path):
    """A '/' or ':' sent as %2F or %3A is refused (it predicted).

    A proxy matching the path as sent would see another route than the one served.
    """
    head = request_head("POST", path, key=server.key, content_length=len(VALID))
    reply = server.exchange(head + VALID)
    body = _assert_problem(reply, 400)
    assert "%2F" in body["detail"]
    assert _logged(server, body["request_id"])["reason"] == "encoded-separator"


@pytest.mark.parametrize("line", [b"GET /healthz HTTP/2.0", b"GET /healthz"])
def test_protocol_other_http_versions_are_505(server, line):
    """Only HTTP/1.0 and 1.1 request lines are served; HTTP/2.0 or none (0.9) is refused."""
    with server.connect() as tls:
        tls.sendall(line + b"\r\nHost: 127.0.0.1\r\n\r\n")
        data, closed = _read_until_closed(tls, 10)
    ((status, headers, body),) = _replies(data)
    assert (status, closed) == (505, True)
    assert headers["content-type"] == PROBLEM
    assert _logged(server, json.loads(body)["request_id"])["reason"] == "http-version"


def test_protocol_connection_close_in_a_trailer_ends_the_connection(server):
    """The parser reads nothing after a ``Connection: close`` trailer: the server closes too.

    The request after it would otherwise wait, unanswered, until keep_alive_s.
    """
    head = request_head("POST", PREDICT, key=server.key, chunked=True)
    health = request_head("GET", "/healthz", content_type=None)
    with server.connect() as tls:
        tls.sendall(head + _chunked(VALID, [("Connection", "close")]) + health)
        data, closed = _read_until_closed(tls, 10)
    replies = _replies(data)
    assert [status for status, _, _ in replies] == [200]
    assert replies[0][1]["connection"] == "close"
    assert closed
