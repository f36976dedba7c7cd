"""OpenAPI 3.1 for the served model, generated from its msgspec types once per app.

The document describes the real server: every route, and on each route every status it
may answer, with its media type, body schema and headers (``X-Request-ID`` on every
response, ``Retry-After`` on 429 and 503, ``X-Model-Version`` where a model version
answered). ``tests/test_openapi_fuzz.py`` holds the server to it with schemathesis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, NamedTuple

import msgspec

from secureserve.drift import DriftReport
from secureserve.extraction import PrincipalPage
from secureserve.metrics import CONTENT_TYPE as METRICS_MEDIA_TYPE
from secureserve.outputs import OutputView
from secureserve.problems import PROBLEM_MEDIA_TYPE, Problem
from secureserve.schema import ModelSchema

__all__ = [
    "JSON",
    "ArtifactInfo",
    "ModelDoc",
    "ModelList",
    "ModelMetadata",
    "ModelSummary",
    "ReloadResult",
    "admin_paths",
    "document_info",
    "ok",
    "openapi_document",
    "responses",
]


class ModelSummary(msgspec.Struct, frozen=True):
    """One entry of ``GET /v1/models``; ``ready`` is false for an optional model that failed."""

    name: str
    version: str
    ready: bool = True


class ModelList(msgspec.Struct, frozen=True):
    """``GET /v1/models``: the models this principal may use."""

    models: list[ModelSummary]


class ArtifactInfo(msgspec.Struct, frozen=True):
    """A file the model opened, as it was when loaded."""

    name: str
    sha256: str
    size: int
    format: str


class ModelMetadata(msgspec.Struct, frozen=True):
    """``GET /v1/models/{name}`` (admin): version, artifact hashes, schema."""

    name: str
    version: str
    revision: str
    artifacts: list[ArtifactInfo]
    max_instances: int
    openapi: str = "/openapi.json"
    ready: bool = True


class ReloadResult(msgspec.Struct, frozen=True):
    """``POST /v1/models/{name}:reload`` (admin): the version now serving.

    A reload swaps model files only. ``handler_code`` says whether the handler's source
    files changed since start (``changed-restart-needed``: the old code still serves
    until a restart; ``unknown``: no readable source), ``note`` says it in words.
    """

    name: str
    version: str
    revision: str
    previous_revision: str
    handler_code: Annotated[
        Literal["unchanged", "changed-restart-needed", "unknown"],
        msgspec.Meta(
            description="the handler's source files since start: a reload never loads code"
        ),
    ]
    note: str


JSON: Final = "application/json"
_PROBLEM_REF: Final = {"$ref": "#/components/schemas/Problem"}


def _header(description: str, schema: dict[str, Any], *, required: bool) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_SECONDS: Final = {"type": "integer", "minimum": 1}
#: Response headers, in ``components.headers``; responses refer to them by name.
_HEADERS: Final[dict[str, dict[str, Any]]] = {
    "X-Request-ID": _header(
        "the request id, also in the problem body and the server's log line",
        {"type": "string", "pattern": "^[A-Za-z0-9._-]{8,64}$"},
        required=True,
    ),
    "X-Model-Version": _header(
        "the model version that answered", {"type": "string"}, required=True
    ),
    "Retry-After": _header("seconds to wait before retrying", _SECONDS, required=True),
    "WWW-Authenticate": _header(
        "the Bearer challenge (absent when a client certificate is missing under mTLS)",
        {"type": "string"},
        required=False,
    ),
    "RateLimit-Limit": _header(
        "the amount of the limit that refused the request (rates and quotas only)",
        {"type": "integer", "minimum": 1},
        required=False,
    ),
    "RateLimit-Remaining": _header(
        "what is left of that limit (rates and quotas only)",
        {"type": "integer", "minimum": 0},
        required=False,
    ),
    "RateLimit-Reset": _header(
        "seconds until that limit resets (rates and quotas only)", _SECONDS, required=False
    ),
}

#: Every error the server answers, as ``status: (description, headers)``.
_ERRORS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "400": ("malformed JSON, or a request the HTTP parser refuses", ()),
    "401": ("missing or invalid credentials", ("WWW-Authenticate",)),
    "403": ("the credential lacks the role this route needs", ()),
    "404": ("no such model for this credential", ()),
    "409": ("explanations are not available for this model (detail says why)", ()),
    "408": ("headers or body not received in time; the connection is closed", ()),
    "413": ("body too large; the connection is closed", ()),
    "414": ("request target too long; the connection is closed", ()),
    "415": ("the body is not sent as application/json", ()),
    "422": ("body does not match the schema; detail names the field", ()),
    "431": ("too many or too large header fields; the connection is closed", ()),
    "429": (
        "rate limited, quota spent, or too many failed authentications from this address",
        ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"),
    ),
    "500": ("internal error (details only in the server log)", ()),
    "503": (
        "server busy, or the rate-limit storage or the audit log unavailable",
        ("Retry-After",),
    ),
    "504": ("model did not answer in time", ()),
}
#: What `secureserve run` may answer to any request before it reaches a route.
_CONNECTION: Final = ("400", "408", "414", "431")
#: What every authenticated route may answer, whatever it does.
_AUTHENTICATED: Final = (*_CONNECTION, "401", "429", "500", "503")


def _headers(*names: str) -> dict[str, Any]:
    return {n: {"$ref": f"#/components/headers/{n}"} for n in ("X-Request-ID", *names)}


def ok(description: str, media_type: str, schema: dict[str, Any], *headers: str) -> dict[str, Any]:
    """A 200 response: ``schema`` as ``media_type``, with ``X-Request-ID`` and ``headers``."""
    return {
        "description": description,
        "headers": _headers(*headers),
        "content": {media_type: {"schema": schema}},
    }


def responses(
    success: dict[str, Any], *statuses: str, common: tuple[str, ...] = _AUTHENTICATED
) -> dict[str, Any]:
    """``success`` as 200, then the problem+json responses for ``statuses`` and ``common``."""
    out = {"200": success}
    for status in sorted({*statuses, *common}):
        description, headers = _ERRORS[status]
        out[status] = {
            "description": description,
            "headers": _headers(*headers),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}},
        }
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _status(value: str) -> dict[str, Any]:
    """The schema of the probes' ``{"status": value}``."""
    return {
        "type": "object",
        "properties": {"status": {"const": value}},
        "required": ["status"],
        "additionalProperties": False,
    }


