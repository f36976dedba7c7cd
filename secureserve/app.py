"""``create_app``: the served models, the routes of DESIGN.md, and the middleware around them.

The request path, outermost first::

    RequestContext   request id, security headers, problem+json for any error, access log
    HttpsOnly        403 for a scope that did not arrive over TLS
    InFlightLimit    at most max_in_flight requests at once (503 + Retry-After)
    Authentication   bearer key (and client certificate under mTLS) -> principal
    Router           /v1/models/{name}:predict -> role -> content type -> body limits
                     -> strict decode -> inference queue -> validated, encoded output

RequestContext is the only error boundary: Starlette's own two exception layers
(``ServerErrorMiddleware``, ``ExceptionMiddleware``) are left out of the stack, as the
router's 404 and 405 reach RequestContext as ``HTTPException`` and are answered there.

There is no plaintext mode: the app refuses any request whose scope is not
``https`` (``secureserve run`` only ever listens with TLS; a service that mounts
this app must terminate TLS itself or re-encrypt to it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import structlog
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from secureserve import endpoints, v2
from secureserve.access import build_access
from secureserve.config import ModelSettings, Settings, check_settings, resolve_paths
from secureserve.docs_page import DOCS_EXTRA, DocsPage, load_assets
from secureserve.errors import ArtifactError, ConfigError, LoadError, SecureServeError
from secureserve.keys import KeyStore
from secureserve.logs import access_log, configure_logging, get_logger
from secureserve.metrics import Metrics
from secureserve.middleware.authentication import Authentication
from secureserve.middleware.context import RequestContext
from secureserve.middleware.https import HttpsOnly
from secureserve.middleware.inflight import InFlightLimit
from secureserve.model import Model
from secureserve.serving import LoadedModel, ServedModel, ServedModels, ServingState, load_model
from secureserve.tensor_model import TensorModel
from secureserve.tensor_serving import LoadedTensor, TensorState, load_tensor_model

#: A handler: a ``Model`` or ``TensorModel`` subclass, or an instance of one.
Handler = Model[Any, Any] | type[Model[Any, Any]] | TensorModel | type[TensorModel]

__all__ = ["create_app"]

_PREDICT: Final = "/v1/models/{name}:predict"
_PREDICT_PREFIX: Final = "/v1/models/"
_PREDICT_SUFFIX: Final = ":predict"


def create_app(
    model: Handler | Mapping[str, Handler],
    *,
    config: Settings | None = None,
    keys: KeyStore | None = None,
    audit_key: bytes | None = None,
    dev: bool = False,
) -> Starlette:
    """Load ``model`` and return the ASGI app that serves it.

    ``model`` is one handler (class or instance) for ``[model]``, or a mapping of served
    name to handler for the ``[models.<name>]`` tables of several models (each name the
    handler class's ``name``). ``config`` defaults to the built-in defaults; ``keys``
    defaults to the key file named by ``[auth] keys_file``; ``audit_key`` to ``[audit]
    digest_key_file`` (or a key that lives only in this process, with a warning).
    ``dev`` is local development (``secureserve run --dev``): the interactive API page
    at ``/docs`` (public page, authenticated API), console logs unless ``[logging]
    format`` says otherwise. Raises ``ConfigError`` or ``ArtifactError`` before anything
    is served if a model cannot be loaded (unless it is optional: then it is logged and
    not ready).
    """
    settings = resolve_paths(config or Settings())
    check_settings(settings)
    register_url_convertor("model", _ModelName())
    if not structlog.is_configured():
        log_format = settings.logging.format or ("console" if dev else "json")
        configure_logging(settings.logging.level, log_format=log_format)
    log = get_logger()
    metrics = Metrics()
    models = ServedModels(
        [
            _served(name, handler, settings, model_settings, metrics)
            for name, (handler, model_settings) in _handlers(model, settings).items()
        ],
        metrics,
    )
    access = build_access(
        settings,
        logger=log,
        keys=keys,
        audit_key=audit_key,
        model_limits={state.name: state.model_settings.limits for state in models},
    )
    models.share(access.audit, access.limiter)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        models.accepting = True
        for state in models:
            if state.current is not None:
                log.info(
                    "model ready",
                    model=state.name,
                    model_version=state.current.version,
                    model_revision=state.current.revision,
                )
        try:
            yield
        finally:
            models.accepting = False
            models.close()
            await access.limiter.aclose()
            access.audit.close()

    app = _App(
        routes=[
            Route(_PREDICT, endpoints.Predict(models), methods=["POST"]),
            Route("/v1/models/{name}:explain", endpoints.Explain(models), methods=["POST"]),
            Route("/v1/models/{name}:reload", endpoints.reload, methods=["POST"]),
            Route("/v1/models", endpoints.list_models, methods=["GET"]),
            Route("/v1/models/{name:model}", endpoints.model_metadata, methods=["GET"]),
            Route("/v1/models/{name:model}/drift", endpoints.drift, methods=["GET"]),
            Route("/v1/models/{name:model}/principals", endpoints.principals, methods=["GET"]),
            Route(
                "/v1/models/{name:model}/principals/{handle:model}:clear",
                endpoints.clear_principal,
                methods=["POST"],
            ),
            Route("/openapi.json", endpoints.openapi, methods=["GET"]),
            Route("/metrics", endpoints.metrics, methods=["GET"]),
            Route("/healthz", endpoints.healthz, methods=["GET"]),
            Route("/readyz", endpoints.readyz, methods=["GET"]),
            # the Open Inference Protocol, when a tensor model is served
            *(v2.routes(models) if any(isinstance(s, TensorState) for s in models) else ()),
        ],
        middleware=[
            Middleware(
                RequestContext,
                logger=log,
                access=access_log(),
                metrics=metrics,
                audit=access.audit,
                trusted_proxies=settings.server.trusted_proxies,
            ),
            Middleware(HttpsOnly),
            Middleware(InFlightLimit, limit=settings.server.max_in_flight),
            *(_docs_page(log) if dev else ()),  # before authentication: a browser sends no key
            Middleware(
                Authentication,
                authenticator=access.authenticator,
                require_client_cert=settings.tls.client_ca is not None,
                limiter=access.limiter,
                trusted_proxies=settings.server.trusted_proxies,
            ),
        ],
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a redirect would echo the Host header back
    app.state.models = models
    return app


def _handlers(
    model: Handler | Mapping[str, Handler], settings: Settings
) -> dict[str | None, tuple[Handler, ModelSettings]]:
    """Each handler with its settings, by served name (None: ``[model]``, named by its class)."""
    served = settings.served()
    if not isinstance(model, Mapping):
        if settings.models:
            raise ConfigError(
                f"these settings serve several models ([models.{', '.join(settings.models)}]): "
                "pass create_app a mapping of each name to its handler."
            )
        return {None: (model, settings.model)}
    missing = sorted(set(settings.models) - set(model))
    extra = sorted(set(model) - set(settings.models))
    if missing or extra:
        raise ConfigError(
            "the handlers and the [models.<name>] tables must name the same models: "
            + "; ".join(
                part
                for part in (
                    f"no handler for {', '.join(missing)}" if missing else "",
                    f"no [models.<name>] table for {', '.join(extra)}" if extra else "",
                )
                if part
            )
            + "."
        )
    return {name: (model[name], served[name]) for name in settings.models}


def _served(
    name: str | None,
    handler: Handler,
    settings: Settings,
    model_settings: ModelSettings,
    metrics: Metrics,
) -> ServedModel:
    """One model loaded (or, if optional and it fails, logged and left not ready)."""
    cls = handler if isinstance(handler, type) else type(handler)
    table = settings.table(name)
    if name is not None and getattr(cls, "name", None) != name:
        raise ConfigError(
            f"{table} handler {cls.__module__}.{cls.__qualname__} serves a model named "
            f"{getattr(cls, 'name', None)!r}: the table name is the served name, so name the "
            f"table after the class's name, or set name = {name!r} on the class (a subclass "
            "can rename a handler served twice)."
        )
    try:
        loaded: LoadedModel | LoadedTensor | None
        if issubclass(cls, TensorModel):
            loaded = load_tensor_model(cls, settings, model_settings, table=table)
        else:
            loaded = load_model(handler, settings, model_settings)  # type: ignore[arg-type]
    except SecureServeError as exc:
        # optional covers the model's files and its handler failing, never the settings
        if not model_settings.optional or not isinstance(exc, (ArtifactError, LoadError)):
            get_logger().error("model failed to load", model=name or cls.name, table=table)
            raise
        get_logger().exception(
            "optional model failed to load: serving the others without it",
            model=name,
            setting=f"{table[1:-1]}.optional",
        )
        loaded = None  # logged with its traceback; the model is not ready
    if issubclass(cls, TensorModel):
        return TensorState(cls, loaded, settings, model_settings, metrics, table=table)  # type: ignore[arg-type]
    return ServingState(cls, loaded, settings, model_settings, metrics, table=table)  # type: ignore[arg-type]


def _docs_page(log: Any) -> tuple[Middleware]:
    """The interactive API page of ``--dev``; a warning when Swagger UI is not installed."""
    assets = load_assets()
    if assets is None:
        log.warning(
            "the interactive API page (/docs) needs Swagger UI's files; /docs says so until "
            "they are installed",
            install=DOCS_EXTRA,
        )
    else:
        log.info("interactive API page at /docs (development only: the page needs no key)")
    return (Middleware(DocsPage, assets=assets),)


class _ModelName(StringConvertor):
    """A model name in a path: a segment without ``:``.

    So ``GET /v1/models/iris:predict`` belongs to the predict route (405, ``Allow: POST``)
    instead of asking for the metadata of a model named ``iris:predict``.
    """

    regex = "[^/:]+"


class _App(Starlette):
    """Starlette whose middleware stack is ours alone: RequestContext answers every error.

    Starlette wraps the user middleware in ``ServerErrorMiddleware`` and
    ``ExceptionMiddleware``. Here every exception, the router's ``HTTPException`` (404,
    405 with ``Allow``) included, already becomes a problem response in RequestContext,
    so those layers would only cost every request two more frames and a ``Request``
    (about 2 % of the app's CPU, docs/performance.md), and ``debug`` would have a
    traceback page to show. RequestContext also clears the exception handlers a service
    that mounts this app leaves in the scope, so they never answer for it. An exception
    handler added to this app could never run: it is refused rather than ignored.
    """

    def add_exception_handler(
        self,
        exc_class_or_status_code: int | type[Exception],  # noqa: ARG002 - refused whatever it is
        handler: Any,  # noqa: ARG002
    ) -> None:
        """Refused: see the class docstring."""
        raise _no_handlers()

    def build_middleware_stack(self) -> ASGIApp:
        """The user middleware around the router, outermost first; nothing else."""
        if self.exception_handlers:
            raise _no_handlers()
        first = self.router.routes[0] if self.router.routes else None
        app: ASGIApp = self.router
        if isinstance(first, Route) and first.path == _PREDICT:  # else the router decides
            app = _Dispatch(self.router, first)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


class _Dispatch:
    """The router, with its first route, ``POST /v1/models/{name}:predict``, found first.

    Every prediction goes through the router's route objects, a regex and two frames
    before reaching its endpoint; here a predict request is recognised by comparing
    strings, as the router would match it: the route path Starlette matches (the same
    function), ``/v1/models/`` + a name of at least one character without ``/`` (the
    route's ``[^/]+``) + ``:predict``, and ``POST``, the route's only method. Its
    ``path_params``, ``endpoint`` and ``route`` are set as the router sets them. It is
    only used while that route is the router's first. Anything else,
    including paths the regex would match in ways this does not (``$`` matches before a
    final newline), goes to the router as before. tests/test_app.py checks both
    against each other on hostile paths.
    """

    def __init__(self, router: Router, predict: Route) -> None:
        self.router = router
        self.route = predict
        self.predict = predict.app
        self.endpoint = predict.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and scope["method"] == "POST":
            path = get_route_path(scope)
            if path.startswith(_PREDICT_PREFIX) and path.endswith(_PREDICT_SUFFIX):
                name = path[len(_PREDICT_PREFIX) : -len(_PREDICT_SUFFIX)]
                if name and "/" not in name:
                    params = dict(scope.get("path_params", ()))  # a mount's, as the route
                    params["name"] = name
                    scope["path_params"] = params
                    scope["endpoint"] = self.endpoint
                    scope["route"] = self.route
                    if "router" not in scope:
                        scope["router"] = self.router
                    await self.predict(scope, receive, send)
                    return
        await self.router(scope, receive, send)


def _no_handlers() -> ConfigError:
    return ConfigError(
        "secureserve answers every error itself (problem+json, redacted): exception "
        "handlers cannot be added to its app; add them to your own app's routes"
    )
