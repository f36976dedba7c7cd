r"""Structured JSON logs on stdout, configured explicitly (never on import).

``configure_logging`` is called by the CLI and by ``create_app`` when the host
application has not configured structlog itself. A redaction processor runs
last before rendering, so a credential can never reach the output even when a
caller logs a header dict by mistake.

The ``console`` format (the default of ``secureserve run --dev``) renders the same
events with structlog's ``ConsoleRenderer`` for a terminal. A web page can make a
developer's browser send any path to 127.0.0.1, so every string is escaped first:
control characters (C0, DEL, C1: ESC starts the terminal's ANSI sequences), bidi
overrides and every other non-printable character become ``\xNN``/``\uNNNN``.

In JSON, the per-request access line is the one exception to "everything through
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
from typing import Any, Final, Literal

import msgspec
import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = [
    "REDACTED",
    "AccessLog",
    "AccessRecord",
    "LogFormat",
    "access_log",
    "configure_logging",
    "escape_text",
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

#: ``json``: one JSON object a line (production); ``console``: aligned, escaped text.
LogFormat = Literal["json", "console"]
#: Keys whose text keeps its line breaks on the console (a traceback is several lines).
_MULTILINE_KEYS: Final = frozenset({"exception", "stack"})


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


def _shared_processors(log_format: LogFormat = "json") -> list[Any]:
    # JSON: tracebacks as data; console: as text. Never with local variables (they may
    # hold secrets or inputs).
    exceptions = (
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if log_format == "json"
        else structlog.processors.format_exc_info
    )
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exceptions,
        _redact_processor,
    ]


def _serialize_text(event: Any, **_: Any) -> str:
    return _encoder.encode(event).decode()


def escape_text(text: str, *, keep_newlines: bool = False) -> str:
    r"""``text`` with every non-printable character as a Python escape (``\x1b``, ``\u202e``).

    That is C0 controls (``\r``, ``\n``, ESC, which starts ANSI sequences), DEL, C1
    controls, bidi overrides and isolates, zero-width and other format characters, line
    and paragraph separators, unassigned code points. ``keep_newlines`` leaves ``\n``
    as it is (a traceback's lines).
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or (keep_newlines and char == "\n") else _escape_char(char)
        for char in text
    )


def _escape_char(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:  # noqa: PLR2004 - the \xNN range
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"  # noqa: PLR2004


def _escape_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Escape every string value (the event too) before the console renderer writes it.

    Lists and mappings need nothing: the renderer shows them with ``repr``, which
    escapes the same characters.
    """
    for key, value in event.items():
        if isinstance(value, str) and not value.isprintable():
            event[key] = escape_text(value, keep_newlines=key in _MULTILINE_KEYS)
    return event


def _console_renderer(stream: Any) -> structlog.dev.ConsoleRenderer:
    """The console renderer of structlog, in colors when ``stream`` is a terminal."""
    isatty = getattr(stream, "isatty", None)
    colors = bool(isatty is not None and isatty())
    try:
        return structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    except SystemError:  # colors on Windows without colorama
        return structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )


def _to_bytes(_: Any, __: str, line: str) -> bytes:
    return line.encode("utf-8", "backslashreplace")


def configure_logging(
    level: str = "info", *, stream: Any = None, log_format: LogFormat = "json"
) -> None:
    """Send log lines at ``level`` and above to ``stream`` (default: stdout).

    ``log_format`` is ``json`` (one object a line) or ``console`` (structlog's console
    renderer, every string escaped, colors on a terminal). The standard library's
    loggers (uvicorn's among them) are routed through the same processors, so every
    line on stdout has the same format and passes redaction.
    """
    out = stream or sys.stdout.buffer
    if log_format == "console":
        renderer = _console_renderer(out)
        processors = [*_shared_processors("console"), _escape_processor, renderer, _to_bytes]
        final: list[Any] = [_escape_processor, renderer]
    else:
        processors = [
            *_shared_processors(),
            structlog.processors.JSONRenderer(serializer=_serialize),
        ]
        final = [structlog.processors.JSONRenderer(serializer=_serialize_text)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = _BytesHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors(log_format)],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    access: AccessLog
    if _LEVELS[level] > logging.INFO:
        access = _NoAccessLog()
    elif log_format == "console":
        access = AccessLog()  # through the processors above: escaped like every line
    else:
        access = _FastAccessLog(out)
    _configured.update(processors=processors, access=access)


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

    def __call__(
        self,
        record: AccessRecord,
        loop: asyncio.AbstractEventLoop | None = None,  # noqa: ARG002 - see _FastAccessLog
    ) -> None:
        """Record one finished request (``loop``: the running one, when the caller has it)."""
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

    def __call__(self, record: AccessRecord, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Record one finished request (``loop``: the running one, when the caller has it)."""
        if "ss_" in record.path or "earer" in record.path or "ss_" in record.request_id:
            record = msgspec.structs.replace(
                record, path=redact(record.path), request_id=redact(record.request_id)
            )
        head = b'{"logger":"secureserve","event":"request","level":"info","timestamp":"'
        line = head + self._timestamp() + b'",' + _encoder.encode(record)[1:] + b"\n"
        if loop is None:
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
    def __call__(self, record: AccessRecord, loop: asyncio.AbstractEventLoop | None = None) -> None:
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
