"""Running an app under uvicorn, over TLS only.

``serve`` builds the ``SSLContext`` itself (``secureserve.tls``) and hands it to
uvicorn through ``ssl_context_factory``; there is no code path that listens
without it. The listening socket is bound here first, so "port in use" is a
clear start-up error rather than a log line from deep inside uvicorn.

Bounds: the TLS handshake (``[server] handshake_timeout_s``, set on the listening
socket through the event loop), and per connection what
:class:`~secureserve.protocol.SecureHttpProtocol` enforces (connection caps, idle and
head deadlines, header count and size); idle keep-alive is uvicorn's
``timeout_keep_alive``; requests in flight are bounded by the app (503 +
``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import signal
import socket
import ssl
import threading
from collections.abc import Generator
from types import FrameType
from typing import Any, Final

import uvicorn
import uvloop
from starlette.applications import Starlette

from secureserve.config import Settings
from secureserve.errors import ConfigError
from secureserve.logs import access_log
from secureserve.protocol import Edge, SecureHttpProtocol

__all__ = ["bind_socket", "serve"]

#: Net allocations of tracked objects between two young collections (CPython 3.11-3.13: 700).
_YOUNG_COLLECTION_EVERY: Final = 10_000


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, turning the usual failures into ``ConfigError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use; stop the other process "
                "or choose another port with --port or [server] port."
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"not allowed to listen on {host}:{port}; ports below 1024 need "
                "privileges: use a higher port such as 8443."
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); check [server] host and port."
        ) from None


class _Server(uvicorn.Server):
    """uvicorn's server plus readiness on shutdown and SIGHUP reloads.

    A shutdown signal turns readiness off at once. A SIGTERM shutdown that drained
    gracefully exits 0: uvicorn would otherwise re-raise the signal once it is done,
    and the process would die of it. SIGHUP reloads the model exactly like
    ``POST /v1/models/{name}:reload`` (verified load beside the running version, then
    an atomic swap; on failure the running version keeps serving).
    """

    def __init__(self, config: uvicorn.Config, app: Starlette, handshake_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._handshake_timeout_s = handshake_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Task[None]] = set()

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve on an event loop whose TLS servers bound the handshake."""
        timeout = self._handshake_timeout_s

        def new_loop() -> asyncio.AbstractEventLoop:
            return _Loop(timeout)

        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(self.serve(sockets=sockets))

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Remember the loop (SIGHUP schedules work on it), then serve."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """The SIGINT and SIGTERM handling of uvicorn, plus SIGHUP for reloads."""
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.signal(signal.SIGHUP, self._on_sighup)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    def _on_sighup(self, sig: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_reload)

    def _start_reload(self) -> None:
        task = asyncio.ensure_future(_reload_on_signal(self._app))
        self._reloads.add(task)  # keep a reference until it is done
        task.add_done_callback(self._reloads.discard)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._app.state.models.accepting = False
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)


class _Loop(uvloop.Loop):
    """uvloop, with TLS handshake and shutdown deadlines on every server it creates.

    uvicorn creates the listening server without one (asyncio's default is 60 s), and
    a handshake in progress is invisible to the HTTP protocol, which only starts once
    it is done.
    """

    def __init__(self, handshake_timeout_s: float) -> None:
        super().__init__()
        self._handshake_timeout_s = handshake_timeout_s

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self._handshake_timeout_s)
            # A TLS close waits for the client's close_notify: 30 s by default, during
            # which the connection still counts against max_connections and its address.
            kwargs.setdefault("ssl_shutdown_timeout", self._handshake_timeout_s)
        return await super().create_server(*args, **kwargs)


async def _reload_on_signal(app: Starlette) -> None:
    await app.state.models.reload_all(trigger="SIGHUP")


def serve(app: Starlette, settings: Settings, context: ssl.SSLContext, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` with ``context`` until SIGINT or SIGTERM.

    On a signal, readiness turns false, the socket stops accepting, and requests
    already accepted finish (for at most the predict and body timeouts).
    """
    server = settings.server
    models = app.state.models
    edge = Edge(server=server, access=access_log(), audit=models.audit, metrics=models.metrics)
    protocol = type("BoundedHttpProtocol", (SecureHttpProtocol,), {"edge": edge})
    config = uvicorn.Config(
        app,
        http=protocol,
        loop="none",  # _Server.run brings its own (uvloop with a TLS handshake deadline)
        ws="none",
        lifespan="on",
        ssl_context_factory=lambda _config, _default: context,
        server_header=False,
        proxy_headers=False,
        access_log=False,
        log_config=None,
        timeout_keep_alive=server.keep_alive_s,
        timeout_graceful_shutdown=int(server.predict_timeout_s + server.body_timeout_s) + 1,
    )
    # Everything alive now (interpreter, libraries, the loaded model) lives as long as the
    # process: move it out of the collector's reach, so that full collections triggered by
    # per-request garbage stay short. Measured: p99 at 32 connections 17 ms -> 4-6 ms.
    gc.collect()
    gc.freeze()
    # A young collection every 700 net allocations scans the objects of every request in
    # flight, again and again: 1 in 40 requests paid one at 32 connections, 2 µs a request
    # in all. Every 10,000 allocations, they are mostly gone by then (docs/performance.md).
    gc.set_threshold(_YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
    _Server(config, app, server.handshake_timeout_s).run(sockets=[sock])
