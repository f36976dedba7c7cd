"""The Open Inference Protocol v2 routes (KServe v2, Triton's HTTP/REST), for tensor models.

| route | who |
| --- | --- |
| ``GET /v2/health/live``, ``GET /v2/health/ready`` | anyone (the probes) |
| ``GET /v2`` | any principal: the protocol and its extensions, never the package version |
| ``GET /v2/models/{name}[/versions/{v}]`` | a principal that may use the model |
| ``GET /v2/models/{name}[/versions/{v}]/ready`` | a principal that may use the model |
| ``POST /v2/models/{name}[/versions/{v}]/infer`` | role ``predict`` |

Every control of ``/v1`` holds: TLS, authentication, roles, the per-model access list
(any other model is a 404, as if absent), limits charged per row of the batch (the first
dimension), the body limit and ``[server] max_elements`` before anything is decoded,
the audit record before the answer, metrics. A compressed body (``Content-Encoding:
gzip`` or ``deflate``, which tritonclient may send) is inflated with the body limit on
the inflated size (a zip bomb gets 413); any other encoding is 415. Errors are the
project's problem+json, whose ``error`` member the protocol's clients read.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from typing import TYPE_CHECKING, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from secureserve.auth import Principal, require_role
from secureserve.body import read_body
from secureserve.endpoints import answer, healthz, readyz, visible_model
from secureserve.errors import RequestRejected
from secureserve.schema import quote_name
from secureserve.tensor_serving import TensorDeployment, TensorState
from secureserve.tensors import decode_request, encode_response, parse_header_length

if TYPE_CHECKING:
    from secureserve.serving import ServedModels
    from secureserve.tensor_model import TensorModel

__all__ = ["routes"]

_JSON: Final = "application/json"
_encoder: Final = msgspec.json.Encoder()
#: What ``GET /v2`` says: the protocol and its extensions (never the package version).
_SERVER: Final = _encoder.encode(
    {"name": "secureserve", "version": "2", "extensions": ["binary_tensor_data"]}
)
_WBITS: Final = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}
_HEADER_LENGTH: Final = b"inference-header-content-length"
_MEDIA_TYPES: Final = frozenset({b"", b"application/json", b"application/octet-stream"})
#: Bodies larger than this are decoded on a worker thread, off the event loop.
_DECODE_INLINE: Final = 64 * 1024


def routes(models: ServedModels) -> list[Route]:
    """The ``/v2`` routes over ``models`` (each path with and without ``/versions/{v}``)."""
    infer = Infer(models)
    out = [
        Route("/v2/health/live", healthz, methods=["GET"]),
        Route("/v2/health/ready", readyz, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
    ]
    for base in ("/v2/models/{name:model}", "/v2/models/{name:model}/versions/{version:model}"):
        out += [
            Route(base, model_metadata, methods=["GET"]),
            Route(f"{base}/ready", model_ready, methods=["GET"]),
            Route(f"{base}/infer", infer, methods=["POST"]),
        ]
    return out


async def _tensor_model(scope: Scope, models: ServedModels) -> tuple[Principal, TensorState]:
    """The principal and the tensor model the path names, if it may use it; else 404."""
    params = scope["path_params"]
    principal, state = await visible_model(scope, models, params["name"])
    if not isinstance(state, TensorState):
        raise RequestRejected(
            404, "not-found", "Not found", detail="this model is served over /v1, not /v2"
        )
    version = params.get("version")
    if version is not None and version != state.version:
        raise RequestRejected(
            404, "not-found", "Not found", detail=f"this model serves version {state.version}"
        )
    return principal, state


async def server_metadata(request: Request) -> Response:
    """``GET /v2``: the protocol and its extensions."""
    del request
    return Response(_SERVER, media_type=_JSON)


async def model_metadata(request: Request) -> Response:
    """``GET /v2/models/{name}``: the model's tensors, as its graph declares them."""
    _, state = await _tensor_model(request.scope, request.app.state.models)
    instance = state.deployment().instance
    body = {
        "name": state.name,
        "versions": [state.version],
        "platform": "onnxruntime_onnx",
        "inputs": [_spec(spec) for spec in instance.inputs],
        "outputs": [_spec(spec) for spec in instance.outputs],
    }
    return Response(_encoder.encode(body), media_type=_JSON)


async def model_ready(request: Request) -> Response:
    """``GET /v2/models/{name}/ready``: 200 while loaded, 503 ``model-unavailable`` else."""
    _, state = await _tensor_model(request.scope, request.app.state.models)
    state.deployment()
    return Response(_encoder.encode({"name": state.name, "ready": True}), media_type=_JSON)


