"""Structured JSON logs on stdout, configured explicitly (never on import).

``configure_logging`` is called by the CLI and by ``create_app`` when the host
application has not configured structlog itself. A redaction processor runs
last before rendering, so a credential can never reach the output even when a
caller logs a header dict by mistake.

The per-request access line is the one exception to "everything through
structlog": its shape is fixed and only the path comes from the client, so
:class:`AccessLog` encodes it directly (redacting the path) after measuring the
generic processor chain as the largest per-request cost of the server.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

import msgspec
import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = [
    "REDACTED",
    "AccessLog",
    "AccessRecord",
    "access_log",
    "configure_logging",
    "get_logger",
    "redact",
]

REDACTED: Final = "[REDACTED]"
_SECRET_KEYS: Final = re.compile(
    r"(?i)^(authorization|proxy-authorization|cookie|set-cookie|api_?key|x-api-key|key|secret|"
    r"password|passwd|token|access_token|refresh_token|id_token|bearer|credentials?)$"
    r"|(_secret|_password|_token|_api_key|private_key)$"
)
# A bearer credential or one of our keys inside free text (exception messages, URLs).
_SECRET_TEXT: Final = re.compile(r"(?i)(bearer\s+)[^\s,;\"']+|ss_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_encoder: Final = msgspec.json.Encoder()


def redact(value: Any, key: str = "") -> Any:
    """Return ``value`` with secrets replaced, looking at keys and inside strings."""
    if key and _SECRET_KEYS.search(key):
        return REDACTED
    if isinstance(value, str):
        return _SECRET_TEXT.sub(_mask, value) if ("ss_" in value or "earer" in value) else value
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _mask(match: re.Match[str]) -> str:
    return f"{match.group(1)}{REDACTED}" if match.group(1) else REDACTED


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str | Mapping | list | tuple) or _SECRET_KEYS.search(key):
            event[key] = redact(value, key)
    return event


def _serialize(event: Any, **_: Any) -> bytes:
    return _encoder.encode(event)


def _shared_processors() -> list[Any]:
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks as data, without local variables (they may hold secrets or inputs).
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        _redact_processor,
    ]


def _serialize_text(event: Any, **_: Any) -> str:
    return _encoder.encode(event).decode()


def configure_logging(level: str = "info", *, stream: Any = None) -> None:
    """Send JSON lines at ``level`` and above to ``stream`` (default: stdout).

    The standard library's loggers (uvicorn's among them) are routed through the
    same processors, so every line on stdout is JSON and passes redaction.
    """
    out = stream or sys.stdout.buffer
    processors = [*_shared_processors(), structlog.processors.JSONRenderer(serializer=_serialize)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = _BytesHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(serializer=_serialize_text),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    fast = _FastAccessLog(out) if _LEVELS[level] <= logging.INFO else _NoAccessLog()
    _configured.update(processors=processors, access=fast)


class AccessRecord(msgspec.Struct, frozen=True):
    """The facts of one finished request, as the access line reports them."""

    request_id: str
    method: str
    path: str
    status: int
    latency_ms: float
    key_id: str | None
    model_version: str | None
    reason: str | None


class AccessLog:
    """Writes the access line of a request through structlog (the host's configuration)."""

    def __call__(self, record: AccessRecord) -> None:
        """Record one finished request."""
        get_logger().info("request", **msgspec.structs.asdict(record))


class _FastAccessLog(AccessLog):
    """The access line encoded in one step, for the stream ``configure_logging`` set up.

    Only ``path`` and ``request_id`` come from the client; both are redacted.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._second = -1
        self._prefix = ""
        self._pending: list[bytes] = []

    def __call__(self, record: AccessRecord) -> None:
        """Record one finished request."""
        if "ss_" in record.path or "earer" in record.path or "ss_" in record.request_id:
            record = msgspec.structs.replace(
                record, path=redact(record.path), request_id=redact(record.request_id)
            )
        head = b'{"logger":"secureserve","event":"request","level":"info","timestamp":"'
        line = head + self._timestamp() + b'",' + _encoder.encode(record)[1:] + b"\n"
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving: write at once
            self._stream.write(line)
            return
        if not self._pending:  # one write per event-loop iteration, not one per request
            loop.call_soon(self._flush)
        self._pending.append(line)

    def _flush(self) -> None:
        lines, self._pending = self._pending, []
        self._stream.write(b"".join(lines))

    def _timestamp(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z".encode()


class _NoAccessLog(AccessLog):
    def __call__(self, record: AccessRecord) -> None:
        """Below the configured level: write nothing."""


_configured: dict[str, Any] = {}


def access_log() -> AccessLog:
    """The access-line writer: direct while secureserve's configuration is in force.

    When the host application configured structlog itself (or replaced ours), the
    line goes through its processors instead.
    """
    ours = _configured.get("processors")
    if ours is not None and structlog.get_config()["processors"] is ours:
        fast: AccessLog = _configured["access"]
        return fast
    return AccessLog()


class _BytesHandler(logging.Handler):
    """A logging handler that writes formatted lines to the same binary stream as structlog."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        """Write one JSON line."""
        try:
            self.stream.write(self.format(record).encode() + b"\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def get_logger(name: str = "secureserve") -> Any:
    """A structlog logger bound to ``logger=name``."""
    return structlog.get_logger(name).bind(logger=name)
