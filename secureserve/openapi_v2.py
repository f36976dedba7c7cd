"""The ``/v2`` routes of tensor models in the OpenAPI document (secureserve/openapi.py).

Each tensor model's infer request and response are described from its graph: the
input and output names and datatypes it has, and each input's rank. What JSON Schema
cannot say is in the descriptions and checked by the server (``len(data)`` equal to
the product of the shape, values in the datatype's range, one batch size for every
input); the Open Inference Protocol's own specification is the reference for the
rest. The binary tensor extension is documented as ``application/octet-stream`` with
its ``Inference-Header-Content-Length`` header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from secureserve.openapi import JSON, admin_paths, document_info, ok, responses
from secureserve.tensor_model import TensorSpec

__all__ = ["TensorDoc", "with_tensors"]

_OCTETS: Final = "application/octet-stream"
_PARAMETERS: Final = {"type": "object", "additionalProperties": True}
_HEADER_LENGTH: Final = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "binary tensor extension: the length of the JSON header that starts "
    "the body; the tensors with parameters.binary_data_size follow it, in order",
    "schema": {"type": "integer", "minimum": 0},
}
_BINARY: Final = {
    "type": "string",
    "format": "binary",
    "description": "the JSON header (Inference-Header-Content-Length bytes), then raw "
    "little-endian tensors",
}
_INFER_NOTE: Final = (
    "Open Inference Protocol v2 inference. Each input is the graph's: its name, datatype "
    "and a shape that fits (-1: any size), the same first dimension (the batch) for all; "
    "JSON data holds exactly prod(shape) values, nested or flat, each in its datatype's "
    "range. Rows are charged on the rate limits like instances."
)


class TensorDoc(NamedTuple):
    """One served tensor model as the document shows it."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _tensor(spec: TensorSpec, *, with_data: bool) -> dict[str, Any]:
    dims = [{"type": "integer", "minimum": 0} if d < 0 else {"const": d} for d in spec.shape]
    shape = {"type": "array", "prefixItems": dims, "minItems": len(dims), "maxItems": len(dims)}
    properties: dict[str, Any] = {
        "name": {"const": spec.name},
        "datatype": {"const": spec.datatype},
        "shape": shape,
        "parameters": _PARAMETERS,
    }
    if with_data:
        properties["data"] = {"type": "array"}
    return {
        "type": "object",
        "properties": properties,
        "required": ["name", "datatype", "shape"],
        "additionalProperties": False,
    }


def _request_schema(doc: TensorDoc) -> dict[str, Any]:
    wanted = {
        "type": "object",
        "properties": {
            "name": {"enum": [spec.name for spec in doc.outputs]},
            "parameters": _PARAMETERS,
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": _PARAMETERS,
            "inputs": {
                "type": "array",
                "minItems": len(doc.inputs),
                "maxItems": len(doc.inputs),
                "items": {"oneOf": [_tensor(s, with_data=True) for s in doc.inputs]},
            },
            "outputs": {"type": "array", "items": wanted},
        },
        "required": ["inputs"],
        "additionalProperties": False,
    }


def _response_schema(doc: TensorDoc) -> dict[str, Any]:
    output = {
        "type": "object",
        "properties": {
            "name": {"enum": [spec.name for spec in doc.outputs]},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "parameters": _PARAMETERS,
            "data": {"type": "array"},
        },
        "required": ["name", "datatype", "shape"],
    }
    return {
        "type": "object",
        "properties": {
            "model_name": {"const": doc.name},
            "model_version": {"const": doc.version},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": output},
        },
        "required": ["model_name", "outputs"],
    }


def _metadata_schema(doc: TensorDoc) -> dict[str, Any]:
    def specs(items: Sequence[TensorSpec]) -> dict[str, Any]:
        return {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
                },
                "required": ["name", "datatype", "shape"],
            },
            "minItems": len(items),
            "maxItems": len(items),
        }

    return {
        "type": "object",
        "properties": {
            "name": {"const": doc.name},
            "versions": {"type": "array", "items": {"const": doc.version}},
            "platform": {"type": "string"},
            "inputs": specs(doc.inputs),
            "outputs": specs(doc.outputs),
        },
        "required": ["name", "versions", "platform", "inputs", "outputs"],
    }


def _model_paths(doc: TensorDoc, base: str) -> dict[str, Any]:
    ready = {
        "type": "object",
        "properties": {"name": {"const": doc.name}, "ready": {"const": True}},
        "required": ["name", "ready"],
    }
    infer_ok = ok("the outputs, in JSON or binary", JSON, _response_schema(doc), "X-Model-Version")
    infer_ok["content"][_OCTETS] = {"schema": _BINARY}
    return {
        base: {
            "get": {
                "summary": f"Tensors of {doc.name}, from its graph",
                "responses": responses(ok("model metadata", JSON, _metadata_schema(doc)), "404"),
            }
        },
        f"{base}/ready": {
            "get": {
                "summary": f"Whether {doc.name} is loaded",
                "responses": responses(ok("ready", JSON, ready), "404"),
            }
        },
        f"{base}/infer": {
            "post": {
                "summary": f"Infer with {doc.name} (role predict)",
                "description": _INFER_NOTE,
                "parameters": [_HEADER_LENGTH],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": _request_schema(doc)},
                        _OCTETS: {"schema": _BINARY},
                    },
                },
                "responses": responses(infer_ok, "403", "404", "413", "415", "422", "504"),
            }
        },
    }


def with_tensors(
    document: dict[str, Any], named: Sequence[tuple[str, str]], models: Sequence[TensorDoc]
) -> dict[str, Any]:
    """``document`` (of the ``ss.Model`` models ``named``) with the ``/v2`` routes of ``models``.

    The protocol's probes are ``/healthz`` and ``/readyz`` under other names; then the
    server's metadata, then each model's routes, with and without its version.
    """
    if not models:
        return document
    paths = document["paths"]
    paths["/v2/health/live"] = paths["/healthz"]
    paths["/v2/health/ready"] = paths["/readyz"]
    paths.update(_paths(models))
    document["info"] = document_info([*named, *((m.name, m.version) for m in models)])
    return document


def _paths(models: Sequence[TensorDoc]) -> dict[str, Any]:
    server = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "version", "extensions"],
    }
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "The protocol and its extensions",
                "responses": responses(ok("server metadata", JSON, server)),
            }
        },
    }
    for doc in models:
        paths.update(admin_paths(doc.name))
        paths.update(_model_paths(doc, f"/v2/models/{doc.name}"))
        paths.update(_model_paths(doc, f"/v2/models/{doc.name}/versions/{doc.version}"))
    return paths
