"""OpenAPI 3.1 for the served model, generated from its msgspec types once per app."""

from __future__ import annotations

from typing import Any

import msgspec

from secureserve.problems import PROBLEM_MEDIA_TYPE, Problem
from secureserve.schema import ModelSchema

__all__ = [
    "ArtifactInfo",
    "ModelList",
    "ModelMetadata",
    "ModelSummary",
    "ReloadResult",
    "openapi_document",
]


class ModelSummary(msgspec.Struct, frozen=True):
    """One entry of ``GET /v1/models``."""

    name: str
    version: str


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


class ReloadResult(msgspec.Struct, frozen=True):
    """``POST /v1/models/{name}:reload`` (admin): the version now serving."""

    name: str
    version: str
    revision: str
    previous_revision: str


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def openapi_document(name: str, version: str, schema: ModelSchema) -> dict[str, Any]:
    """The whole OpenAPI document as a dict (encoded once by the app)."""
    (request_schema, response_schema, *_), components = msgspec.json.schema_components(
        (schema.request_type, schema.response_type, Problem, ModelList, ModelMetadata),
        ref_template="#/components/schemas/{name}",
    )
    errors = {
        "401": _problem("missing or invalid credentials"),
        "403": _problem("the credential lacks the required role"),
        "404": _problem("no such model for this credential"),
        "429": _problem("rate limited"),
        "503": _problem("server busy; retry after Retry-After seconds"),
    }
    json_body = "application/json"
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{name} model API", "version": version},
        "security": [{"bearer": []}],
        "paths": {
            f"/v1/models/{name}:predict": {
                "post": {
                    "summary": f"Predict with {name}",
                    "requestBody": {
                        "required": True,
                        "content": {json_body: {"schema": request_schema}},
                    },
                    "responses": {
                        "200": {
                            "description": "one prediction per instance, in order",
                            "content": {json_body: {"schema": response_schema}},
                        },
                        "400": _problem("malformed JSON"),
                        "408": _problem("body not received in time"),
                        "413": _problem("body too large"),
                        "415": _problem("not application/json"),
                        "422": _problem("body does not match the schema; detail names the field"),
                        "500": _problem("model error"),
                        "504": _problem("model did not answer in time"),
                        **errors,
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Models this credential may use",
                    "responses": {
                        "200": {
                            "description": "model list",
                            "content": {
                                json_body: {"schema": {"$ref": "#/components/schemas/ModelList"}}
                            },
                        },
                        **errors,
                    },
                }
            },
            f"/v1/models/{name}": {
                "get": {
                    "summary": "Model metadata (role admin)",
                    "responses": {
                        "200": {
                            "description": "metadata",
                            "content": {
                                json_body: {
                                    "schema": {"$ref": "#/components/schemas/ModelMetadata"}
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
