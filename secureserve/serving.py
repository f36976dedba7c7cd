"""Loading a handler and holding what one app serves: model, schema, runner, readiness.

Loading is eager and synchronous, so every error — a refused artifact, a
handler that raises in ``load`` — surfaces where the app is created, as a
``ConfigError`` or ``ArtifactError`` with a one-paragraph message.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from secureserve.artifacts import ArtifactRecord, Artifacts
from secureserve.audit import AuditLog, AuditUnavailable
from secureserve.config import Settings
from secureserve.defenses import Defenses, check_feature_view
from secureserve.encryption import KEY_ENV, load_key
from secureserve.errors import ConfigError, SecureServeError
from secureserve.explain import Explainer
from secureserve.lockfile import (
    LOCK_FILENAME,
    MISSING_LOCK,
    SIGNATURE_FILENAME,
    Lock,
    read_lock,
)
from secureserve.logs import get_logger
from secureserve.metrics import Metrics
from secureserve.model import Model
from secureserve.openapi import openapi_document
from secureserve.outputs import OutputPolicies, OutputView
from secureserve.profile import DEFAULT_PROFILE, Profile, load_profile
from secureserve.providers import check_onnxruntime_distribution, choose_providers
from secureserve.ratelimit import RateLimiter
from secureserve.runner import InferenceRunner
from secureserve.schema import ModelSchema
from secureserve.signing import read_signature, verify

__all__ = ["Deployment", "LoadedModel", "ServingState", "load_model"]


@dataclass(frozen=True)
class LoadedModel:
    """A handler instance after ``load`` and ``warmup``, with what it opened."""

    instance: Model[Any, Any]
    opened: Mapping[str, ArtifactRecord]
    revision: str  # first 12 hex digits of the lock's sha256: which release of the files
    profile: Profile | None = None  # the reference profile, when the model has one
    no_features: str | None = None  # why the model has no feature view (defenses off)
    lock_sha256: str | None = None  # of the lock bytes verified at load (None: no lock)


def load_model(
    model: Model[Any, Any] | type[Model[Any, Any]],
    settings: Settings,
) -> LoadedModel:
    """Instantiate (if given a class), check, ``load`` and ``warmup`` the handler.

    Everything is verified on the way: the lock (and its signature when a signing key
    is configured) before any file is read, each file against the lock as it is read.
    """
    cls = model if isinstance(model, type) else type(model)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ConfigError(f"{cls!r} is not a secureserve.Model subclass.")
    cls.check_definition()
    where = f"{cls.__module__}.{cls.__qualname__}"
    model_settings = settings.model
    lock, lock_sha256 = verified_lock(settings)
    revision = lock_sha256[:12] if lock_sha256 is not None else "unlocked"
    check_onnxruntime_distribution()
    artifacts = Artifacts(
        model_settings.dir,
        onnx_threads=model_settings.onnx_threads,
        onnx_allowed_domains=model_settings.onnx_allowed_domains,
        onnx_optimization=model_settings.onnx_optimization,
        onnx_providers=choose_providers(model_settings.providers, model=cls.name),
        max_onnx_nodes=model_settings.onnx_max_nodes,
        max_file_bytes=model_settings.max_artifact_bytes,
        lock=lock,
        decryption_key=decryption_key(settings),
    )
    profile_name = model_settings.profile or (
        DEFAULT_PROFILE if DEFAULT_PROFILE in lock.files else None
    )
    no_features = check_feature_view(cls, model_settings, has_profile=profile_name is not None)
    if profile_name is None and model_settings.guard.mode in ("refuse", "flag"):
        raise ConfigError(
            f'[model.guard] mode = "{model_settings.guard.mode}" compares instances with the '
            "model's reference profile, and there is none: write one with `secureserve "
            f"profile DATA --out {model_settings.dir.name}/profile.json`, then `secureserve "
            'lock`; or set mode = "off".'
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
    profile = load_profile(artifacts, profile_name, cls) if profile_name is not None else None
    if artifacts.session_providers:
        get_logger().info(
            "onnx sessions", model=cls.name, providers=dict(artifacts.session_providers)
        )
    return LoadedModel(
        instance, dict(artifacts.opened), revision, profile, no_features, lock_sha256
    )


def verified_lock(settings: Settings) -> tuple[Lock, str | None]:
    """The project's lock, its signature verified when ``[model] signing_public_key`` is set.

    The signature is checked over the exact bytes that are then parsed. Without a
    lock file every artifact is refused (``MISSING_LOCK``), unless a signing key is
    configured, in which case the missing lock is an error right away. Also returns
    the sha256 of the lock's bytes (None without a lock).
    """
    path = settings.project_dir / LOCK_FILENAME
    public_key = settings.model.signing_public_key
    if not path.exists() and public_key is None:
        return MISSING_LOCK, None
    lock, data = read_lock(path)
    if public_key is not None:
        signature_path = path.with_name(SIGNATURE_FILENAME)
        try:
            signature = read_signature(signature_path)
        except FileNotFoundError:
            raise ConfigError(
                f"{signature_path} does not exist, but [model] signing_public_key requires a "
                "signed lock: run `secureserve sign --private-key KEY` where the model is "
                "released."
            ) from None
        verify(data, signature, public_key)
    return lock, hashlib.sha256(data).hexdigest()


def decryption_key(settings: Settings) -> bytes | None:
    """The key for ``*.enc`` artifacts: ``[model] encryption_key_file`` or the environment."""
    key_file = settings.model.encryption_key_file
    if key_file is None and KEY_ENV not in os.environ:
        return None
    return load_key(key_file=key_file)


class Deployment:
    """One loaded version of the model, with the inference thread that runs it.

    Requests hold it from start to end (``acquire``/``release``); after a reload
    swaps it out (``retire``), its thread stops once the last of them has finished,
    so in-flight requests complete on the version they started with.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        schema: ModelSchema,
        settings: Settings,
        defenses: Defenses,
    ) -> None:
        self.version: str = loaded.instance.version
        self.revision = loaded.revision
        self.artifacts = dict(loaded.opened)
        self.defenses = defenses
        self.explainer = Explainer(
            loaded.instance,
            loaded.profile,
            settings.model.explain,
            schema,
            has_view=loaded.no_features is None,
            max_batch=settings.server.max_instances,
        )
        self.runner = InferenceRunner(
            loaded.instance,
            schema,
            max_batch=settings.server.max_instances,
            timeout=settings.server.predict_timeout_s,
        )
        self._active = 0
        self._retired = False

    def acquire(self) -> None:
        """A request starts on this version (event-loop thread only)."""
        self._active += 1

    def release(self) -> None:
        """A request finished; a retired version stops when none is left."""
        self._active -= 1
        if self._retired and self._active == 0:
            self.runner.stop()

    def retire(self) -> None:
        """Stop taking new requests; stop the thread when in-flight ones are done."""
        self._retired = True
        if self._active == 0:
            self.runner.stop()


