"""The server against its own /openapi.json, with schemathesis (secureserve/openapi.py).

The iris example is served in-process (ASGI, an ``https`` scope, a bearer key with the
roles predict, admin and metrics); schemathesis loads the document the app serves and
sends generated requests to every operation: no 5xx, and every response conforms to the
document (status documented, content type, headers, body schema). Error paths that
random generation does not reach (401, 403, 404, 413, 415, 429, 503) are sent on purpose
and judged by the same checks.
"""

from __future__ import annotations

import os
import re

import pytest
import schemathesis
from app_helpers import asgi_client, bearer, build_app
from conftest import copy_example, load_iris
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from server_helpers import copy_iris, set_toml

from secureserve import load_settings
from secureserve.check.fuzz import without_lifespan
from secureserve.cli._common import import_handler
from secureserve.keys import mint_key
from secureserve.settings import DEFAULT_MAX_BODY_BYTES

BASE = "https://testserver"
PREDICT = "/v1/models/iris:predict"
METADATA = "/v1/models/iris"
VALID = {"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}
HIGH = "1000000/minute"  # the fuzzing must not be rate limited

#: What the response to any request must satisfy.
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Every check run on generated requests (some send extra requests: without the
#: credential, with an undocumented method).
CHECKS = [
    not_a_server_error,
    *CONFORMANCE,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
    unsupported_method,
]
#: Every route of the app, as the document must list it.
OPERATIONS = [
    ("POST", PREDICT),
    ("POST", "/v1/models/iris:reload"),
    ("GET", "/v1/models"),
    ("GET", METADATA),
    ("GET", "/v1/models/iris/drift"),
    ("GET", "/v1/models/iris/principals"),
    ("POST", "/v1/models/iris:explain"),
    ("POST", "/v1/models/iris/principals/{handle}:clear"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]

ALL_ROLES = mint_key(name="schemathesis", roles=("predict", "admin", "metrics"))
PREDICT_ONLY = mint_key(name="predict-only", roles=("predict",))
ADMIN_ONLY = mint_key(name="admin-only", roles=("admin",))
OTHER_MODEL = mint_key(name="other-model", roles=("predict", "admin"), models=("other",))
KEYS = (ALL_ROLES, PREDICT_ONLY, ADMIN_ONLY, OTHER_MODEL)


def _iris_app(project, **limits):
    """create_app(Iris) for a copy of examples/iris with these [limits] and the keys above."""
    set_toml(project, "limits", **limits)
    return build_app(
        load_iris(), load_settings(project_dir=project), *KEYS, audit_key=os.urandom(32)
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A running iris app with high limits, a client with every role, and its schema."""
    project = copy_iris(tmp_path_factory.mktemp("openapi-fuzz") / "iris")
    app = _iris_app(
        project, per_principal=HIGH, per_model=HIGH, auth_failures_per_ip=HIGH, quota=HIGH
    )
    with asgi_client(app) as client:
        response = client.get("/openapi.json", headers=bearer(ALL_ROLES))
        assert response.status_code == 200
        schema = schemathesis.openapi.from_dict(response.json())
        schema.app = without_lifespan(app)
        yield client, schema


def _concrete(match: re.Match[str]) -> str:
    """A route's path as the document writes it: the model's name, other parameters kept."""
    return "iris" if match.group(1) == "name" else "{" + match.group(1) + "}"


def test_openapi_lists_every_route(served):
    """The document names every route the app serves, with its methods, and nothing else."""
    client, schema = served
    paths = client.get("/openapi.json", headers=bearer(ALL_ROLES)).json()["paths"]
    documented = {(m.upper(), p) for p, item in paths.items() for m in item}
    routes = {
        (method, re.sub(r"\{(\w+)(:\w+)?\}", _concrete, route.path))
        for route in client.app.routes
        for method in route.methods - {"HEAD"}
    }
    assert documented == routes == set(OPERATIONS)
    assert len(list(schema.get_all_operations())) == len(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS]
    + [("POST", PREDICT, GenerationMode.NEGATIVE)],  # the only operation with inputs
    ids=lambda value: getattr(value, "value", value),
)
def test_openapi_generated_requests_conform(served, method, path, mode):
    """Generated requests (valid, or invalid for the body) get no 5xx and conforming answers.

    Also: the same request without a credential is refused, an undocumented method is
    a 405, schema-valid bodies are accepted and schema-invalid ones refused.
    """
    _, schema = served
    _fuzz(schema[path][method], mode, CHECKS)


def _fuzz(operation, mode, checks) -> None:
    """20 generated requests to ``operation``, each answer judged by ``checks``."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def run(case):
        case.call_and_validate(base_url=BASE, headers=bearer(ALL_ROLES), checks=checks)

    run()


def _check(schema, method, path, response):
    """Judge ``response`` by the document's definition of ``method path``."""
    schema[path][method].Case().validate_response(response, checks=CONFORMANCE)


@pytest.mark.parametrize(
    ("method", "path", "request_kwargs", "status"),
    [
        pytest.param("POST", PREDICT, {"content": b"{", "key": ALL_ROLES}, 400, id="400"),
        pytest.param("POST", PREDICT, {"json": VALID, "key": None}, 401, id="401-missing"),
        pytest.param("GET", "/metrics", {"key": "bad"}, 401, id="401-invalid"),
        pytest.param("POST", PREDICT, {"json": VALID, "key": ADMIN_ONLY}, 403, id="403-predict"),
        pytest.param("GET", METADATA, {"key": PREDICT_ONLY}, 403, id="403-metadata"),
        pytest.param("GET", "/metrics", {"key": PREDICT_ONLY}, 403, id="403-metrics"),
        pytest.param("POST", "/v1/models/iris:reload", {"key": PREDICT_ONLY}, 403, id="403-reload"),
        pytest.param("POST", PREDICT, {"json": VALID, "key": OTHER_MODEL}, 404, id="404-predict"),
        pytest.param("GET", METADATA, {"key": OTHER_MODEL}, 404, id="404-metadata"),
        pytest.param("GET", "/openapi.json", {"key": OTHER_MODEL}, 404, id="404-openapi"),
        pytest.param(
            "POST",
            PREDICT,
            {"content": b" " * (DEFAULT_MAX_BODY_BYTES + 1), "key": ALL_ROLES},
            413,
            id="413",
        ),
        pytest.param(
            "POST",
            PREDICT,
            {"content": b"{}", "key": ALL_ROLES, "headers": {"Content-Type": "text/plain"}},
            415,
            id="415",
        ),
        pytest.param("POST", PREDICT, {"json": {"instances": []}, "key": ALL_ROLES}, 422, id="422"),
    ],
)
def test_openapi_documents_error_responses(served, method, path, request_kwargs, status):
    """Refusals random generation does not reach conform too (problem+json, headers)."""
    client, schema = served
    kwargs = dict(request_kwargs)
    key = kwargs.pop("key")
    headers = kwargs.pop("headers", {})
    if key == "bad":
        headers["Authorization"] = "Bearer ss_0123456789ab_" + "A" * 43
    elif key is not None:
        headers.update(bearer(key))
    if "content" in kwargs and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status
    _check(schema, method, path, response)


def test_openapi_documents_rate_limit_responses(tmp_path, served):
    """Both kinds of 429 (a rate with RateLimit-*, failed authentications) conform."""
    _, schema = served
    project = copy_iris(tmp_path / "iris")
    set_toml(project, "server", max_instances=1)
    app = _iris_app(project, per_principal="1/minute", auth_failures_per_ip="1/minute")
    with asgi_client(app) as client:
        assert client.post(PREDICT, json=VALID, headers=bearer(ALL_ROLES)).status_code == 200
        limited = client.post(PREDICT, json=VALID, headers=bearer(ALL_ROLES))
        assert limited.status_code == 429
        assert "ratelimit-limit" in limited.headers
        _check(schema, "POST", PREDICT, limited)
        bad = {"Authorization": "Bearer ss_0123456789ab_" + "A" * 43}
        assert client.get("/v1/models", headers=bad).status_code == 401
        blocked = client.get("/v1/models", headers=bad)
        assert blocked.status_code == 429
        _check(schema, "GET", "/v1/models", blocked)


def test_openapi_documents_unavailable_responses(tmp_path, served):
    """503s conform: the audit log made read-only, and /readyz after shutdown."""
    _, schema = served
    project = copy_iris(tmp_path / "iris")
    app = _iris_app(project, per_principal=HIGH)
    with asgi_client(app, ALL_ROLES) as client:
        (project / "audit" / "audit.jsonl").chmod(0o400)
        try:
            refused = client.post(PREDICT, json=VALID)
        finally:
            (project / "audit" / "audit.jsonl").chmod(0o600)
        assert refused.status_code == 503
        _check(schema, "POST", PREDICT, refused)
    shut_down = asgi_client(app).get("/readyz")
    assert shut_down.status_code == 503
    _check(schema, "GET", "/readyz", shut_down)


def test_openapi_conformance_catches_an_undocumented_answer(served):
    """The checks are live: with 415 dropped from the document, a 415 fails them."""
    client, _ = served
    document = client.get("/openapi.json", headers=bearer(ALL_ROLES)).json()
    del document["paths"][PREDICT]["post"]["responses"]["415"]
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Content-Type": "text/plain", **bearer(ALL_ROLES)}
    response = client.post(PREDICT, content=b"{}", headers=headers)
    assert response.status_code == 415
    with pytest.raises(FailureGroup, match="Undocumented status code"):
        _check(schema, "POST", PREDICT, response)


# --------------------------------------------------------------------------- /v2

INFER = "/v2/models/iris/infer"
V2_OPERATIONS = [
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/iris"),
    ("GET", "/v2/models/iris/ready"),
    ("POST", INFER),
    ("GET", "/v2/models/iris/versions/1"),
    ("GET", "/v2/models/iris/versions/1/ready"),
    ("POST", "/v2/models/iris/versions/1/infer"),
]
#: The /v1 admin routes that serve a tensor model too.
TENSOR_ADMIN = [
    ("GET", "/v1/models/iris"),
    ("POST", "/v1/models/iris:reload"),
    ("GET", "/v1/models/iris/drift"),
    ("GET", "/v1/models/iris/principals"),
    ("POST", "/v1/models/iris/principals/{handle}:clear"),
]
#: A schema-valid infer body may still be refused: JSON Schema cannot say that ``data``
#: holds exactly prod(shape) values, which the server checks (400).
V2_CHECKS = [check for check in CHECKS if check is not positive_data_acceptance]


@pytest.fixture(scope="module")
def served_tensors(tmp_path_factory):
    """examples/iris-tensor in-process, limits high, and the schema it serves."""
    with pytest.MonkeyPatch.context() as patch:
        project = copy_example("iris-tensor", tmp_path_factory.mktemp("v2-fuzz") / "t", patch)
        set_toml(project, "limits", per_principal=HIGH, auth_failures_per_ip=HIGH, quota=HIGH)
        settings = load_settings(project_dir=project)
        handler = import_handler("app:IrisTensor", project)
        app = build_app(handler, settings, *KEYS, audit_key=os.urandom(32))
        with asgi_client(app) as client:
            response = client.get("/openapi.json", headers=bearer(ALL_ROLES))
            assert response.status_code == 200
            schema = schemathesis.openapi.from_dict(response.json())
            schema.app = without_lifespan(app)
            yield client, schema


def _concrete_v2(match: re.Match[str]) -> str:
    return {"name": "iris", "version": "1"}.get(match.group(1), "{" + match.group(1) + "}")


def test_openapi_lists_every_v2_route(served_tensors):
    """With a tensor model, the document names the /v2 routes (and the shared ones)."""
    client, _ = served_tensors
    paths = client.get("/openapi.json", headers=bearer(ALL_ROLES)).json()["paths"]
    documented = {(m.upper(), p) for p, item in paths.items() for m in item}
    routes = {
        (method, re.sub(r"\{(\w+)(:\w+)?\}", _concrete_v2, route.path))
        for route in client.app.routes
        for method in route.methods - {"HEAD"}
    }
    admin = set(TENSOR_ADMIN)
    shared = {("GET", "/v1/models"), ("GET", "/openapi.json"), ("GET", "/metrics")}
    shared |= {("GET", "/healthz"), ("GET", "/readyz")}
    assert documented == set(V2_OPERATIONS) | admin | shared
    # the /v1 routes an ss.Model has answer 404 for a tensor model: not in its document
    assert routes - documented == {
        ("POST", "/v1/models/iris:predict"),
        ("POST", "/v1/models/iris:explain"),
    }


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(m, p, GenerationMode.POSITIVE) for m, p in V2_OPERATIONS + TENSOR_ADMIN]
    + [("POST", INFER, GenerationMode.NEGATIVE)],
    ids=lambda value: getattr(value, "value", value),
)
def test_openapi_generated_v2_requests_conform(served_tensors, method, path, mode):
    """Generated /v2 requests get no 5xx and answers the document describes."""
    _, schema = served_tensors
    _fuzz(schema[path][method], mode, V2_CHECKS)


def test_a_valid_v2_inference_conforms_in_json_and_binary(served_tensors):
    client, schema = served_tensors
    rows = [[5.1, 3.5, 1.4, 0.2]]
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": rows}]}
    reply = client.post(INFER, json=body, headers=bearer(ALL_ROLES))
    assert reply.status_code == 200
    _check(schema, "POST", INFER, reply)
    body["parameters"] = {"binary_data_output": True}
    binary = client.post(INFER, json=body, headers=bearer(ALL_ROLES))
    assert binary.headers["content-type"] == "application/octet-stream"
    _check(schema, "POST", INFER, binary)
