"""``create_app``: one model, the routes of DESIGN.md, and the middleware around them.

The request path, outermost first::

    RequestContext   request id, security headers, problem+json for any error, access log
    InFlightLimit    at most max_in_flight requests at once (503 + Retry-After)
    Authentication   bearer key (and client certificate under mTLS) -> principal
    Router           /v1/models/{name}:predict -> role -> content type -> body limits
                     -> strict decode -> inference queue -> validated, encoded output

There is no plaintext mode: the app refuses any request whose scope is not
``https`` (``secureserve run`` only ever listens with TLS; a service that mounts
this app must terminate TLS itself or re-encrypt to it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from secureserve import endpoints
from secureserve.access import build_access
from secureserve.config import Settings, check_settings, resolve_paths
from secureserve.keys import KeyStore
from secureserve.logs import access_log, configure_logging, get_logger
from secureserve.middleware.authentication import Authentication
from secureserve.middleware.context import RequestContext
from secureserve.middleware.https import HttpsOnly
from secureserve.middleware.inflight import InFlightLimit
from secureserve.model import Model
from secureserve.problems import as_rejection, problem_response
from secureserve.serving import ServingState, load_model

__all__ = ["create_app"]


def create_app(
    model: Model[Any, Any] | type[Model[Any, Any]],
    *,
    config: Settings | None = None,
    keys: KeyStore | None = None,
    audit_key: bytes | None = None,
) -> Starlette:
    """Load ``model`` and return the ASGI app that serves it.

    ``config`` defaults to the built-in defaults; ``keys`` defaults to the key file
    named by ``[auth] keys_file``; ``audit_key`` to ``[audit] digest_key_file`` (or a
    key that lives only in this process, with a warning). Raises ``ConfigError`` or
    ``ArtifactError`` before anything is served if the model cannot be loaded.
    """
    settings = resolve_paths(config or Settings())
    check_settings(settings)
    register_url_convertor("model", _ModelName())
    if not structlog.is_configured():
        configure_logging(settings.logging.level)
    log = get_logger()
    cls = model if isinstance(model, type) else type(model)
    state = ServingState(cls, load_model(model, settings), settings)
    access = build_access(settings, logger=log, keys=keys, audit_key=audit_key)
    state.audit = access.audit
    state.limiter = access.limiter

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state.ready = True
        current = state.current
        log.info(
            "model ready",
            model=state.name,
            model_version=current.version,
            model_revision=current.revision,
        )
        try:
            yield
        finally:
            state.ready = False
            state.close()
            await access.limiter.aclose()
            access.audit.close()

    app = Starlette(
        routes=[
            Route("/v1/models/{name}:predict", endpoints.Predict(state), methods=["POST"]),
            Route("/v1/models/{name}:explain", endpoints.Explain(state), methods=["POST"]),
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
        ],
        middleware=[
            Middleware(
                RequestContext,
                logger=log,
                access=access_log(),
                metrics=state.metrics,
                audit=access.audit,
                trusted_proxies=settings.server.trusted_proxies,
            ),
            Middleware(HttpsOnly),
            Middleware(InFlightLimit, limit=settings.server.max_in_flight),
            Middleware(
                Authentication,
                authenticator=access.authenticator,
                require_client_cert=settings.tls.client_ca is not None,
                limiter=access.limiter,
                trusted_proxies=settings.server.trusted_proxies,
            ),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a redirect would echo the Host header back
    app.state.serving = state
    return app


class _ModelName(StringConvertor):
    """A model name in a path: a segment without ``:``.

    So ``GET /v1/models/iris:predict`` belongs to the predict route (405, ``Allow: POST``)
    instead of asking for the metadata of a model named ``iris:predict``.
    """

    regex = "[^/:]+"


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as problem+json, like every other error."""
    return problem_response(as_rejection(exc), request.scope["secureserve"].request_id)
