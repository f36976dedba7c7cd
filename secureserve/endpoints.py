"""The routes of DESIGN.md.

Each model route checks, in order: the model is visible to the principal (else
404, as if it did not exist), the role (else 403), then the request itself.

``/healthz`` and ``/readyz`` are public and say nothing beyond their status.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from secureserve.audit import RequestEntry
from secureserve.auth import Principal, require_role
from secureserve.body import check_json_content_type, read_body
from secureserve.errors import RequestRejected
from secureserve.explain import unavailable
from secureserve.metrics import CONTENT_TYPE
from secureserve.openapi import (
    ArtifactInfo,
    ModelList,
    ModelMetadata,
    ModelSummary,
    ReloadResult,
)
from secureserve.serving import RELOAD_NOTE, ServingState

if TYPE_CHECKING:
    from secureserve.serving import ServedModel, ServedModels

__all__ = [
    "Explain",
    "Predict",
    "answer",
    "clear_principal",
    "drift",
    "healthz",
    "list_models",
    "metrics",
    "model_metadata",
    "openapi",
    "principals",
    "readyz",
    "reload",
    "visible_model",
]

_JSON: Final = "application/json"
_encoder: Final = msgspec.json.Encoder()
_HEALTHY: Final = b'{"status":"ok"}'
_READY: Final = b'{"status":"ready"}'
_NOT_READY: Final = b'{"status":"not ready"}'


async def _visible_model(
    scope: Scope, models: ServedModels, name: str
) -> tuple[Principal, ServingState]:
    """The principal and the ``/v1`` model ``name``, if it may see it; else 404.

    A tensor model (``ss.TensorModel``) it may see is a 404 too, saying it speaks ``/v2``.
    """
    principal, state = await visible_model(scope, models, name)
    if not isinstance(state, ServingState):
        raise RequestRejected(
            404,
            "not-found",
            "Not found",
            detail="this model is served over /v2, the Open Inference Protocol",
        )
    return principal, state


async def visible_model(
    scope: Scope, models: ServedModels, name: str
) -> tuple[Principal, ServedModel]:
    """The principal and the model ``name``, if it may see it; else 404, as if absent.

    A miss costs one prediction from the principal's own windows (not a per-model
    window named by the made-up name), so probing names is throttled like predicting.
    """
    principal: Principal = scope["secureserve.principal"]
    state = models.get(name)
    if state is None or not principal.may_use(name):
        await models.limiter.check(principal.id, None)
        raise RequestRejected(404, "not-found", "Not found")
    return principal, state


def _models(request: Request) -> ServedModels:
    served: ServedModels = request.app.state.models
    return served


class Predict:
    """``POST /v1/models/{name}:predict`` as a plain ASGI app (the hot path)."""

    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authorise, read, decode, predict, answer; any refusal raises ``RequestRejected``."""
        info = scope["secureserve"]
        principal, state = await _visible_model(scope, self.models, scope["path_params"]["name"])
        require_role(principal, "predict")
        state.audit.check_writable()  # no prediction that could not be recorded
        defenses = state.deployment().defenses
        throttle = await defenses.admit(principal.id)  # 403 if blocked as an extraction
        limiter = state.limiter
        # admitted: one prediction, body or not
        await limiter.check(principal.id, state.name, throttle=throttle)
        check_json_content_type(scope)
        body = await read_body(
            scope, receive, limit=state.max_body_bytes, deadline_s=state.body_timeout_s
        )
        info.body_read = True  # the connection may carry another request after this one
        instances = state.schema.decode_request(body)
        if len(instances) > 1:  # the rest of what it asks for, or the whole request is refused
            await limiter.check(principal.id, state.name, len(instances) - 1, throttle=throttle)
        deployment = state.deployment()  # this request finishes on this version, reload or not
        info.model_version = deployment.version
        defenses = deployment.defenses
        screened = defenses.screen(principal.id, instances, info.request_id)  # or 422
        deployment.acquire()
        try:
            payload, labels = await deployment.runner.submit_labelled(
                instances,
                state.policies.for_roles(principal.roles),
                want_labels=defenses.wants_labels,
                loop=info.loop,
            )
        finally:
            deployment.release()
        defenses.after_predict(principal.id, screened, labels, info.loop)
        flagged = screened.flagged if screened is not None else None
        await answer(
            send,
            state,
            scope,
            route="predict",
            version=deployment.version,
            body=body,
            payload=payload,
            flagged=flagged,
        )


