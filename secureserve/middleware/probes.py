"""The health probes: the only routes served without credentials or an in-flight slot."""

from __future__ import annotations

from typing import Final

from starlette.types import Scope

__all__ = ["PROBE_PATHS", "app_path", "is_probe"]

PROBE_PATHS: Final = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def app_path(scope: Scope) -> str:
    """The request's path inside this app: the prefix of a mount removed.

    When the app is mounted under a prefix, Starlette keeps the full path in ``path``
    and the prefix in ``root_path`` (set by the server or the mount, never by the
    client). Route names (metrics, audit records) and the probes go by this path.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def is_probe(scope: Scope) -> bool:
    """Whether the request targets a probe (``/healthz``, ``/readyz``, ``/v2/health/*``)."""
    return app_path(scope) in PROBE_PATHS
