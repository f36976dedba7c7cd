"""The HTTP/1.1 connection as ``secureserve run`` serves it: uvicorn's httptools protocol, bounded.

uvicorn bounds neither a slow request head nor a silent connection, nor the number and
size of request headers, and answers what its parser refuses with a plain-text 400.
:class:`SecureHttpProtocol` adds, per connection:

- an **idle deadline** (``[server] idle_timeout_s``): a connection that has sent nothing
  since its TLS handshake is closed;
- a **head deadline** (``header_timeout_s``): the request line and headers must be in
  within that many seconds of their first byte, else 408;
- **head bounds**: more than ``max_headers`` header lines, or more than
  ``max_head_bytes`` of request line and headers, is 431 (414 when the request target
  alone is over the bound), before the rest is even parsed;
- **trailers**: the trailer fields of a chunked request count against the head bounds
  and are then dropped, never added to the request's headers (uvicorn adds them to the
  list the app reads, so an ``Authorization``, ``Content-Type`` or ``X-Forwarded-For``
  sent after the body would count);
- **pipelining**: at most :data:`MAX_PIPELINED` requests parsed ahead of the one being
  answered; the next one is refused (429) once those before it are answered, so a client
  that sends requests without reading cannot make the server hold them all;
- a **write deadline**: a connection whose client leaves the transport's buffer full
  (it reads its answers too slowly, or not at all) for ``idle_timeout_s`` is dropped,
  freeing the request it holds;
- **connection caps**: at most ``max_connections`` in all and
  ``max_connections_per_ip`` from one client address (addresses in ``trusted_proxies``
  are exempt: behind a proxy every client shares its address); one more is dropped at
  once, as a full backlog would;
- the **ASGI TLS extension** (the verified client certificate's subject, for mTLS);
- **one write per small response**: uvicorn writes a response's head as soon as the app
  starts it, and its body apart; each write is its own TLS record and system call, and
  wakes the client once more. :class:`_ResponseWriter` holds the head until the body's
  first bytes (or the response's end, or a close) and sends both as one.

Every response it sends itself (parser errors, 408, 414, 429, 431, 505) is
``application/problem+json`` with a fresh request id, the security headers and
``Connection: close``, and leaves a line in the access log and an entry in the audit
log's count of unauthenticated refusals, like any response of the app. The TLS handshake
deadline (``handshake_timeout_s``) belongs to the listening socket: see
:mod:`secureserve.server`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from secureserve.addresses import address_key, is_trusted_proxy
from secureserve.deadlines import SCOPE_LOOP
from secureserve.errors import RequestRejected
from secureserve.logs import AccessRecord
from secureserve.problems import problem_bytes
from secureserve.settings import ServerSettings
from secureserve.tls import peer_certificate_subject

if TYPE_CHECKING:
    from secureserve.audit import AuditLog
    from secureserve.logs import AccessLog
    from secureserve.metrics import Metrics

__all__ = ["Edge", "SecureHttpProtocol"]

_MAX_LOGGED_PATH: Final = 200
#: Requests parsed and waiting behind the one being answered, per connection. Each holds
#: its scope, headers and body read so far; HTTP clients that pipeline at all keep a few.
MAX_PIPELINED: Final = 16
_VERSIONS: Final = frozenset({"1.0", "1.1"})
_INTERIM: Final = b"HTTP/1.1 1"  # the status line of a 1xx response, as uvicorn writes it


@dataclass(kw_only=True)
class Edge:
    """What every connection of one server shares: its bounds, counts and where to report.

    ``server`` holds the bounds (``[server]``). ``per_ip`` holds one entry per client
    address with an open connection, so it is bounded by ``max_connections``.
    """

    server: ServerSettings
    access: AccessLog
    audit: AuditLog | None = None
    metrics: Metrics | None = None
    per_ip: dict[str, int] = field(default_factory=dict)

    def admit(self, ip: str, peer: str) -> bool:
        """Count a new connection from ``ip`` (an address key); False if one too many.

        ``peer`` is the socket's own address, which the exemption of trusted proxies is
        judged by (an IPv6 key is a /64, not an address).
        """
        count = self.per_ip.get(ip, 0)
        server = self.server
        if count >= server.max_connections_per_ip and not is_trusted_proxy(
            peer, server.trusted_proxies
        ):
            return False
        self.per_ip[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        """A connection admitted from ``ip`` closed."""
        count = self.per_ip.get(ip, 0)
        if count <= 1:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = count - 1


class _ResponseWriter:
    """The transport as a connection's responses write to it: each head leaves with its body.

    uvicorn writes a response's head when the app starts it and the body apart. Here the
    head is held until the next write (the body's first bytes) and leaves with it: one
    TLS record, one system call. It is also let go when the response ends without body
    bytes (``HEAD``: :meth:`end_response`) and before the connection is closed. An
    interim ``1xx`` (``100 Continue``, written before the response starts) goes out at
    once.

    One writer serves every response of a connection, one after another (uvicorn runs a
    pipelined request only once the one before it has answered), and refers to nothing
    but the transport: no cycle of references is left for the garbage collector.
    """

    __slots__ = ("_head", "_head_written", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._head_written = False  # this response's head was written (held or sent)

    def write(self, data: bytes) -> None:
        """The head is held; anything after it goes out with it."""
        if not self._head_written and not data.startswith(_INTERIM):
            self._head_written = True
            self._head = data
            return
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self._transport.write(data)

    def end_response(self) -> None:
        """The response ended: nothing may stay held; the next write starts another."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)
        self._head_written = False

    def close(self) -> None:
        """What was written goes out first (a TLS close still sends what is queued)."""
        self.end_response()
        self._transport.close()

    def is_closing(self) -> bool:
        """As the connection's transport."""
        return self._transport.is_closing()


class _HeadRefused(Exception):  # noqa: N818 - a signal out of the parser's callbacks
    """Raised inside a parser callback to stop parsing; the protocol answers for it."""


def _head_too_large(detail: str, reason: str) -> RequestRejected:
    return RequestRejected(
        431,
        "header-fields-too-large",
        "Request header fields too large",
        detail=detail,
        log_reason=reason,
    )


def _head_over_bytes(limit: int) -> RequestRejected:
    return _head_too_large(f"the request head may be at most {limit} bytes", "max_head_bytes")


def _version_not_supported() -> RequestRejected:
    return RequestRejected(
        505,
        "http-version-not-supported",
        "HTTP version not supported",
        detail="send HTTP/1.1 requests",
        log_reason="http-version",
    )


def _pipeline_too_deep() -> RequestRejected:
    return RequestRejected(
        429,
        "rate-limited",
        "Too many requests",
        detail=f"at most {MAX_PIPELINED} requests may wait for their answers on one "
        "connection; send more once earlier ones are answered",
        headers={"Retry-After": "1"},
        log_reason="max_pipelined",
    )


class SecureHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module docstring.

    ``serve`` sets ``edge`` on a subclass; every connection of that server shares it.
    """

    edge: ClassVar[Edge]
    _tls_extension: dict[object, object]
    _peer: str | None
    _idle: asyncio.TimerHandle | None
    _head: asyncio.TimerHandle | None
    _head_started: float
    _head_count: int
    _head_bytes: int
    _head_raw: int
    _refusal: RequestRejected | None
    _deferred: RequestRejected | None
    _in_trailers: bool
    _stalled: asyncio.TimerHandle | None
    _writer: _ResponseWriter

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse connections over the caps; record the TLS facts; start the idle deadline."""
        super().connection_made(transport)
        self._writer = _ResponseWriter(transport)
        self._tls_extension = {}
        self._peer = None
        self._idle = self._head = self._stalled = None
        self._head_count = self._head_bytes = self._head_raw = 0
        self._head_started = 0.0
        self._refusal = self._deferred = None
        self._in_trailers = False
        edge = self.edge
        address = str(self.client[0]) if self.client else "unknown"
        peer = address_key(address)
        if len(self.connections) > edge.server.max_connections or not edge.admit(peer, address):
            # Over a cap: refused as a full backlog would, at once. abort(), not close(): a
            # TLS close waits for the client's reply, and this connection must stop
            # counting against max_connections now, not when the client answers.
            self.connections.discard(self)
            transport.abort()
            return
        self._peer = peer
        ssl_object = transport.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert() if ssl_object is not None else None
        self._tls_extension = {
            "client_cert_name": peer_certificate_subject(certificate),
            "tls_version": ssl_object.version() if ssl_object else None,
        }
        self._idle = self.loop.call_later(edge.server.idle_timeout_s, self._idle_over)

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the address's slot and every timer."""
        self._cancel_timers()
        if self._peer is not None:
            self.edge.release(self._peer)
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; anything it refuses is answered with a problem, then closed.

        Bytes that arrive while no request is being answered start a request head: its
        deadline runs from the first of them.
        """
        if self._deferred is not None:  # refused: the answers before it are on their way
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._unset_keepalive_if_required()
        continued = bool(self._head_started)  # a head left incomplete by an earlier read
        if not continued and (self.cycle is None or self.cycle.response_complete):
            self._head_started = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(
                RequestRejected(
                    400,
                    "bad-request",
                    "Bad request",
                    detail="protocol upgrades are not supported",
                    log_reason="upgrade",
                )
            )
            return
        except (httptools.HttpParserError, _HeadRefused) as exc:
            refusal = self._refusal or RequestRejected(
                400, "bad-request", "Bad request", log_reason=f"http-parser:{type(exc).__name__}"
            )
            self._refuse(refusal)
            return
        if not self._head_started:
            self._head_raw = 0
            return
        # A head still incomplete. httptools hands a header line over only once it is
        # complete, and copies the part it has at every read: count what this head took
        # so far, so that one endless header line cannot get past max_head_bytes.
        self._head_raw = self._head_raw + len(data) if continued else len(data)
        limits = self.edge.server
        if continued and self._head_raw > limits.max_head_bytes:
            self._refuse(_head_over_bytes(limits.max_head_bytes))
            return
        if self._head is None:
            deadline = self._head_started + limits.header_timeout_s
            self._head = self.loop.call_at(deadline, self._head_over)

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 - uvicorn's text is not sent
        """Uvicorn's plain-text 400, as a problem like every other answer."""
        self._refuse(RequestRejected(400, "bad-request", "Bad request", log_reason="http-parser"))

    # ---- parser callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request head starts (pipelined ones too): its deadline runs."""
        super().on_message_begin()
        self.scope["extensions"] = {"tls": self._tls_extension}
        self.scope[SCOPE_LOOP] = self.loop  # type: ignore[typeddict-unknown-key]
        self._head_count = self._head_bytes = 0
        self._in_trailers = False
        if not self._head_started:
            self._head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        """Count the request target against the head bound (414 when it alone is over)."""
        self._head_bytes += len(url)
        if self._head_bytes > self.edge.server.max_head_bytes:
            self._stop(
                RequestRejected(
                    414, "uri-too-long", "Request target too long", log_reason="max_head_bytes"
                )
            )
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header lines and bytes (431 over either bound); trailer fields are dropped."""
        limits = self.edge.server
        self._head_count += 1
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_count > limits.max_headers:
            self._stop(_head_too_large(f"send at most {limits.max_headers} headers", "max_headers"))
        if self._head_bytes > limits.max_head_bytes:
            self._stop(_head_over_bytes(limits.max_head_bytes))
        if not self._in_trailers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: its deadline ends; the response writes through a ``_ResponseWriter``.

        A request line of another HTTP version than 1.0 or 1.1 is refused (505), and a
        request that would wait behind :data:`MAX_PIPELINED` others (429).
        """
        self._head_started = 0.0
        self._in_trailers = True  # any header line after this one is a trailer field
        if self._head is not None:
            self._head.cancel()
            self._head = None
        refusal = self._refusal_of_head()
        if refusal is not None:
            self.scope["method"] = self.parser.get_method().decode("ascii")  # for its log line
            self._stop(refusal)
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # not an upgrade
            cycle.transport = self._writer  # type: ignore[assignment]

    def _refusal_of_head(self) -> RequestRejected | None:
        """505 for an HTTP version but 1.0 and 1.1; 429 past :data:`MAX_PIPELINED` waiting."""
        if self.parser.get_http_version() not in _VERSIONS:  # 0.9 (no version), 2.0, ...
            return _version_not_supported()
        waiting = self.cycle
        if waiting is not None and not waiting.response_complete:
            return _pipeline_too_deep() if len(self.pipeline) >= MAX_PIPELINED else None
        return None

    def on_response_complete(self) -> None:
        """A response ended: a head it left held goes out (``HEAD``), then uvicorn's own.

        Once the last request before a deferred refusal is answered, the refusal is.
        """
        self._writer.end_response()
        queued = len(self.pipeline)  # uvicorn starts the next one, if any
        super().on_response_complete()
        refusal = self._deferred
        if refusal is None:
            return
        if queued:
            self.flow.pause_reading()  # uvicorn resumed it: nothing more is read
        else:
            self._deferred = None
            if not self.transport.is_closing():
                self._answer(refusal)

    def on_message_complete(self) -> None:
        """A request's body is in; a ``Connection: close`` trailer still ends the connection.

        The trailer field itself is dropped, but llhttp reads it and then skips every
        byte that follows: the requests after it would never be answered.
        """
        super().on_message_complete()
        if not self.parser.should_keep_alive():
            self.cycle.keep_alive = False

    def pause_writing(self) -> None:
        """The transport's buffer is full: the client has ``idle_timeout_s`` to read from it."""
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.edge.server.idle_timeout_s, self._stall_over)

    def resume_writing(self) -> None:
        """The client read enough: the write deadline ends."""
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    # ---- refusals ---------------------------------------------------------------------

    def _stop(self, refusal: RequestRejected) -> None:
        self._refusal = refusal
        raise _HeadRefused

    def _idle_over(self) -> None:
        """Nothing was sent since the TLS handshake: close, there is nothing to answer."""
        self._idle = None
        if not self.transport.is_closing():
            self.transport.close()

    def _stall_over(self) -> None:
        """The buffer stayed full for ``idle_timeout_s``: drop the client (a TLS close waits)."""
        self._stalled = None
        self.transport.abort()  # connection_lost ends the request in progress

    def _head_over(self) -> None:
        self._head = None
        self._refuse(
            RequestRejected(
                408,
                "header-timeout",
                "Request head not received in time",
                log_reason="header_timeout",
            )
        )

    def _refuse(self, refusal: RequestRejected) -> None:
        """Answer ``refusal`` as problem+json and close; log and count it like the app does.

        When the app is answering a request of this connection, a second answer would
        interleave with its own. A broken pipelined request (one parsed after a request
        still waiting for its answer: its head, its body, an upgrade) never runs and is
        answered once every request before it is, then the connection closes; nothing
        after it is read. A broken body ends its own request: the app sees the client
        disconnect, and this answer goes out instead if the app had not started its own
        (if it had, the connection closes after it).
        """
        self._cancel_read_timers()  # an answer still on its way keeps its write deadline
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            pipeline = self.pipeline
            queued = bool(pipeline) and pipeline[0][0] is cycle and self.scope is cycle.scope
            if queued:  # its head was in and it waited; its body or an upgrade broke: never run
                pipeline.popleft()
            if queued or pipeline or self.scope is not cycle.scope:
                self._deferred = refusal  # answered once the requests before it are
                self.flow.pause_reading()
                return
            if cycle.response_started:
                cycle.keep_alive = False
                self.flow.pause_reading()
                self._writer.close()  # what the answer in progress wrote goes first
                return
            cycle.disconnected = True  # the app stops waiting for this body
            cycle.message_event.set()
        self._answer(refusal)

    def _answer(self, refusal: RequestRejected) -> None:
        request_id = os.urandom(12).hex()
        self.transport.write(problem_bytes(STATUS_LINE[refusal.status], refusal, request_id))
        self.transport.close()
        self._report(refusal, request_id)

    def _report(self, refusal: RequestRejected, request_id: str) -> None:
        edge = self.edge
        scope = self.scope
        method = scope.get("method", "-") if scope is not None else "-"
        path = getattr(self, "url", b"")[:_MAX_LOGGED_PATH].decode("latin-1")
        seconds = self.loop.time() - self._head_started if self._head_started else 0.0
        edge.access(
            AccessRecord(
                request_id=request_id,
                method=method,
                path=path,
                status=refusal.status,
                latency_ms=round(seconds * 1000, 3),
                key_id=None,
                model_version=None,
                reason=refusal.log_reason,
            )
        )
        if edge.metrics is not None:
            edge.metrics.observe(
                path=path, status=refusal.status, seconds=seconds, reason=refusal.log_reason
            )
        if edge.audit is not None:
            edge.audit.refused(
                client=self._peer or "unknown",
                route="connection",
                status=refusal.status,
                reason=refusal.log_reason,
                request_id=request_id,
            )

    def _cancel_read_timers(self) -> None:
        for timer in (self._idle, self._head):
            if timer is not None:
                timer.cancel()
        self._idle = self._head = None

    def _cancel_timers(self) -> None:
        self._cancel_read_timers()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