class Explain:
    """``POST /v1/models/{name}:explain`` (role ``explain``): attributions per feature.

    The same body as predict. Charged on ``[limits] explain_per_principal`` (explained
    instances) and on the quota (the model evaluations run); 409 ``explain-unavailable``
    when the model cannot explain (no profile, no feature view, nothing to explain).
    """

    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authorise, read, decode, explain, answer; any refusal raises ``RequestRejected``."""
        info = scope["secureserve"]
        principal, state = await _visible_model(scope, self.models, scope["path_params"]["name"])
        require_role(principal, "explain")
        state.audit.check_writable()
        deployment = state.deployment()
        explainer, defenses = deployment.explainer, deployment.defenses
        if explainer.why_not is not None:
            raise unavailable(explainer.why_not)
        throttle = await defenses.admit(principal.id)  # blocked or throttled like predict
        check_json_content_type(scope)
        body = await read_body(
            scope, receive, limit=state.max_body_bytes, deadline_s=state.body_timeout_s
        )
        info.body_read = True
        instances = state.schema.decode_request(body)
        limiter = state.limiter
        most = limiter.explain_amount
        if most is not None and len(instances) > most:  # it could never be served
            raise RequestRejected(
                422,
                "validation",
                "Too many instances to explain",
                detail=f"$.instances: explain at most {most} instances per request "
                "([limits] explain_per_principal)",
            )
        known = explainer.evaluations(len(instances))  # None: counted as they run
        await limiter.check_explain(
            principal.id, state.name, len(instances), known or 0, throttle=throttle
        )
        info.model_version = deployment.version
        screened = defenses.screen(principal.id, instances, info.request_id)  # or 422
        deployment.acquire()
        try:
            explanations, labels, evaluations = await explainer.explain(
                deployment.runner, instances, state.policies.for_roles(principal.roles)
            )
        finally:
            deployment.release()
        if known is None:
            await limiter.check_explain(principal.id, state.name, 0, evaluations)
        defenses.after_predict(principal.id, screened, labels, info.loop)
        payload = _encoder.encode({"explanations": explanations})
        await answer(
            send,
            state,
            scope,
            route="explain",
            version=deployment.version,
            body=body,
            payload=payload,
        )


async def answer(
    send: Send,
    state: ServedModel,
    scope: Scope,
    *,
    route: str,
    version: str,
    body: bytes,
    payload: bytes,
    flagged: tuple[int, ...] | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),),
) -> None:
    """Record the answer in the audit log, then send it: no answer leaves unrecorded."""
    info = scope["secureserve"]
    principal: Principal = scope["secureserve.principal"]
    audit = state.audit
    await audit.request_async(
        RequestEntry(
            principal=principal.id,
            roles=sorted(principal.roles),
            request_id=info.request_id,
            route=route,
            model=state.name,
            model_version=version,
            decision="allowed",
            status=200,
            latency_ms=(time.perf_counter() - info.start) * 1000,
            input_digest=audit.digest(body),
            output_digest=audit.digest(payload),
            flagged=flagged,
        ),
        info.loop,
    )
    info.audited = True
    sent = [*headers, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": sent})
    await send({"type": "http.response.body", "body": payload})


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: only the models this principal may use."""
    principal: Principal = request.scope["secureserve.principal"]
    visible = [
        ModelSummary(state.name, state.version, ready=state.current is not None)
        for state in _models(request)
        if principal.may_use(state.name)
    ]
    return Response(_encoder.encode(ModelList(visible)), media_type=_JSON)


