"""Loading a handler and holding what one app serves: model, schema, runner, readiness.

Loading is eager and synchronous, so every error — a refused artifact, a
handler that raises in ``load`` — surfaces where the app is created, as a
``ConfigError`` or ``ArtifactError`` with a one-paragraph message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol, TypeVar

import msgspec

from secureserve.artifacts import ArtifactRecord, Artifacts
from secureserve.audit import AuditLog, AuditUnavailable
from secureserve.config import ModelSettings, Settings
from secureserve.defenses import (
    Defenses,
    FeatureSource,
    check_feature_view,
    check_guard_has_profile,
)
from secureserve.encryption import KEY_ENV, load_key
from secureserve.errors import ConfigError, LoadError, RequestRejected, SecureServeError
from secureserve.explain import Explainer
from secureserve.lockfile import Lock
from secureserve.logs import get_logger
from secureserve.metrics import Metrics
from secureserve.model import Model
from secureserve.openapi import ModelDoc, openapi_document
from secureserve.openapi_v2 import TensorDoc, with_tensors
from secureserve.outputs import OutputPolicies
from secureserve.profile import DEFAULT_PROFILE, Profile, load_profile, schema_revision
from secureserve.providers import check_onnxruntime_distribution, choose_providers
from secureserve.ratelimit import RateLimiter
from secureserve.release import revision_of, unlisted_files, verified_lock
from secureserve.runner import InferenceRunner
from secureserve.schema import ModelSchema

if TYPE_CHECKING:
    from secureserve.auth import Principal

__all__ = [
    "RELOAD_NOTE",
    "Deployment",
    "HandlerCode",
    "HandlerSource",
    "LoadedModel",
    "Reloaded",
    "ServedModel",
    "ServedModels",
    "ServingState",
    "load_model",
]

#: OpenAPI documents kept, one per combination of visible models and output policies.
_OPENAPI_KEPT: Final = 64
#: Names of files missing from the lock that the start-up warning lists (then a count).
_UNLISTED_SHOWN: Final = 20
_UNAVAILABLE_RETRY_S: Final = "30"
#: The largest handler source file fingerprinted; a larger one counts as unreadable.
_SOURCE_MAX_BYTES: Final = 4 * 1024 * 1024
#: Source files of one handler followed (its class and the user's base classes).
_SOURCE_MAX_FILES: Final = 8
#: Said in every reload answer (and the docs): what a reload does not do.
RELOAD_NOTE: Final = (
    "reload swaps model files only; the handler's code is the one imported at start: "
    "restart the server to run changed code"
)

#: The handler's source files since start: ``changed-restart-needed`` when one was edited
#: (the old code keeps serving), ``unknown`` when there is no readable source (zip, pyc).
HandlerCode = Literal["unchanged", "changed-restart-needed", "unknown"]


class HandlerSource:
    """The handler's source files and their SHA-256 at start, to tell when one was edited.

    A reload loads model files again, never code: Python keeps the classes it imported.
    The files are the module of the handler class and of each of its own base classes
    (up to secureserve's), each read whole, up to ``_SOURCE_MAX_BYTES``. A class without
    a readable source file (imported from a zip or a ``.pyc`` only) is left out; with
    none left, the state is ``unknown``.
    """

    def __init__(self, cls: type[Any]) -> None:
        self.digests: dict[str, str] = {}
        for path in _source_files(cls):
            digest = _file_digest(path)
            if digest is not None:
                self.digests[path] = digest

    def changed(self) -> list[str]:
        """The files whose bytes differ from start (a removed or unreadable one counts)."""
        return [path for path, digest in self.digests.items() if _file_digest(path) != digest]

    def state(self, changed: list[str]) -> HandlerCode:
        """What a reload answers for these changed files."""
        if not self.digests:
            return "unknown"
        return "changed-restart-needed" if changed else "unchanged"


def _source_files(cls: type[Any]) -> list[str]:
    """The source files of ``cls`` and of its bases before the first secureserve class."""
    files: list[str] = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] == "secureserve" or klass is object:
            break
        try:
            path = inspect.getsourcefile(klass)
        except (TypeError, OSError):  # built-in, or no file behind the module
            continue
        if path is not None and path not in files:
            files.append(path)
        if len(files) == _SOURCE_MAX_FILES:
            break
    return files


def _file_digest(path: str) -> str | None:
    """SHA-256 of a file's bytes, or None if it cannot be read or is too large."""
    try:
        with open(path, "rb") as file:  # noqa: PTH123 - a path string from inspect
            data = file.read(_SOURCE_MAX_BYTES + 1)
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest() if len(data) <= _SOURCE_MAX_BYTES else None


class Reloaded(NamedTuple):
    """What a reload did: the deployment replaced (None: none), the new one, the code state."""

    previous: Any
    current: Any
    code: HandlerCode


@dataclass(frozen=True)
class LoadedModel:
    """A handler instance after ``load`` and ``warmup``, with what it opened."""

    instance: Model[Any, Any]
    opened: Mapping[str, ArtifactRecord]
    revision: str  # first 12 hex digits of the lock's sha256: which release of the files
    profile: Profile | None = None  # the reference profile, when the model has one
    no_features: str | None = None  # why the model has no feature view (defenses off)
    lock_sha256: str | None = None  # of the lock bytes verified at load (None: no lock)


class _Handler(Protocol):
    def load(self, artifacts: Artifacts) -> None: ...
    def warmup(self) -> None: ...


_H = TypeVar("_H", bound=_Handler)


def started(make: Callable[[], _H], artifacts: Artifacts, where: str) -> _H:
    """``make()``, then its ``load`` and ``warmup`` (an ``ss.Model`` or a ``TensorModel``).

    A failure of the handler's own code is a :class:`LoadError` naming ``where`` (its
    class); secureserve's own errors (a file that fails verification) pass as they are.
    """
    try:
        instance = make()
        instance.load(artifacts)
        instance.warmup()
    except SecureServeError:
        raise
    except Exception as exc:
        raise LoadError(
            f"{where} failed while loading: {type(exc).__name__}: {exc}. "
            "Run with --debug for the traceback."
        ) from exc
    return instance


def load_model(
    model: Model[Any, Any] | type[Model[Any, Any]],
    settings: Settings,
    model_settings: ModelSettings | None = None,
) -> LoadedModel:
    """Instantiate (if given a class), check, ``load`` and ``warmup`` the handler.

    ``model_settings`` are the model's own keys (``[models.<name>]``; default
    ``[model]``). Everything is verified on the way: the lock (and its signature when a
    signing key is configured) before any file is read, each file against the lock as
    it is read.
    """
    cls = model if isinstance(model, type) else type(model)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ConfigError(f"{cls!r} is not a secureserve.Model subclass.")
    cls.check_definition()
    where = f"{cls.__module__}.{cls.__qualname__}"
    model_settings = model_settings or settings.model
    artifacts, lock, lock_sha256 = open_model_files(settings, model_settings, model=cls.name)
    revision = revision_of(lock, lock_sha256)
    profile_name = profile_name_of(model_settings, lock)
    no_features = check_feature_view(cls, model_settings, has_profile=profile_name is not None)
    check_guard_has_profile(model_settings, has_profile=profile_name is not None)
    instance = started(cls if isinstance(model, type) else lambda: model, artifacts, where)
    profile = None
    if profile_name is not None:
        profile = load_profile(
            artifacts,
            profile_name,
            revision=schema_revision(cls.input_type),
            columns=cls.feature_columns(),
            owner=f"{cls.__qualname__}.features()",
        )
    if artifacts.session_providers:
        get_logger().info(
            "onnx sessions", model=cls.name, providers=dict(artifacts.session_providers)
        )
    return LoadedModel(
        instance, dict(artifacts.opened), revision, profile, no_features, lock_sha256
    )


def profile_name_of(model_settings: ModelSettings, lock: Lock) -> str | None:
    """The model's reference profile: ``profile`` if set, else ``profile.json`` if locked."""
    return model_settings.profile or (DEFAULT_PROFILE if DEFAULT_PROFILE in lock.files else None)


def open_model_files(
    settings: Settings, model_settings: ModelSettings, *, model: str
) -> tuple[Artifacts, Lock, str | None]:
    """The model's files, behind its verified lock; with the lock and its file's sha256.

    The lock (and its signature) is verified before any file can be read; ONNX
    sessions get the model's providers and hardening settings. Files in the model
    folder that the lock does not list are logged (a warning naming them): no model
    can open them, but someone put them beside the release.
    """
    lock, lock_sha256 = verified_lock(settings, model_settings)
    if lock_sha256 is not None:  # without a lock every file is refused, and said so
        _warn_unlisted(model_settings, lock, model=model)
    check_onnxruntime_distribution()
    artifacts = Artifacts(
        model_settings.dir,
        onnx_threads=model_settings.onnx_threads,
        onnx_allowed_domains=model_settings.onnx_allowed_domains,
        onnx_optimization=model_settings.onnx_optimization,
        onnx_providers=choose_providers(model_settings.providers, model=model),
        max_onnx_nodes=model_settings.onnx_max_nodes,
        max_file_bytes=model_settings.max_artifact_bytes,
        lock=lock,
        decryption_key=decryption_key(model_settings),
    )
    return artifacts, lock, lock_sha256


def _warn_unlisted(model_settings: ModelSettings, lock: Lock, *, model: str) -> None:
    unlisted = unlisted_files(model_settings.dir, lock)
    if unlisted:
        get_logger().warning(
            "files in the model folder are not in secureserve.lock, so no model can open "
            "them: remove them, or run `secureserve lock` (and `secureserve sign`) if they "
            "belong to the release (a pickle or another format never loaded cannot be "
            "locked: convert it to safetensors or ONNX)",
            model=model,
            folder=str(model_settings.dir),
            files=unlisted[:_UNLISTED_SHOWN],
            unlisted_count=len(unlisted),
        )


def decryption_key(model: ModelSettings) -> bytes | None:
    """The key for ``*.enc`` artifacts: ``[model] encryption_key_file`` or the environment."""
    key_file = model.encryption_key_file
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
        model_settings: ModelSettings,
        defenses: Defenses,
    ) -> None:
        self.version: str = loaded.instance.version
        self.revision = loaded.revision
        self.artifacts = dict(loaded.opened)
        self.defenses = defenses
        self.explainer = Explainer(
            loaded.instance,
            loaded.profile,
            model_settings.explain,
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

    def close(self) -> None:
        """Shutdown: finish queued work and stop the thread."""
        self.runner.close()


class ServedModel:
    """What every served model has: its settings, the version serving now, readiness, reload.

    ``current`` is None only for an optional model (``[models.<name>] optional``) that
    failed to load: it is not ready, its routes answer 503 ``model-unavailable``, and a
    reload (``POST .../{name}:reload`` or SIGHUP) may bring it up. A subclass says how
    the model is loaded (``_load``, in a worker thread) and deployed (``_deploy``).
    """

    def __init__(
        self,
        cls: type[Any],
        settings: Settings,
        model_settings: ModelSettings,
        metrics: Metrics,
        *,
        table: str = "[model]",
    ) -> None:
        server = settings.server
        self.cls = cls
        self.settings = settings
        self.model_settings = model_settings
        self.name: str = cls.name
        self.optional = model_settings.optional
        self.max_instances = server.max_instances
        self.max_body_bytes = server.max_body_bytes
        self.body_timeout_s = server.body_timeout_s
        self.metrics = metrics
        self.table = table
        self.current: Any = None
        self._reload_lock = asyncio.Lock()
        self.source = HandlerSource(cls)  # reload tells when the handler's code was edited
        # set by create_app once the access objects exist
        self.audit: AuditLog
        self.limiter: RateLimiter

    def _start(self, loaded: Any) -> None:
        """Deploy what was loaded at start-up (nothing, for an optional model that failed)."""
        if loaded is not None:
            self.current = self._deploy(loaded)
            self.metrics.serving(
                model=self.name, version=self.current.version, revision=self.current.revision
            )
            self._started(loaded)

    def _load(self) -> Any:
        raise NotImplementedError

    def _deploy(self, loaded: Any) -> Any:
        raise NotImplementedError

    def _started(self, loaded: Any) -> None:
        """After a deployment replaced nothing: say what runs (a subclass logs it)."""

    def _swapped(self, previous: Any, current: Any) -> None:  # noqa: ARG002 - for subclasses
        """After ``current`` replaced ``previous``: hand over state, stop the old one."""
        previous.retire()

    def deployment(self) -> Any:
        """The version serving now; 503 ``model-unavailable`` for an optional model not loaded."""
        if self.current is None:
            raise RequestRejected(
                503,
                "model-unavailable",
                "Model unavailable",
                detail="this model could not be loaded; the others are served",
                headers={"Retry-After": _UNAVAILABLE_RETRY_S},
            )
        return self.current

    @property
    def version(self) -> str:
        """The serving version's, or the handler class's while nothing is loaded."""
        return str(self.current.version) if self.current is not None else str(self.cls.version)

    async def reload(
        self, *, trigger: str, principal: str | None = None, request_id: str | None = None
    ) -> Reloaded:
        """Load the model again beside the running one and swap if, and only if, it all passed.

        Lock, signature, formats, ``load`` and ``warmup`` run in a worker thread while
        the current version keeps serving; any failure is logged, audited and re-raised,
        and changes nothing. A model change is never unrecorded: when the audit log
        cannot be written (and ``[audit] on_write_error`` is ``refuse``) the reload is
        refused before anything is loaded, and the swap happens only after its record
        was written. Only model files are loaded again: when the handler's source changed
        since start, a warning says that the old code keeps running until a restart.
        Returns the previous deployment (None for an optional model that was not
        loaded), the new one and the handler code's state.
        """
        log = get_logger()
        where = {"trigger": trigger, "request_id": request_id, "key_id": principal}
        changed = await asyncio.to_thread(self.source.changed)
        if changed:
            log.warning(
                "the handler's code changed since start; reload swaps model files only: "
                "restart to run the new code",
                model=self.name,
                files=changed,
                **where,
            )
        async with self._reload_lock:
            kept = self.current
            kept_revision = kept.revision if kept is not None else "nothing"
            self.audit.check_writable()
            try:
                loaded = await asyncio.to_thread(self._load)
            except Exception as exc:
                log.exception(
                    "model reload refused", model=self.name, kept_revision=kept_revision, **where
                )
                detail = f"{type(exc).__name__}; {kept_revision} kept"
                self._audit_reload("reload-refused", detail, where)
                raise
            current = self._deploy(loaded)
            self.audit.admin(  # before the swap: raises AuditUnavailable, and nothing changes
                action="reload",
                principal=principal,
                request_id=request_id,
                trigger=trigger,
                model=self.name,
                detail=f"{kept_revision} -> {current.revision}",
            )
            previous, self.current = kept, current
            if previous is not None:
                self._swapped(previous, current)
            else:
                self._started(loaded)
        self.metrics.serving(model=self.name, version=current.version, revision=current.revision)
        log.info(
            "model reloaded",
            model=self.name,
            model_version=current.version,
            model_revision=current.revision,
            previous_revision=kept_revision,
            **where,
        )
        return Reloaded(previous, current, self.source.state(changed))

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
        if self.current is not None:
            self.current.close()


class ServingState(ServedModel):
    """One ``ss.Model`` handler served on ``/v1``: schema, output policies, defenses."""

    current: Deployment | None

    def __init__(
        self,
        cls: type[Model[Any, Any]],
        loaded: LoadedModel | None,
        settings: Settings,
        model_settings: ModelSettings,
        metrics: Metrics,
        *,
        table: str = "[model]",
    ) -> None:
        super().__init__(cls, settings, model_settings, metrics, table=table)
        self.schema = ModelSchema(
            cls.input_type, cls.output_type, max_instances=settings.server.max_instances
        )
        where = f"{cls.__module__}.{cls.__qualname__}"
        self.policies = OutputPolicies(cls.output_type, model_settings.output, where=where)
        self._start(loaded)

    def deployment(self) -> Deployment:
        """The version serving now; 503 ``model-unavailable`` for an optional model not loaded."""
        current: Deployment = super().deployment()
        return current

    def _load(self) -> LoadedModel:
        return load_model(self.cls, self.settings, self.model_settings)

    def _started(self, loaded: LoadedModel) -> None:
        """One start-up line saying which model defenses run; a warning for full scores."""
        log = get_logger()
        if loaded.no_features is not None:
            log.info(
                "model defenses that need a feature view are off "
                "(input guard, drift, extraction detection)",
                model=self.name,
                reason=loaded.no_features,
            )
        defenses = self.deployment().defenses
        default = self.policies.default
        log.info(
            "model defenses",
            model=self.name,
            output_policy=default.policy if default is not None else "none (no score fields)",
            role_policies=dict(self.model_settings.output.roles) or None,
            guard=defenses.mode if defenses.guard is not None else "off",
            drift="on" if defenses.drift is not None else "off",
            extraction=defenses.action if defenses.extraction is not None else "off",
            profile_features=len(loaded.profile.features) if loaded.profile else None,
        )
        if default is not None and default.policy == "full":
            log.warning(
                'every caller receives full scores (output policy = "full"): '
                "model inversion and extraction are cheaper",
                model=self.name,
                setting=f"{self.table[1:-1]}.output.policy",
            )

    def _swapped(self, previous: Deployment, current: Deployment) -> None:
        current.defenses.take_over(previous.defenses)
        previous.retire()

    def _deploy(self, loaded: LoadedModel) -> Deployment:
        defenses = Defenses(
            FeatureSource.of(loaded.instance, has_view=loaded.no_features is None),
            loaded.profile,
            self.model_settings,
            metrics=self.metrics,
            audit=lambda: self.audit,
            limiter=lambda: self.limiter,
        )
        return Deployment(loaded, self.schema, self.settings, self.model_settings, defenses)

    @property
    def runner(self) -> InferenceRunner:
        """The current deployment's runner."""
        return self.deployment().runner


class ServedModels:
    """Every model one app serves, by name, and the readiness of the whole server.

    The server is ready while it accepts requests and every model that is not optional
    is loaded. Each model keeps its own inference thread, batching, defenses, output
    policies and reload; metrics, the audit log and the limiter are shared.
    """

    def __init__(self, states: list[ServedModel], metrics: Metrics) -> None:
        self.by_name: dict[str, ServedModel] = {state.name: state for state in states}
        self.metrics = metrics
        self.accepting = True
        self._openapi: dict[tuple[tuple[str, str, str], ...], bytes] = {}

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.by_name.values())

    def get(self, name: str) -> ServedModel | None:
        """The served model ``name``, or None."""
        return self.by_name.get(name)

    @property
    def ready(self) -> bool:
        """Accepting requests, and every model that is not optional is loaded."""
        return self.accepting and all(
            state.current is not None for state in self if not state.optional
        )

    def share(self, audit: AuditLog, limiter: RateLimiter) -> None:
        """Give every model the app's audit log and limiter."""
        self.audit, self.limiter = audit, limiter
        for state in self:
            state.audit, state.limiter = audit, limiter

    def openapi_body(self, principal: Principal) -> bytes:
        """The OpenAPI document of the models ``principal`` may use, as its roles see them.

        Kept per combination of visible models and output policies: at most
        ``_OPENAPI_KEPT`` documents (the oldest one goes first).
        """
        mine = [state for state in self if principal.may_use(state.name)]
        visible = [state for state in mine if isinstance(state, ServingState)]
        graphs, revisions = [], []
        for state in mine:  # tensor models, once loaded: the document describes their graphs
            if not isinstance(state, ServingState) and state.current is not None:
                graph = state.current.instance
                graphs.append(TensorDoc(state.name, state.version, graph.inputs, graph.outputs))
                revisions.append(state.current.revision)  # a reload may bring another graph
        views = [state.policies.for_roles(principal.roles) for state in visible]
        key = tuple(
            (state.name, state.version, view.policy if view is not None else "")
            for state, view in zip(visible, views, strict=True)
        ) + tuple(
            (graph.name, revision, "tensors")
            for graph, revision in zip(graphs, revisions, strict=True)
        )
        body = self._openapi.get(key)
        if body is None:
            docs = [
                ModelDoc(state.name, state.version, state.schema, view)
                for state, view in zip(visible, views, strict=True)
            ]
            named = [(doc.name, doc.version) for doc in docs]
            document = with_tensors(openapi_document(docs), named, graphs)
            body = msgspec.json.encode(document)
            if len(self._openapi) >= _OPENAPI_KEPT:
                del self._openapi[next(iter(self._openapi))]
            self._openapi[key] = body
        return body

    async def reload_all(self, *, trigger: str) -> None:
        """Reload each model in turn, each verified before its swap; one refused keeps the rest."""
        for state in self:
            with contextlib.suppress(Exception):  # refused reloads are logged and audited
                await state.reload(trigger=trigger)

    def close(self) -> None:
        """Shutdown: every model finishes its queued work and stops its thread."""
        for state in self:
            state.close()