def _spec(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


class Infer:
    """``POST /v2/models/{name}/infer`` as a plain ASGI app."""

    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authorise, read, decode, check against the graph, infer, answer."""
        principal, state = await _tensor_model(scope, self.models)
        require_role(principal, "predict")
        headers = dict(scope["headers"])  # each header once: RequestContext refuses repeats
        _refuse_browsers(headers)
        state.audit.check_writable()  # no prediction that could not be recorded
        deployment = state.deployment()  # 503 before anything is charged; and held to the end
        deployment.acquire()
        try:
            await self._infer(
                scope,
                receive,
                send,
                principal=principal,
                state=state,
                deployment=deployment,
                headers=headers,
            )
        finally:
            deployment.release()

    async def _infer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        principal: Principal,
        state: TensorState,
        deployment: TensorDeployment,
        headers: dict[bytes, bytes],
    ) -> None:
        info = scope["secureserve"]
        defenses = deployment.defenses
        throttle = await defenses.admit(principal.id)  # 403 if blocked as an extraction
        limiter = state.limiter
        # admitted: one row, body or not
        await limiter.check(principal.id, state.name, throttle=throttle)
        encoding = headers.get(b"content-encoding", b"identity").lower()
        raw = await read_body(
            scope, receive, limit=state.max_body_bytes, deadline_s=state.body_timeout_s
        )
        info.body_read = True
        body = _inflated(raw, encoding, state.max_body_bytes)
        decode = functools.partial(
            decode_request,
            body,
            parse_header_length(headers.get(_HEADER_LENGTH)),
            max_elements=state.settings.server.max_elements,
        )
        # a large body decodes off the event loop: its values are checked one by one
        request = await asyncio.to_thread(decode) if len(body) > _DECODE_INLINE else decode()
        instance = deployment.instance
        rows = instance.check_request(request.inputs, request.datatypes)
        if not 1 <= rows <= state.max_instances:
            raise RequestRejected(
                422,
                "validation",
                "Too many rows" if rows else "No rows",
                detail=f"$.inputs: 1 to {state.max_instances} rows (the first dimension) "
                "per request ([server] max_instances)",
            )
        wanted = _wanted(request.requested, [spec.name for spec in instance.outputs])
        if rows > 1:  # the rest of the batch, or the whole request is refused
            await limiter.check(principal.id, state.name, rows - 1, throttle=throttle)
        info.model_version = deployment.version
        screened = defenses.screen(principal.id, request.inputs, info.request_id)  # or 4xx
        outputs = await deployment.infer(request.inputs, wanted, rows)
        if defenses.wants_labels:  # extraction detection: what each row was answered
            labels = _labels(instance, outputs, rows)
            defenses.after_predict(principal.id, screened, labels, info.loop)
        payload, header_length = encode_response(
            model_name=state.name,
            model_version=deployment.version,
            request_id=request.id,
            outputs=outputs,
            binary=request.wants_binary,
        )
        sent: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
        if header_length is not None:
            sent = (
                (b"content-type", b"application/octet-stream"),
                (_HEADER_LENGTH, str(header_length).encode()),
            )
        await answer(
            send,
            state,
            scope,
            route="infer",
            version=deployment.version,
            body=body,
            payload=payload,
            flagged=screened.flagged if screened is not None else None,
            headers=sent,
        )


def _labels(
    instance: TensorModel, outputs: list[tuple[str, str, Any]], rows: int
) -> list[int] | None:
    """Per row, the class a score output ranks first (extraction detection groups by it).

    The first score output among those computed, if it is ``[rows, classes]``; else None
    (every row in one group).
    """
    scores = instance.score_outputs()
    for name, _, array in outputs:
        if name in scores and array.ndim == 2:  # noqa: PLR2004 - [rows, classes]
            if array.shape[0] != rows or array.shape[1] == 0:
                return None  # not one score row per input row: no grouping
            labels: list[int] = array.argmax(axis=1).tolist()
            return labels
    return None


def _refuse_browsers(headers: dict[bytes, bytes]) -> None:
    """415 for a content type the protocol does not send; 403 for a browser's request.

    tritonclient sends no Content-Type; JSON and binary bodies may say so. A request
    with ``Origin`` or a cross-site ``Sec-Fetch-Site`` comes from a web page: under
    mutual TLS the browser would present its user's certificate for any site's form,
    so such requests are refused rather than run in the user's name.
    """
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if media not in _MEDIA_TYPES:
        raise RequestRejected(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            detail="send application/json, application/octet-stream or no Content-Type",
        )
    fetched_from = headers.get(b"sec-fetch-site", b"none").lower()
    if b"origin" in headers or fetched_from not in (b"none", b"same-origin"):
        raise RequestRejected(
            403,
            "browser-request",
            "Forbidden",
            detail="/v2 infer does not take requests from web pages",
        )


def _wanted(requested: Any, outputs: list[str]) -> list[str]:
    """The outputs to return: those the request names (each one the model has), or all."""
    if not requested:
        return outputs
    names = [item.name for item in requested]
    unknown = [name for name in names if name not in outputs]
    if unknown:
        raise RequestRejected(
            400,
            "validation",
            "Unknown output",
            detail=f"$.outputs: no output named {quote_name(unknown[0])}; "
            f"the model has {', '.join(outputs)}",
        )
    return names


def _inflated(body: bytes, encoding: bytes, limit: int) -> bytes:
    """The body as sent (identity), or inflated within ``limit`` bytes; 413 past it, 415."""
    if encoding == b"identity":
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise RequestRejected(
            415,
            "unsupported-media-type",
            "Unsupported content encoding",
            detail="send the body as it is, or compressed with gzip or deflate",
        )
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise RequestRejected(
            400, "bad-request", "Bad request", detail="the compressed body is not valid"
        ) from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise RequestRejected(
            413,
            "too-large",
            "Request body too large",
            detail=f"the body may be at most {limit} bytes once inflated",
        )
    if not inflater.eof or inflater.unused_data:
        raise RequestRejected(
            400, "bad-request", "Bad request", detail="the compressed body is not valid"
        )
    return inflated
