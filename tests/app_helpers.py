"""Build the app in-process: settings, key stores, clients, toy models and captured logs.

``build_app(model, settings, *api_keys)`` is ``create_app`` with exactly those keys in
an in-memory key store; ``asgi_client(app, key)`` talks to it over an ``https`` scope
with that key as the bearer credential. ``replaced(settings, server={...})`` changes
single keys of whole settings sections, and ``unlimited_iris_settings()`` is the iris
example with its audit log in a fresh folder and the rate limits off.

Also here: ``Number`` and ``Echo``, the one-number input and output of toy handlers;
``json_logs(stream)``, secureserve's JSON logs captured for a block; and
``RecordingLogger``, a logger that keeps its events for assertions.

Real ``secureserve run`` processes, throw-away projects and certificates are in
server_helpers.py; fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
from conftest import EXAMPLES
from starlette.applications import Starlette
from starlette.testclient import TestClient as StarletteClient

from secureserve.app import create_app
from secureserve.config import Settings, load_settings
from secureserve.keys import ApiKey, KeyRecord, KeyStore
from secureserve.logs import configure_logging

BASE_URL = "https://testserver"
_Stream = TypeVar("_Stream")


# --------------------------------------------------------------------------- toy models


class Number(msgspec.Struct, forbid_unknown_fields=True):
    """One number in: the input of the toy handlers."""

    x: float


class Echo(msgspec.Struct):
    """One number out: the output of the toy handlers."""

    y: float


# --------------------------------------------------------------------------- settings


def replaced(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """``settings`` with single keys of whole sections replaced, the rest kept.

    ``replaced(s, server={"max_in_flight": 1})`` changes ``[server] max_in_flight`` only.
    """
    changed = {
        name: msgspec.structs.replace(getattr(settings, name), **values)
        for name, values in sections.items()
    }
    return msgspec.structs.replace(settings, **changed)


def unlimited_iris_settings(**server: Any) -> Settings:
    """examples/iris's settings, audit log in a fresh temporary folder, rate limits off.

    For tests that send many (refused) requests on purpose: ``per_principal``,
    ``quota`` and ``auth_failures_per_ip`` are off (limits have their own tests).
    ``server`` replaces keys of ``[server]``.
    """
    settings = load_settings(project_dir=EXAMPLES / "iris")
    audit = Path(tempfile.mkdtemp(prefix="ss-audit-")) / "audit.jsonl"
    return replaced(
        settings,
        audit={"path": audit},
        limits={"per_principal": None, "quota": None, "auth_failures_per_ip": None},
        server=server,
    )


# --------------------------------------------------------------------------- apps and clients


def build_app(
    model: Any,
    settings: Settings,
    *api_keys: ApiKey,
    records: Iterable[KeyRecord] = (),
    audit_key: bytes | None = None,
) -> Starlette:
    """``create_app(model)`` whose in-memory key store holds exactly ``records`` and ``api_keys``.

    ``audit_key`` is the audit digest key (default: as ``create_app`` decides).
    """
    store = KeyStore(None, records=[*records, *(key.record for key in api_keys)])
    return create_app(model, config=settings, keys=store, audit_key=audit_key)


def bearer(credential: ApiKey | str) -> dict[str, str]:
    """The Authorization header for an API key (``ApiKey``) or a token (``str``)."""
    secret = credential if isinstance(credential, str) else credential.secret
    return {"Authorization": f"Bearer {secret}"}


def asgi_client(
    app: Any,
    credential: ApiKey | str | None = None,
    *,
    ip: str | None = None,
    base_url: str = BASE_URL,
) -> StarletteClient:
    """A Starlette test client for ``app``, over ``https`` unless ``base_url`` says otherwise.

    It sends ``credential`` (an API key or a token) as its bearer credential when given,
    and is seen as coming from ``ip`` (port 50000) when given.
    """
    headers = bearer(credential) if credential is not None else {}
    if ip is None:
        return StarletteClient(app, base_url=base_url, headers=headers)
    return StarletteClient(app, base_url=base_url, headers=headers, client=(ip, 50000))


# --------------------------------------------------------------------------- logs


@contextlib.contextmanager
def json_logs(stream: _Stream) -> Iterator[_Stream]:
    """Write secureserve's JSON logs (level info) to ``stream`` until the block ends.

    Yields ``stream``; the logging set-up of before (structlog's and the root logger's
    handlers and level) is restored afterwards. Create an app inside the block so its
    access log writes to ``stream``.
    """
    was_configured = structlog.is_configured()
    old = structlog.get_config()
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    configure_logging("info", stream=stream)
    try:
        yield stream
    finally:
        if was_configured:
            structlog.configure(**old)
        else:
            structlog.reset_defaults()
        root.handlers[:] = old_handlers
        root.setLevel(old_level)


def json_lines(buffer: io.BytesIO) -> list[dict[str, Any]]:
    """The lines written to ``buffer``, each parsed as JSON."""
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class RecordingLogger:
    """A logger that keeps ``(level, event, fields)`` in ``events`` instead of printing."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **fields: Any) -> None:
        self.events.append((level, event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, **fields)

    def levels(self) -> list[str]:
        """The level of every event, in order."""
        return [level for level, _, _ in self.events]

    def at(self, level: str) -> list[str]:
        """The events logged at ``level``, in order."""
        return [event for lvl, event, _ in self.events if lvl == level]
