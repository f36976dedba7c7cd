"""Loading a handler and holding what one app serves: model, schema, runner, readiness.

Loading is eager and synchronous, so every error — a refused artifact, a
handler that raises in ``load`` — surfaces where the app is created, as a
``ConfigError`` or ``ArtifactError`` with a one-paragraph message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from secureserve.artifacts import ArtifactRecord, Artifacts
from secureserve.config import Settings
from secureserve.errors import ConfigError, SecureServeError
from secureserve.model import Model
from secureserve.openapi import openapi_document
from secureserve.runner import InferenceRunner
from secureserve.schema import ModelSchema

__all__ = ["ServingState", "load_model"]


def load_model(
    model: Model[Any, Any] | type[Model[Any, Any]],
    settings: Settings,
) -> tuple[Model[Any, Any], Mapping[str, ArtifactRecord]]:
    """Instantiate (if given a class), check, ``load`` and ``warmup`` the handler."""
    cls = model if isinstance(model, type) else type(model)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ConfigError(f"{cls!r} is not a secureserve.Model subclass.")
    cls.check_definition()
    where = f"{cls.__module__}.{cls.__qualname__}"
    artifacts = Artifacts(
        settings.model.dir,
        onnx_threads=settings.model.onnx_threads,
        onnx_allowed_domains=settings.model.onnx_allowed_domains,
    )
    try:
        instance = cls() if isinstance(model, type) else model
        instance.load(artifacts)
        instance.warmup()
    except SecureServeError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{where} failed while loading: {type(exc).__name__}: {exc}. "
            "Run with --debug for the traceback."
        ) from exc
    return instance, artifacts.opened


class ServingState:
    """Everything the routes need, built once when the app is created."""

    def __init__(
        self, model: Model[Any, Any], artifacts: Mapping[str, ArtifactRecord], settings: Settings
    ) -> None:
        server = settings.server
        cls = type(model)
        self.name = cls.name
        self.version = cls.version
        self.artifacts = dict(artifacts)
        self.max_instances = server.max_instances
        self.max_body_bytes = server.max_body_bytes
        self.body_timeout_s = server.body_timeout_s
        self.schema = ModelSchema(
            cls.input_type, cls.output_type, max_instances=server.max_instances
        )
        self.runner = InferenceRunner(
            model, self.schema, max_batch=server.max_instances, timeout=server.predict_timeout_s
        )
        self.openapi_body = msgspec.json.encode(
            openapi_document(self.name, self.version, self.schema)
        )
        self.ready = True
