"""The health probes: the only routes served without credentials or an in-flight slot."""

from __future__ import annotations

from typing import Final

from starlette.types import Scope

__all__ = ["PROBE_PATHS", "is_probe"]

PROBE_PATHS: Final = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def is_probe(scope: Scope) -> bool:
    """Whether the request targets a probe (``/healthz``, ``/readyz``, ``/v2/health/*``).

    When the app is mounted under a prefix, Starlette keeps the full path in
    ``path`` and the prefix in ``root_path`` (set by the server or the mount,
    never by the client), so the prefix is removed before comparing.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path in PROBE_PATHS