async def model_metadata(request: Request) -> Response:
    """``GET /v1/models/{name}`` (role ``admin``): version, artifact hashes, limits.

    This route, reload and the defenses' admin routes below serve tensor models too.
    """
    name = request.path_params["name"]
    principal, state = await visible_model(request.scope, _models(request), name)
    require_role(principal, "admin")
    current = state.current
    request.scope["secureserve"].model_version = state.version
    meta = ModelMetadata(
        name=state.name,
        version=state.version,
        revision=current.revision if current is not None else "not loaded",
        max_instances=state.max_instances,
        artifacts=[
            ArtifactInfo(r.name, r.sha256, r.size, r.format)
            for r in (current.artifacts.values() if current is not None else ())
        ],
        ready=current is not None,
    )
    return Response(_encoder.encode(meta), media_type=_JSON)


async def reload(request: Request) -> Response:
    """``POST /v1/models/{name}:reload`` (role ``admin``): verified load, then an atomic swap.

    If anything fails the running version keeps serving; the client gets a problem
    without details, the log gets the reason. Model files only: ``handler_code`` in the
    answer says when the handler's source changed since start (a restart runs it).
    """
    name = request.path_params["name"]
    principal, state = await visible_model(request.scope, _models(request), name)
    require_role(principal, "admin")
    info = request.scope["secureserve"]
    try:
        reloaded = await state.reload(
            trigger="http", principal=principal.id, request_id=info.request_id
        )
    except RequestRejected:  # the audit log cannot record it: 503 audit-unavailable
        raise
    except Exception as exc:
        raise RequestRejected(
            500,
            "reload-failed",
            "Model reload failed",
            detail="the new model files were refused; the running version keeps serving",
            log_reason=type(exc).__name__,
        ) from exc
    previous, current = reloaded.previous, reloaded.current
    info.model_version = current.version
    body = ReloadResult(
        name=state.name,
        version=current.version,
        revision=current.revision,
        previous_revision=previous.revision if previous is not None else "not loaded",
        handler_code=reloaded.code,
        note=RELOAD_NOTE,
    )
    return Response(_encoder.encode(body), media_type=_JSON)


async def drift(request: Request) -> Response:
    """``GET /v1/models/{name}/drift`` (role ``admin``): the drift monitor's current window."""
    name = request.path_params["name"]
    principal, state = await visible_model(request.scope, _models(request), name)
    require_role(principal, "admin")
    current = state.deployment()
    request.scope["secureserve"].model_version = current.version
    report = current.defenses.drift_report()
    if report is None:
        raise RequestRejected(
            404,
            "drift-off",
            "Drift monitoring is off for this model",
            detail="it needs a reference profile (secureserve profile) and the model's drift "
            "settings enabled = true",
        )
    return Response(_encoder.encode(report), media_type=_JSON)


_PAGE_DEFAULT: Final = 100
_PAGE_MAX: Final = 1000


async def principals(request: Request) -> Response:
    """``GET /v1/models/{name}/principals`` (role ``admin``): extraction statistics, paged.

    ``offset`` and ``limit`` (at most 1,000) page through the tracked principals, most
    recently seen first; each carries the opaque ``handle`` the clear route takes.
    """
    name = request.path_params["name"]
    principal, state = await visible_model(request.scope, _models(request), name)
    require_role(principal, "admin")
    extraction = state.deployment().defenses.extraction
    if extraction is None:
        raise _extraction_off()
    offset = _query_int(request, "offset", 0, maximum=10_000_000)
    limit = _query_int(request, "limit", _PAGE_DEFAULT, maximum=_PAGE_MAX)
    return Response(_encoder.encode(extraction.page(offset, limit)), media_type=_JSON)


