"""secureserve: serve machine-learning models over HTTPS, secure by default.

Subclass :class:`Model` with msgspec input and output types, load weights only
through :class:`Artifacts`, and serve with ``secureserve run`` or mount
:func:`create_app` in a service. Importing this package configures nothing.

:class:`Client` and :class:`AsyncClient` (``secureserve.client``) are imported on
first use, so the server, which imports this package, never loads ``httpx2``.
"""

from typing import TYPE_CHECKING, Any

from secureserve.app import create_app
from secureserve.artifacts import ArtifactRecord, Artifacts
from secureserve.config import Settings, load_settings
from secureserve.errors import (
    ArtifactError,
    ConfigError,
    ModelError,
    RequestRejected,
    SecureServeError,
)
from secureserve.keys import KeyStore
from secureserve.model import Model
from secureserve.outputs import Label, Score, Scores
from secureserve.tensor_model import TensorModel

if TYPE_CHECKING:
    from secureserve.client import AsyncClient, Client

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ArtifactRecord",
    "Artifacts",
    "AsyncClient",
    "Client",
    "ConfigError",
    "KeyStore",
    "Label",
    "Model",
    "ModelError",
    "RequestRejected",
    "Score",
    "Scores",
    "SecureServeError",
    "Settings",
    "TensorModel",
    "__version__",
    "create_app",
    "load_settings",
]

#: Imported on first use by ``__getattr__``: the client needs httpx2, the server does not.
_LAZY = ("AsyncClient", "Client")


def __getattr__(name: str) -> Any:
    """``Client`` and ``AsyncClient``, imported from ``secureserve.client`` on first use."""
    if name in _LAZY:
        from secureserve import client  # noqa: PLC0415 - lazy on purpose: httpx2

        return getattr(client, name)
    raise AttributeError(f"module 'secureserve' has no attribute {name!r}")