def _query(name: str, description: str, maximum: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": maximum},
    }


def _explanations_schema() -> dict[str, Any]:
    attributions = {
        "anyOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "null"}]
    }
    item = {
        "type": "object",
        "properties": {"prediction": {}, "attributions": attributions},
        "required": ["prediction", "attributions"],
    }
    return {
        "type": "object",
        "properties": {"explanations": {"type": "array", "items": item}},
        "required": ["explanations"],
    }


def _cleared_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"cleared": {"type": "string"}},
        "required": ["cleared"],
    }


def _policy_note(view: OutputView | None) -> str:
    if view is None:
        return "The predictions as the model returns them, validated against their type."
    if view.policy == "label_only":
        return "Labels only: this credential's output policy leaves scores out."
    cut = f"the best {view.top_k} of each score mapping, " if view.policy == "top_k" else ""
    return (
        "Scores as this credential's output policy shows them: "
        f"{cut}rounded to {view.decimals} decimals."
    )


class ModelDoc(NamedTuple):
    """One served model as a caller sees it in the document."""

    name: str
    version: str
    schema: ModelSchema
    view: OutputView | None


def openapi_document(models: Sequence[ModelDoc]) -> dict[str, Any]:
    """The whole OpenAPI document for ``models``, as a dict (encoded once per caller's view).

    Tensor models' ``/v2`` routes are added by :func:`secureserve.openapi_v2.with_tensors`.

    It declares every status, content type and header the server really sends on each
    route (tests/test_openapi_fuzz.py checks the server against it with schemathesis),
    and each model's predictions as a caller under its output policy ``view`` receives
    them. The schemas of every model are named together, so two models' types of the
    same name never collide.
    """
    types: list[Any] = []
    for model in models:
        types += [model.schema.request_type, model.schema.response_type_for(model.view)]
    shared = (Problem, ModelList, ModelMetadata, ReloadResult, DriftReport, PrincipalPage)
    schemas, components = msgspec.json.schema_components(
        (*types, *shared), ref_template="#/components/schemas/{name}"
    )
    paths: dict[str, Any] = {}
    for i, model in enumerate(models):
        paths.update(_model_paths(model, schemas[2 * i], schemas[2 * i + 1]))
    info = document_info([(m.name, m.version) for m in models])
    return {
        "openapi": "3.1.0",
        "info": info,
        "security": [{"bearer": []}],
        "paths": {
            **paths,
            "/v1/models": {
                "get": {
                    "summary": "Models this credential may use",
                    "responses": responses(ok("model list", JSON, _ref("ModelList"))),
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": responses(ok("OpenAPI 3.1", JSON, {"type": "object"}), "404"),
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (role metrics)",
                    "responses": responses(
                        ok("Prometheus text format", METRICS_MEDIA_TYPE, {"type": "string"}),
                        "403",
                    ),
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": responses(ok("alive", JSON, _status("ok")), common=_CONNECTION),
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "security": [],
                    "responses": {
                        **responses(ok("ready", JSON, _status("ready")), common=_CONNECTION),
                        "503": ok(
                            "not ready (shutting down)", JSON, _status("not ready"), "Retry-After"
                        ),
                    },
                }
            },
        },
        "components": {
            "schemas": components,
            "headers": _HEADERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def document_info(named: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The document's ``info``: the model's name and version, or every model's."""
    title = named[0][0] if len(named) == 1 else "secureserve models"
    if len(named) > 1:
        version = ", ".join(f"{name} {version}" for name, version in named)
    else:
        version = named[0][1] if named else "none"
    return {"title": f"{title} API", "version": version}


def _model_paths(
    model: ModelDoc, request_schema: dict[str, Any], response_schema: dict[str, Any]
) -> dict[str, Any]:
    """The routes of one model: predict, explain, reload, metadata, principals, drift."""
    name, view = model.name, model.view
    return {
        f"/v1/models/{name}:predict": {
            "post": {
                "summary": f"Predict with {name} (role predict)",
                "description": _policy_note(view),
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": request_schema}},
                },
                "responses": responses(
                    ok(
                        "one prediction per instance, in order",
                        JSON,
                        response_schema,
                        "X-Model-Version",
                    ),
                    "403",
                    "404",
                    "413",
                    "415",
                    "422",
                    "504",
                ),
            }
        },
        f"/v1/models/{name}:explain": {
            "post": {
                "summary": f"Explain predictions of {name} (role explain)",
                "description": "Per instance: the prediction as this credential's output "
                "policy shows it, and one attribution per feature (null under label_only).",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": request_schema}},
                },
                "responses": responses(
                    ok(
                        "one explanation per instance, in order",
                        JSON,
                        _explanations_schema(),
                        "X-Model-Version",
                    ),
                    "403",
                    "404",
                    "409",
                    "413",
                    "415",
                    "422",
                    "504",
                ),
            }
        },
        **admin_paths(name),
    }


def admin_paths(name: str) -> dict[str, Any]:
    """The admin routes every served model has: metadata, reload, its defenses' routes."""
    return {
        f"/v1/models/{name}:reload": {
            "post": {
                "summary": f"Reload {name} from verified files (role admin)",
                "responses": responses(
                    ok(
                        "the version now serving",
                        JSON,
                        _ref("ReloadResult"),
                        "X-Model-Version",
                    ),
                    "403",
                    "404",
                ),
            }
        },
        f"/v1/models/{name}": {
            "get": {
                "summary": "Model metadata (role admin)",
                "responses": responses(
                    ok("metadata", JSON, _ref("ModelMetadata"), "X-Model-Version"),
                    "403",
                    "404",
                ),
            }
        },
        f"/v1/models/{name}/principals": {
            "get": {
                "summary": "Extraction statistics per principal, paged (role admin)",
                "parameters": [
                    _query("offset", "first entry to return", 10_000_000),
                    _query("limit", "entries to return", 1000),
                ],
                "responses": responses(
                    ok("tracked principals", JSON, _ref("PrincipalPage")),
                    "403",
                    "404",
                    "422",
                ),
            }
        },
        f"/v1/models/{name}/principals/{{handle}}:clear": {
            "post": {
                "summary": "Clear a principal suspected of extraction (role admin, audited)",
                "parameters": [
                    {
                        "name": "handle",
                        "in": "path",
                        "required": True,
                        "description": "the opaque handle from GET .../principals",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                    }
                ],
                "responses": responses(
                    ok("cleared", JSON, _cleared_schema()),
                    "403",
                    "404",
                ),
            }
        },
        f"/v1/models/{name}/drift": {
            "get": {
                "summary": "The drift monitor's current window (role admin)",
                "responses": responses(
                    ok("drift report", JSON, _ref("DriftReport"), "X-Model-Version"),
                    "403",
                    "404",
                ),
            }
        },
    }
