"""Outermost middleware: request id, security headers, last-resort errors, access log.

Every HTTP response leaves through here, so this is where the guarantees that
hold for *all* responses live: an ``X-Request-ID`` (an incoming one is kept only
if it matches a strict pattern), ``Strict-Transport-Security``, ``nosniff``,
``no-store`` and no ``Server`` header; any exception becomes a problem response
without details; and one access line is logged per request.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from secureserve.addresses import client_ip
from secureserve.audit import AuditLog, AuditUnavailable, RequestEntry, decision
from secureserve.deadlines import Deadlines, on_loop, running_loop
from secureserve.errors import ModelError, RequestRejected
from secureserve.logs import AccessLog, AccessRecord
from secureserve.metrics import Metrics, route_of
from secureserve.middleware.probes import PROBE_PATHS, app_path
from secureserve.problems import SECURITY_HEADERS, as_rejection, problem_response

__all__ = ["RequestContext", "RequestInfo"]

_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._-]{8,64}")
_ENCODED_SEPARATOR: Final = re.compile(rb"%(?:2[fF]|3[aA])")  # '/' and ':' in disguise
_DROPPED: Final = frozenset({b"server", b"x-powered-by"})
_SINGLE: Final = {
    b"authorization": "Authorization",
    b"content-encoding": "Content-Encoding",
    b"content-length": "Content-Length",
    b"content-type": "Content-Type",
    b"host": "Host",
    b"inference-header-content-length": "Inference-Header-Content-Length",
    b"transfer-encoding": "Transfer-Encoding",
}
_MAX_LOGGED_PATH: Final = 200
_CSP: Final[bytes] = b"content-security-policy"
#: Starlette's (handlers by exception type, handlers by status): none, and read-only
_NO_EXCEPTION_HANDLERS: Final[tuple[Mapping[Any, Any], Mapping[Any, Any]]] = (
    MappingProxyType({}),
    MappingProxyType({}),
)
_WITHOUT_CSP: Final = tuple(h for h in SECURITY_HEADERS if h[0] != _CSP)


class RequestInfo:
    """Per-request facts the inner layers fill in, for the response and the log."""

    __slots__ = (
        "audited",
        "body_read",
        "deadlines",
        "log_reason",
        "loop",
        "model_version",
        "principal_id",
        "request_id",
        "roles",
        "start",
    )

    def __init__(self, request_id: str, start: float, deadlines: Deadlines[Any]) -> None:
        self.request_id = request_id
        self.start = start
        # asked once per request: CPython 3.11's asyncio.get_running_loop() and
        # current_task() make a getpid() system call each (a fork check)
        self.loop = deadlines.loop
        self.deadlines = deadlines  # the request's body deadline (secureserve.body)
        self.principal_id: str | None = None
        self.roles: frozenset[str] = frozenset()
        self.model_version: str | None = None
        self.log_reason: str | None = None
        self.audited = False  # the route wrote its own audit record (predictions)
        self.body_read = False  # the whole request body was received (secureserve.body)


class RequestContext:
    """Wraps the app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: Any,
        access: AccessLog,
        metrics: Metrics,
        audit: AuditLog,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.log = logger
        self.access = access
        self.metrics = metrics
        self.audit = audit
        self.trusted_proxies = tuple(trusted_proxies)  # whose X-Forwarded-For names the client
        self._deadlines: Deadlines[Any] | None = None  # of the loop serving the app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        # No exception handler below this boundary: Starlette's function endpoints look
        # theirs up in the scope, where a service that mounts this app has left its own.
        scope["starlette.exception_handlers"] = _NO_EXCEPTION_HANDLERS
        start = time.perf_counter()
        request_id, doubled = _scan(scope["headers"])
        self._deadlines = on_loop(self._deadlines, running_loop(scope))
        info = RequestInfo(request_id, start, self._deadlines)
        scope["secureserve"] = info
        rid = info.request_id.encode()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _response_headers(message, info, rid, scope)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            refused = _refused_at_once(scope, doubled)
            if refused is not None:
                raise refused  # noqa: TRY301 - handled below like every refusal
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # the last resort for every failure
            rejection = as_rejection(exc)
            info.log_reason = rejection.log_reason or info.log_reason
            if not isinstance(exc, RequestRejected | HTTPException):
                self.log.exception(
                    "request failed",
                    request_id=info.request_id,
                    error=type(exc).__name__,
                    model_error=isinstance(exc, ModelError),
                )
            if status:  # the response had started: all we can do is end the connection
                raise
            _drop_tracebacks(exc)  # logged: kept, they would hold frames in cycles
            await problem_response(rejection, info.request_id)(scope, receive, send_with_headers)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            final = status or 500
            self.access(
                AccessRecord(
                    request_id=info.request_id,
                    method=scope["method"],
                    path=scope["path"][:_MAX_LOGGED_PATH],
                    status=final,
                    latency_ms=round(seconds * 1000, 3),
                    key_id=info.principal_id,
                    model_version=info.model_version,
                    reason=info.log_reason,
                ),
                info.loop,
            )
            path = app_path(scope)  # metrics and audit name routes inside the app (mounted too)
            self.metrics.observe(path=path, status=final, seconds=seconds, reason=info.log_reason)
            if not info.audited and path not in PROBE_PATHS:
                self._audit(scope, info, final, seconds, route_of(path))

    def _audit(
        self, scope: Scope, info: RequestInfo, status: int, seconds: float, route: str
    ) -> None:
        """Record a request the route did not record itself (refusals, metadata).

        A refusal of a caller that did not authenticate is only counted (per client
        address, route, status and reason; written per window): anyone can send those.
        """
        if info.principal_id is None and status >= 400:  # noqa: PLR2004 - HTTP error statuses
            self.audit.refused(
                client=client_ip(scope, self.trusted_proxies),
                route=route,
                status=status,
                reason=info.log_reason,
                request_id=info.request_id,
            )
            return
        try:
            self.audit.request(
                RequestEntry(
                    principal=info.principal_id,
                    roles=sorted(info.roles),
                    request_id=info.request_id,
                    route=route,
                    model=None,
                    model_version=info.model_version,
                    decision=decision(status),
                    status=status,
                    latency_ms=seconds * 1000,
                )
            )
        except AuditUnavailable:  # the response is gone already; the log keeps the trace
            self.log.exception("request not audited", request_id=info.request_id)


