"""Loading a handler and holding what one app serves: model, schema, runner, readiness.

Loading is eager and synchronous, so every error — a refused artifact, a
handler that raises in ``load`` — surfaces where the app is created, as a
``ConfigError`` or ``ArtifactError`` with a one-paragraph message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

from secureserve.artifacts import ArtifactRecord, Artifacts
from secureserve.config import Settings
from secureserve.encryption import KEY_ENV, load_key
from secureserve.errors import ConfigError, SecureServeError
from secureserve.lockfile import (
    LOCK_FILENAME,
    MISSING_LOCK,
    SIGNATURE_FILENAME,
    Lock,
    read_lock,
)
from secureserve.model import Model
from secureserve.openapi import openapi_document
from secureserve.runner import InferenceRunner
from secureserve.schema import ModelSchema
from secureserve.signing import verify

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
    model_settings = settings.model
    artifacts = Artifacts(
        model_settings.dir,
        onnx_threads=model_settings.onnx_threads,
        onnx_allowed_domains=model_settings.onnx_allowed_domains,
        onnx_optimization=model_settings.onnx_optimization,
        max_onnx_nodes=model_settings.onnx_max_nodes,
        max_file_bytes=model_settings.max_artifact_bytes,
        lock=verified_lock(settings),
        decryption_key=decryption_key(settings),
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


def verified_lock(settings: Settings) -> Lock:
    """The project's lock, its signature verified when ``[model] signing_public_key`` is set.

    The signature is checked over the exact bytes that are then parsed. Without a
    lock file every artifact is refused (``MISSING_LOCK``), unless a signing key is
    configured, in which case the missing lock is an error right away.
    """
    path = settings.project_dir / LOCK_FILENAME
    public_key = settings.model.signing_public_key
    if not path.exists() and public_key is None:
        return MISSING_LOCK
    lock, data = read_lock(path)
    if public_key is not None:
        signature_path = path.with_name(SIGNATURE_FILENAME)
        try:
            signature = signature_path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"{signature_path} does not exist, but [model] signing_public_key requires a "
                "signed lock: run `secureserve sign --private-key KEY` where the model is "
                "released."
            ) from None
        verify(data, signature, public_key)
    return lock


def decryption_key(settings: Settings) -> bytes | None:
    """The key for ``*.enc`` artifacts: ``[model] encryption_key_file`` or the environment."""
    key_file = settings.model.encryption_key_file
    if key_file is None and KEY_ENV not in os.environ:
        return None
    return load_key(key_file=key_file)


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