class ServingState:
    """What the routes need: the current deployment, the schema, limits and readiness."""

    def __init__(self, cls: type[Model[Any, Any]], loaded: LoadedModel, settings: Settings) -> None:
        server = settings.server
        self.cls = cls
        self.settings = settings
        self.name = cls.name
        self.max_instances = server.max_instances
        self.max_body_bytes = server.max_body_bytes
        self.body_timeout_s = server.body_timeout_s
        self.schema = ModelSchema(
            cls.input_type, cls.output_type, max_instances=server.max_instances
        )
        self.metrics = Metrics()
        self.current = self._deploy(loaded)
        self.metrics.serving(
            model=self.name, version=self.current.version, revision=self.current.revision
        )
        where = f"{cls.__module__}.{cls.__qualname__}"
        self.policies = OutputPolicies(cls.output_type, settings.model.output, where=where)
        self._openapi_bodies: dict[str, bytes] = {
            view.policy if view is not None else "": msgspec.json.encode(
                openapi_document(self.name, cls.version, self.schema, view)
            )
            for view in (*self.policies.views.values(), None)
        }
        self._log_defenses(loaded)
        self.ready = True
        self._reload_lock = asyncio.Lock()
        # set by create_app once the access objects exist
        self.audit: AuditLog
        self.limiter: RateLimiter

    def _log_defenses(self, loaded: LoadedModel) -> None:
        """One start-up line saying which model defenses run; a warning for full scores."""
        log = get_logger()
        if loaded.no_features is not None:
            log.info(
                "model defenses that need a feature view are off (input guard, drift)",
                model=self.name,
                reason=loaded.no_features,
            )
        defenses = self.current.defenses
        default = self.policies.default
        log.info(
            "model defenses",
            model=self.name,
            output_policy=default.policy if default is not None else "none (no score fields)",
            role_policies=dict(self.settings.model.output.roles) or None,
            guard=defenses.mode if defenses.guard is not None else "off",
            drift="on" if defenses.drift is not None else "off",
            profile_features=len(loaded.profile.features) if loaded.profile else None,
        )
        if default is not None and default.policy == "full":
            log.warning(
                'every caller receives full scores ([model.output] policy = "full"): '
                "model inversion and extraction are cheaper",
                model=self.name,
            )

    def _deploy(self, loaded: LoadedModel) -> Deployment:
        defenses = Defenses(
            loaded.instance,
            loaded.profile,
            self.settings.model,
            has_view=loaded.no_features is None,
            metrics=self.metrics,
            audit=lambda: self.audit,
            limiter=lambda: self.limiter,
        )
        return Deployment(loaded, self.schema, self.settings, defenses)

    def openapi_body(self, view: OutputView | None) -> bytes:
        """The OpenAPI document as a caller under the output policy ``view`` should read it."""
        return self._openapi_bodies[view.policy if view is not None else ""]

    @property
    def runner(self) -> InferenceRunner:
        """The current deployment's runner."""
        return self.current.runner

    async def reload(
        self, *, trigger: str, principal: str | None = None, request_id: str | None = None
    ) -> tuple[Deployment, Deployment]:
        """Load the model again beside the running one and swap if, and only if, it all passed.

        Lock, signature, formats, ``load`` and ``warmup`` run in a worker thread while
        the current version keeps serving; any failure is logged, audited and re-raised,
        and changes nothing. A model change is never unrecorded: when the audit log
        cannot be written (and ``[audit] on_write_error`` is ``refuse``) the reload is
        refused before anything is loaded, and the swap happens only after its record
        was written. Returns (previous, new).
        """
        log = get_logger()
        where = {"trigger": trigger, "request_id": request_id, "key_id": principal}
        async with self._reload_lock:
            kept = self.current
            self.audit.check_writable()
            try:
                loaded = await asyncio.to_thread(load_model, self.cls, self.settings)
            except Exception as exc:
                log.exception(
                    "model reload refused", model=self.name, kept_revision=kept.revision, **where
                )
                detail = f"{type(exc).__name__}; {kept.revision} kept"
                self._audit_reload("reload-refused", detail, where)
                raise
            current = self._deploy(loaded)
            self.audit.admin(  # before the swap: raises AuditUnavailable, and nothing changes
                action="reload",
                principal=principal,
                request_id=request_id,
                trigger=trigger,
                model=self.name,
                detail=f"{kept.revision} -> {current.revision}",
            )
            previous, self.current = kept, current
            current.defenses.take_over(previous.defenses)
            previous.retire()
        self.metrics.serving(model=self.name, version=current.version, revision=current.revision)
        log.info(
            "model reloaded",
            model=self.name,
            model_version=current.version,
            model_revision=current.revision,
            previous_revision=previous.revision,
            **where,
        )
        return previous, current

    def _audit_reload(self, action: str, detail: str, where: dict[str, str | None]) -> None:
        try:
            self.audit.admin(
                action=action,
                principal=where["key_id"],
                request_id=where["request_id"],
                trigger=where["trigger"],
                model=self.name,
                detail=detail,
            )
        except AuditUnavailable:
            get_logger().exception("model reload not audited", request_id=where["request_id"])

    def close(self) -> None:
        """Shutdown: finish queued work of the current deployment and stop its thread."""
        self.current.runner.close()