def _drop_tracebacks(exc: BaseException) -> None:
    """Let go of the tracebacks of ``exc`` and of the exceptions it chains.

    A traceback holds its frames, and a frame that holds the exception (this one's
    ``rejection``, the inference thread's error whose cause is the model's exception)
    closes a cycle: the frames, their locals (request bodies, instances) and the
    exceptions would wait for the cyclic garbage collector. Without them, all is freed
    as the response is sent.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is not None and id(current) not in seen:
            seen.add(id(current))
            current.__traceback__ = None
            pending += (current.__cause__, current.__context__)


def _scan(headers: list[tuple[bytes, bytes]]) -> tuple[str, str | None]:
    """The request id (a valid incoming one, else a new one) and a header sent twice.

    Two ``Authorization``, ``Content-Length``, ``Content-Type``, ``Host`` or
    ``Transfer-Encoding`` headers are refused: servers and proxies disagree about which
    one counts, which is how requests are smuggled past a check.
    """
    request_id = None
    seen: set[bytes] = set()
    doubled = None
    for name, value in headers:
        if name in _SINGLE:
            if name in seen:
                doubled = _SINGLE[name]
            seen.add(name)
        elif name == b"x-request-id" and request_id is None:
            request_id = value.decode() if _REQUEST_ID.fullmatch(value) else ""
    return request_id or os.urandom(12).hex(), doubled


def _response_headers(
    message: Message, info: RequestInfo, rid: bytes, scope: Scope
) -> list[tuple[bytes, bytes]]:
    """The app's headers less ``Server``, plus the security headers, ids and versions."""
    headers = [h for h in message.get("headers", ()) if h[0] not in _DROPPED]
    # A response with a policy of its own (the --dev API page) keeps it: two policies
    # would both apply, and the API's default-src 'none' would block the page.
    own_csp = any(name == _CSP for name, _ in headers)
    headers.extend(_WITHOUT_CSP if own_csp else SECURITY_HEADERS)
    headers.append((b"x-request-id", rid))
    if info.model_version is not None:
        headers.append((b"x-model-version", info.model_version.encode()))
    if not info.body_read and _declares_body(scope["headers"]):
        # Answered before its body arrived: the rest of it would keep the connection
        # busy for as long as the client likes (uvicorn drains it). End it instead.
        headers.append((b"connection", b"close"))
    return headers


def _doubled(name: str) -> RequestRejected:
    return RequestRejected(
        400,
        "bad-request",
        "Bad request",
        detail=f"send one {name} header",
        close=True,
        log_reason=f"duplicate-header:{name}",
    )


def _refused_at_once(scope: Scope, doubled: str | None) -> RequestRejected | None:
    """A header sent twice, or a path hiding a ``/`` or ``:``: refused before the app runs."""
    if doubled:
        return _doubled(doubled)
    raw_path = scope.get("raw_path") or b""
    if b"%" in raw_path and _ENCODED_SEPARATOR.search(raw_path):
        return _encoded_separator()
    return None


def _encoded_separator() -> RequestRejected:
    """A path that hides a ``/`` or ``:`` as ``%2F`` or ``%3A``: refused, never routed.

    The route is matched on the decoded path, so ``/v1/models%2Firis%3Apredict`` would
    predict, while a proxy in front, matching the path as sent, sees another route
    (RFC 3986 does not make a percent-encoded reserved character equal to itself).
    """
    return RequestRejected(
        400,
        "bad-request",
        "Bad request",
        detail="the path may not percent-encode '/' or ':' (%2F, %3A); send them as they are",
        close=True,
        log_reason="encoded-separator",
    )


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request announced a body (a non-zero Content-Length, or chunks)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0")):
            return True
    return False