async def clear_principal(request: Request) -> Response:
    """``POST /v1/models/{name}/principals/{handle}:clear`` (role ``admin``, audited).

    Forgets what made the principal suspect (its history and statistics), which ends a
    throttle or a block.
    """
    name = request.path_params["name"]
    principal, state = await visible_model(request.scope, _models(request), name)
    require_role(principal, "admin")
    defenses = state.deployment().defenses
    if defenses.extraction is None:
        raise _extraction_off()
    handle = request.path_params["handle"]
    known, cleared = defenses.clear_target(handle)
    if not known:
        raise RequestRejected(404, "not-found", "Not found")
    state.audit.admin(  # first: an admin action that cannot be recorded does not happen
        action="extraction-cleared",
        principal=principal.id,
        request_id=request.scope["secureserve"].request_id,
        model=state.name,
        detail=f"handle {handle}: " + (cleared[:200] if cleared else "not tracked here"),
    )
    await defenses.clear(handle)
    return Response(_encoder.encode({"cleared": handle}), media_type=_JSON)


def _extraction_off() -> RequestRejected:
    return RequestRejected(
        404,
        "extraction-off",
        "Extraction detection is off for this model",
        detail="it needs the model's feature view and its extraction action other than off",
    )


def _query_int(request: Request, name: str, default: int, *, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) > maximum:  # noqa: PLR2004
        raise RequestRejected(
            422,
            "validation",
            "Query parameter out of range",
            detail=f"{name}: a whole number from 0 to {maximum}",
        )
    return int(raw)


#: The documents of mounted apps, with ``servers`` added, by (ASGI root path, the
#: document as cached per principal view): at most ``_MOUNTED_KEPT``, oldest out first.
_MOUNTED_KEPT: Final = 16
_mounted_documents: dict[tuple[str, bytes], bytes] = {}


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the models this principal may use (none: 404, as if absent).

    Under a mount point (``Mount("/ml", app)``, or a server's root path) the document's
    ``servers`` is the ASGI ``root_path``, so that a client generated from it calls
    ``/ml/v1/...``; at the root the document has no ``servers`` (OpenAPI's default: ``/``).
    """
    models = _models(request)
    principal: Principal = request.scope["secureserve.principal"]
    if not any(principal.may_use(state.name) for state in models):
        await models.limiter.check(principal.id, None)
        raise RequestRejected(404, "not-found", "Not found")
    body = models.openapi_body(principal)
    root_path: str = request.scope.get("root_path", "")
    if root_path:
        key = (root_path, body)
        mounted = _mounted_documents.get(key)
        if mounted is None:
            document = msgspec.json.decode(body)
            with_servers = {}
            for name, value in document.items():
                with_servers[name] = value
                if name == "info":
                    with_servers["servers"] = [{"url": root_path}]
            mounted = msgspec.json.encode(with_servers)
            if len(_mounted_documents) >= _MOUNTED_KEPT:
                del _mounted_documents[next(iter(_mounted_documents))]
            _mounted_documents[key] = mounted
        body = mounted
    return Response(body, media_type=_JSON)


async def metrics(request: Request) -> Response:
    """``GET /metrics`` (role ``metrics``): Prometheus text format."""
    models = _models(request)
    require_role(request.scope["secureserve.principal"], "metrics")
    for state in models:  # gauges computed when read, not per request
        defenses = getattr(state.current, "defenses", None)
        if defenses is not None:
            defenses.refresh_metrics()
    return Response(models.metrics.render(), media_type=CONTENT_TYPE)


async def healthz(_: Request) -> Response:
    """Liveness: the process answers."""
    return Response(_HEALTHY, media_type=_JSON)


async def readyz(request: Request) -> Response:
    """Readiness: every model that is not optional is loaded, and no shutdown has begun."""
    if _models(request).ready:
        return Response(_READY, media_type=_JSON)
    return Response(_NOT_READY, status_code=503, media_type=_JSON, headers={"Retry-After": "1"})
