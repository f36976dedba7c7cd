"""secureserve: serve machine-learning models over HTTPS, secure by default.

Subclass :class:`Model` with msgspec input and output types, load weights only
through :class:`Artifacts`, and serve with ``secureserve run`` or mount
:func:`create_app` in a service. Importing this package configures nothing.
"""

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

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ArtifactRecord",
    "Artifacts",
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
