"""The one exception tree of secureserve.

Library code raises these and nothing else; ``secureserve.app`` is the single
place that maps them to ``application/problem+json`` responses, and
``secureserve.cli`` the single place that turns them into an exit code::

    SecureServeError
    ├── ConfigError          settings or files that stop start-up (names key and fix)
    ├── ArtifactError        a model file refused: wrong format, malformed, outside the folder
    ├── ModelError           the handler misbehaved (wrong output count/type, non-finite value)
    └── RequestRejected      a request refused with an HTTP status (4xx/5xx)

Messages of ``ConfigError`` and ``ArtifactError`` are for operators (they go to
the terminal and the log). A ``RequestRejected`` carries only a fixed title and,
where safe, a ``detail`` that names the failing field path; never exception text.

Raise a new instance every time. An exception kept in a module or an attribute and
raised again collects every raise's traceback (it grew by about 10 KB a request) and
is shared by concurrent requests; ``tests/test_errors.py`` checks the package for it.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "LoadError",
    "ModelError",
    "RequestRejected",
    "SecureServeError",
]


class SecureServeError(Exception):
    """Base class of every error secureserve raises on purpose."""


class ConfigError(SecureServeError):
    """Configuration or a file it names is unusable; start-up stops.

    The message names the offending key or file and says how to fix it.
    """


class LoadError(ConfigError):
    """The handler's ``load`` or ``warmup`` raised: its files, not the settings, failed."""


class ArtifactError(SecureServeError):
    """A model artifact was refused (format, structure, location or integrity).

    ``name`` is the artifact name as the handler asked for it, ``reason`` a short
    machine-readable code such as ``"pickle"`` or ``"safetensors-offsets"``.
    """

    def __init__(self, name: str, reason: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.reason = reason


class ModelError(SecureServeError):
    """The model handler broke its contract; the client sees a bare 500."""


class RequestRejected(SecureServeError):  # noqa: N818 - the name DESIGN.md gives it
    """A request refused with ``status``; ``slug`` becomes the problem ``type``.

    ``detail`` must be safe to show a client (a field path, a limit), never an
    exception message. ``headers`` are added to the problem response
    (``Retry-After``, ``WWW-Authenticate``); ``close`` ends the connection after
    the response; ``log_reason`` says why, for the log line only.
    """

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        *,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
        log_reason: str | None = None,
    ) -> None:
        super().__init__(f"{status} {slug}")
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.close = close
        self.log_reason = log_reason
