"""Tests of secureserve.app: create_app as a whole, in-process, over the ASGI interface."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import pytest
from app_helpers import Echo, Number, asgi_client, build_app
from conftest import EXAMPLES, load_iris
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient as StarletteClient
from starlette.websockets import WebSocketDisconnect

import secureserve as ss
from secureserve.config import Settings, load_settings
from secureserve.keys import mint_key
from secureserve.testing import TestClient

PREDICT = "/v1/models/iris:predict"
VALID = {"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}, {"features": [6.7, 3.0, 5.2, 2.3]}]}
PROBLEM = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "request_id", "error", "detail"}
GENERATED_ID = re.compile(r"[0-9a-f]{24}")


Iris = load_iris()


class Boom(ss.Model[Number, Echo]):
    """A handler whose predict always raises (to get a 500 out of the app)."""

    name = "boom"

    def predict(self, batch):
        """Fail."""
        raise RuntimeError("kaboom")


# --- helpers -----------------------------------------------------------------------


def _app_with_keys(project, *keys):
    """create_app(Iris) for ``project`` with exactly ``keys`` in an in-memory key store."""
    return build_app(Iris, load_settings(project_dir=project), *keys)


def _assert_problem(response, status):
    """``response`` is a problem+json of ``status`` whose request_id is the header's."""
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert set(body) <= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"].startswith("urn:secureserve:problem:")
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.fixture
def iris(iris_project):
    """A TestClient for the iris example: roles predict, admin and analyst (full scores)."""
    roles = ("predict", "admin", "analyst")
    with TestClient(Iris, project_dir=iris_project, roles=roles) as client:
        yield client


# --- routes --------------------------------------------------------------------------


def test_app_predict_returns_one_prediction_per_instance(iris):
    """POST :predict answers 200 JSON {"predictions": [...]} in order, with X-Model-Version."""
    response = iris.post(PREDICT, json=VALID)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-model-version"] == "1.0.0"
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["setosa", "virginica"]
    assert all(0.0 <= p["score"] <= 1.0 for p in predictions)


def test_app_model_version_only_on_model_responses(iris):
    """X-Model-Version names the model that answered; unrelated routes do not carry it."""
    assert iris.get("/v1/models/iris").headers["x-model-version"] == "1.0.0"
    assert "x-model-version" not in iris.get("/healthz").headers
    assert "x-model-version" not in iris.get("/v1/models").headers


def test_app_lists_the_model(iris):
    """GET /v1/models lists the served model's name and public version."""
    response = iris.get("/v1/models")
    assert response.status_code == 200
    assert response.json() == {"models": [{"name": "iris", "version": "1.0.0", "ready": True}]}


@pytest.mark.parametrize(("path", "body"), [("/healthz", "ok"), ("/readyz", "ready")])
def test_app_probes_are_public_and_terse(iris, path, body):
    """/healthz and /readyz answer without credentials and say nothing beyond their status."""
    response = iris.anonymous().get(path)
    assert response.status_code == 200
    assert response.json() == {"status": body}


def test_app_readyz_is_503_when_not_ready(iris):
    """/readyz turns 503 with Retry-After once the serving state is no longer ready."""
    iris.app.state.models.accepting = False
    response = iris.anonymous().get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert iris.anonymous().get("/healthz").status_code == 200


def test_app_admin_metadata_has_artifact_hashes(iris):
    """GET /v1/models/iris (admin) reports each artifact's sha256 and size as on disk."""
    onnx = (EXAMPLES / "iris" / "models" / "iris.onnx").read_bytes()
    response = iris.get("/v1/models/iris")
    assert response.status_code == 200
    meta = response.json()
    assert meta["name"] == "iris"
    assert meta["version"] == "1.0.0"
    assert meta["max_instances"] == 32
    artifacts = {a["name"]: a for a in meta["artifacts"]}
    assert artifacts["iris.onnx"]["sha256"] == hashlib.sha256(onnx).hexdigest()
    assert artifacts["iris.onnx"]["size"] == len(onnx)
    assert artifacts["iris.onnx"]["format"] == "onnx"
    assert not any("/" in a["name"] or "\\" in a["name"] for a in meta["artifacts"])


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v1/models/other", 404),
        ("POST", "/v1/models/other:predict", 404),
        ("GET", "/v1/models/", 404),
        ("GET", "/healthz/", 404),
        ("PUT", PREDICT, 405),
        ("GET", PREDICT, 405),  # a known route: 405 with Allow: POST
        ("DELETE", "/v1/models/iris", 405),
        ("POST", "/v1/models", 405),
        ("PUT", "/healthz", 405),
    ],
)
def test_app_not_found_and_method_not_allowed_are_problems(iris, method, path, status):
    """Unknown paths, models and methods answer problem+json 404/405 without details."""
    response = iris.request(method, path, json=VALID)
    body = _assert_problem(response, status)
    assert "detail" not in body
    assert "location" not in response.headers
    if status == 405:  # the router's own answer, made a problem by RequestContext
        assert response.headers["allow"]
        assert method not in response.headers["allow"].split(", ")


def test_app_unknown_route_needs_credentials(iris):
    """Without credentials an unknown path is 401, so routes cannot be probed anonymously."""
    body = _assert_problem(iris.anonymous().get("/nope"), 401)
    assert body["detail"] == "no bearer token"


@pytest.mark.parametrize(
    ("roles", "method", "path", "status"),
    [
        (("predict",), "POST", PREDICT, 200),
        (("predict",), "GET", "/v1/models", 200),
        (("predict",), "GET", "/openapi.json", 200),
        (("predict",), "GET", "/v1/models/iris", 403),
        (("admin",), "POST", PREDICT, 403),
        (("admin",), "GET", "/v1/models/iris", 200),
        (("metrics",), "GET", "/v1/models", 200),
        (("metrics",), "POST", PREDICT, 403),
        (("metrics",), "GET", "/v1/models/iris", 403),
        (("explain",), "POST", PREDICT, 403),
    ],
)
def test_app_roles_gate_routes(iris_project, roles, method, path, status):
    """Each route admits exactly the roles DESIGN.md names; others get 403."""
    with TestClient(Iris, project_dir=iris_project, roles=roles) as client:
        response = client.request(method, path, json=VALID)
    assert response.status_code == status
    if status == 403:
        _assert_problem(response, 403)


# --- model lists ---------------------------------------------------------------------


def test_app_model_outside_allowed_list_is_hidden(iris_project):
    """A key limited to other models gets 404 for iris (as if absent) and an empty list."""
    key = mint_key(name="other", roles=("predict", "admin"), models=("other",))
    with asgi_client(_app_with_keys(iris_project, key), key) as client:
        hidden = client.post(PREDICT, json=VALID)
        absent = client.post("/v1/models/nope:predict", json=VALID)
        meta = client.get("/v1/models/iris")
        listing = client.get("/v1/models")
    body = _assert_problem(hidden, 404)
    absent_body = _assert_problem(absent, 404)
    assert {k: v for k, v in body.items() if k != "request_id"} == {
        k: v for k, v in absent_body.items() if k != "request_id"
    }
    _assert_problem(meta, 404)
    assert listing.status_code == 200
    assert listing.json() == {"models": []}


def test_app_model_inside_allowed_list_is_served(iris_project):
    """A key whose model list names iris can list and call it."""
    key = mint_key(name="iris-only", roles=("predict",), models=("iris", "other"))
    with asgi_client(_app_with_keys(iris_project, key), key) as client:
        listed = client.get("/v1/models").json()
        assert listed == {"models": [{"name": "iris", "version": "1.0.0", "ready": True}]}
        assert client.post(PREDICT, json=VALID).status_code == 200


# --- OpenAPI -------------------------------------------------------------------------


def test_app_openapi_is_3_1_with_flower_bounds(iris):
    """/openapi.json is OpenAPI 3.1 whose predict request schema carries Flower's bounds."""
    response = iris.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]

    def resolve(schema):
        ref = schema.get("$ref")
        return schemas[ref.removeprefix("#/components/schemas/")] if ref else schema

    operation = doc["paths"][PREDICT]["post"]
    request = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    instances = request["properties"]["instances"]
    assert (instances["minItems"], instances["maxItems"]) == (1, 32)
    flower = resolve(instances["items"])
    assert flower["additionalProperties"] is False
    features = flower["properties"]["features"]
    assert (features["minItems"], features["maxItems"]) == (4, 4)
    assert features["items"]["minimum"] == 0
    assert features["items"]["maximum"] == 50
    assert operation["responses"]["422"]["content"][PROBLEM]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_app_openapi_needs_credentials(iris):
    """/openapi.json is for authenticated callers only."""
    _assert_problem(iris.anonymous().get("/openapi.json"), 401)


# --- headers on every response -------------------------------------------------------


def _boom_client(tmp_path):
    key = mint_key(name="boom", roles=("predict",))
    return asgi_client(build_app(Boom, Settings(project_dir=tmp_path), key), key)


RESPONSES = {
    "predict-200": lambda c, b: c.post(PREDICT, json=VALID),
    "list-200": lambda c, b: c.get("/v1/models"),
    "healthz-200": lambda c, b: c.anonymous().get("/healthz"),
    "readyz-200": lambda c, b: c.anonymous().get("/readyz"),
    "401": lambda c, b: c.anonymous().post(PREDICT, json=VALID),
    "404": lambda c, b: c.get("/nope"),
    "405": lambda c, b: c.put(PREDICT),
    "413": lambda c, b: c.post(
        PREDICT, content=b"x" * 2_000_000, headers={"content-type": "application/json"}
    ),
    "415": lambda c, b: c.post(PREDICT, content=b"{}", headers={"content-type": "text/plain"}),
    "422": lambda c, b: c.post(PREDICT, json={"instances": []}),
    "400": lambda c, b: c.post(PREDICT, content=b"{", headers={"content-type": "application/json"}),
    "500": lambda c, b: b.post("/v1/models/boom:predict", json={"instances": [{"x": 1}]}),
    "403-plaintext": lambda c, b: asgi_client(c.app, base_url="http://testserver").get("/healthz"),
}


@pytest.mark.parametrize("case", list(RESPONSES))
def test_app_security_headers_on_every_response(iris, tmp_path, case):
    """Success, 4xx, 5xx and probes all carry HSTS, nosniff, no-store, a request id; no Server."""
    with _boom_client(tmp_path) as boom:
        response = RESPONSES[case](iris, boom)
    expected = case.split("-")[-1] if case[0].isalpha() else case.split("-")[0]
    assert str(response.status_code) == expected
    headers = response.headers
    assert headers["strict-transport-security"].startswith("max-age=")
    assert int(headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 31536000
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert GENERATED_ID.fullmatch(headers["x-request-id"])
    assert "server" not in headers
    assert "x-powered-by" not in headers
    assert not any(h.startswith("access-control-") for h in headers)
    assert len(headers.get_list("x-request-id")) == 1
    if response.status_code >= 400:
        _assert_problem(response, response.status_code)


def test_app_500_has_no_detail(iris, tmp_path):
    """A handler exception becomes a bare 500 problem: no detail, no exception text."""
    with _boom_client(tmp_path) as boom:
        response = boom.post("/v1/models/boom:predict", json={"instances": [{"x": 1}]})
    body = _assert_problem(response, 500)
    assert "detail" not in body
    assert "kaboom" not in response.text
    assert "RuntimeError" not in response.text


def test_app_request_context_is_the_only_error_boundary(iris_project):
    """No Starlette error layer around the middleware: RequestContext answers every error.

    Starlette's ServerErrorMiddleware (a traceback page under ``debug``) and
    ExceptionMiddleware are left out; an exception handler, which could never run, is
    refused when the stack is built instead of being ignored.
    """
    app = _app_with_keys(iris_project, mint_key(name="k", roles=("predict",)))
    from secureserve.app import _Dispatch

    layer = app.build_middleware_stack()
    names = []
    while not isinstance(layer, _Dispatch):  # innermost: the router, predict found first
        names.append(type(layer).__name__)
        layer = layer.app
    assert layer.router is app.router
    assert names[0] == "RequestContext"
    # a route put before predict's is never passed over: the router alone decides then
    app.router.routes.insert(0, app.router.routes[-1])
    layer = app.build_middleware_stack()
    while layer is not app.router:
        assert not isinstance(layer, _Dispatch)
        layer = layer.app
    assert not {"ServerErrorMiddleware", "ExceptionMiddleware"} & set(names)
    with pytest.raises(ss.ConfigError, match="exception handlers cannot be added"):
        app.add_exception_handler(ValueError, lambda request, exc: None)
    app.exception_handlers[ValueError] = lambda request, exc: None  # past the refusal
    with pytest.raises(ss.ConfigError, match="exception handlers cannot be added"):
        app.build_middleware_stack()


# --- X-Request-ID --------------------------------------------------------------------


def test_app_request_id_is_generated_fresh(iris):
    """Without an incoming id every response gets a new random hex id."""
    ids = {iris.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED_ID.fullmatch(i) for i in ids)


@pytest.mark.parametrize(
    "incoming", ["abcdefgh", "req-2024.01_ABC", "0123456789abcdef0123456789ABCDEF", "a" * 64]
)
def test_app_request_id_valid_incoming_is_echoed(iris, incoming):
    """An incoming X-Request-ID matching the strict pattern is kept, in header and problem body."""
    ok = iris.get("/v1/models", headers={"X-Request-ID": incoming})
    assert ok.headers["x-request-id"] == incoming
    refused = iris.anonymous().get("/v1/models", headers={"X-Request-ID": incoming})
    assert refused.json()["request_id"] == incoming


@pytest.mark.parametrize(
    "incoming",
    [
        "short",
        "1234567",
        "a" * 65,
        "a" * 1000,
        "bad id with spaces",
        "abcdefgh!",
        "abc/def/ghi",
        "<script>alert(1)</script>",
        "abcdefgh;x=1",
    ],
)
def test_app_request_id_invalid_incoming_is_replaced(iris, incoming):
    """An incoming X-Request-ID outside the pattern is replaced by a generated one."""
    response = iris.get("/healthz", headers={"X-Request-ID": incoming})
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


def _https_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    """The ASGI scope of one HTTPS request as a server would pass it to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 443),
        "state": {},
        "extensions": {},
    }


def _raw_get(app, path, headers):
    """One GET through the raw ASGI interface; returns (status, response headers)."""
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    asyncio.run(app(_https_scope("GET", path, headers), receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    return start["status"], start["headers"]


@pytest.mark.parametrize(
    "raw",
    [
        b"abcdefgh\r\nset-cookie: evil=1",
        b"abcdefgh\nx-evil: 1",
        b"abcdefgh\x00",
        b"abcdefgh\r\n\r\n<html>",
        b"abcdefgh\xff\xfe",
    ],
)
def test_app_request_id_header_injection_is_replaced(iris, raw):
    """An id carrying CR/LF, NUL or non-ASCII bytes is never echoed into the response headers."""
    status, headers = _raw_get(iris.app, "/healthz", [(b"x-request-id", raw)])
    assert status == 200
    ids = [v for k, v in headers if k == b"x-request-id"]
    assert len(ids) == 1
    assert GENERATED_ID.fullmatch(ids[0].decode())
    assert not any(b"evil" in k or b"evil" in v for k, v in headers)


def test_app_request_id_first_incoming_header_decides(iris):
    """With two X-Request-ID headers, an invalid first one is not rescued by a valid second one."""
    status, headers = _raw_get(
        iris.app, "/healthz", [(b"x-request-id", b"bad id!"), (b"x-request-id", b"goodgoodgood")]
    )
    assert status == 200
    ids = [v for k, v in headers if k == b"x-request-id"]
    assert len(ids) == 1
    assert ids[0] != b"goodgoodgood"


# --- transport: plaintext, websockets, mounting --------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", PREDICT), ("GET", "/v1/models"), ("GET", "/openapi.json"), ("GET", "/healthz")],
)
def test_app_plaintext_scope_is_refused(iris, method, path):
    """A request whose ASGI scope is plain http gets 403, even with a valid key."""
    plain = StarletteClient(
        iris.app, base_url="http://testserver", headers=dict(iris.headers.items())
    )
    response = plain.request(method, path, json=VALID)
    body = _assert_problem(response, 403)
    assert body["type"] == "urn:secureserve:problem:https-required"
    assert "predictions" not in response.text


@pytest.mark.parametrize("path", ["/v1/models", "/healthz", PREDICT])
def test_app_websocket_is_refused(iris, path):
    """A WebSocket handshake is closed (policy violation) without being accepted."""
    with pytest.raises(WebSocketDisconnect) as info, iris.websocket_connect(path):
        pass  # pragma: no cover - the handshake never completes
    assert info.value.code == 1008


def _mounted(iris_project, key):
    inner = _app_with_keys(iris_project, key)
    return Starlette(routes=[Mount("/api", app=inner)])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api" + PREDICT),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/models/iris"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/nope"),
    ],
)
def test_app_mounted_under_prefix_still_needs_credentials(iris_project, method, path):
    """create_app mounted inside another Starlette app under /api still refuses anonymous calls."""
    key = mint_key(name="mount", roles=("predict", "admin"))
    with asgi_client(_mounted(iris_project, key)) as anonymous:
        response = anonymous.request(method, path, json=VALID)
    body = _assert_problem(response, 401)
    assert body["detail"] == "no bearer token"
    assert "predictions" not in response.text


def test_app_mounted_under_prefix_serves_with_credentials(iris_project):
    """Mounted under /api, a valid key predicts and the model list filter still applies."""
    key = mint_key(name="mount", roles=("predict",))
    with asgi_client(_mounted(iris_project, key), key) as client:
        assert client.post("/api" + PREDICT, json=VALID).status_code == 200
        assert client.get("/api/v1/models/iris").status_code == 403


@pytest.mark.parametrize("path", ["/api/healthz", "/api/readyz"])
def test_app_mounted_under_prefix_probes_stay_public(iris_project, path):
    """Mounted under /api, the app's own probes still answer without credentials."""
    key = mint_key(name="mount", roles=("predict",))
    with asgi_client(_mounted(iris_project, key)) as anonymous:
        response = anonymous.get(path)
    assert response.status_code == 200


def test_testclient_removes_the_audit_folder_it_made(iris_project, tmp_path):
    """A TestClient without audit_path leaves nothing behind; a given path is kept."""
    with TestClient(Iris, project_dir=iris_project) as client:
        assert client.predict([{"features": [5.1, 3.5, 1.4, 0.2]}]).status_code == 200
        made = client.audit_path.parent
        assert client.audit_path.exists()
    assert not made.exists()
    given = tmp_path / "kept" / "audit.jsonl"
    with TestClient(Iris, project_dir=iris_project, audit_path=given) as client:
        client.predict([{"features": [5.1, 3.5, 1.4, 0.2]}])
    assert given.exists()


# --------------------------------------------------------------------------- predict dispatch

DISPATCH_PATHS = [
    PREDICT,
    "/v1/models/a:b:predict",
    "/v1/models/iris:predict:predict",
    "/v1/models/ :predict",
    "/v1/models/\u00e9\u00e8:predict",
    "/v1/models/ir\nis:predict",
    "/v1/models/iris:predict\n",  # the route's regex ends in $, which matches before a \n
    "/v1/models/:predict",
    "/v1/models//:predict",
    "/v1/models/a/b:predict",
    "/v1/models/iris:predict/",
    "/v1/models/iris:PREDICT",
    "/V1/models/iris:predict",
    "//v1/models/iris:predict",
    "/v1/models/iris:explain",
    "/v1/models/iris",
    "/v1/models:predict",
    "",
]
DISPATCH_MOUNTS = [
    ("", ""),  # served by secureserve run
    ("/api", "/api"),  # mounted under /api
    ("/api", "/apix"),  # a path that only starts with the mount's prefix
    ("/api", ""),  # a root_path the path does not carry
]


@pytest.mark.parametrize("method", ["POST", "GET", "post", "PUT"])
@pytest.mark.parametrize(("root", "prefix"), DISPATCH_MOUNTS)
@pytest.mark.parametrize("path", DISPATCH_PATHS)
def test_app_predict_dispatch_matches_as_the_router_would(path, root, prefix, method):
    """What the dispatch takes for predict, Starlette's route matches the same way."""
    from starlette.routing import Match, Route

    from secureserve.app import _PREDICT, _Dispatch

    taken, passed = [], []

    async def predict(scope, receive, send):
        taken.append(scope)

    async def router(scope, receive, send):
        passed.append(scope)

    route = Route(_PREDICT, predict, methods=["POST"])
    route.app = predict  # a function endpoint is wrapped as a request handler: call it bare
    dispatch = _Dispatch(router, route)  # type: ignore[arg-type]

    def scope() -> dict:
        return {
            "type": "http",
            "method": method,
            "path": prefix + path,
            "root_path": root,
            "path_params": {"tenant": "t1"},  # a mount's own, kept
        }

    asyncio.run(dispatch(scope(), None, None))
    assert len(taken) + len(passed) == 1
    match, child = route.matches(scope())
    if taken:  # the route agrees, with the same parameters
        assert match is Match.FULL
        assert taken[0]["path_params"] == child["path_params"]
        assert taken[0]["endpoint"] is child["endpoint"]
        assert taken[0]["route"] is route
        assert taken[0]["router"] is router
    # it takes every request the route matches, but for a path ending in a newline
    assert bool(taken) == (match is Match.FULL and not path.endswith("\n"))
    if path == PREDICT and method == "POST" and (prefix == root or not root):
        assert taken  # the common request does take it


# --------------------------------------------------------------------------- no garbage cycles


def _garbage_of(app, requests: list[tuple[str, bytes, str | None]]) -> tuple[set[int], set[str]]:
    """POST each ``(path, body, bearer)`` to ``app`` in process, after a first warm round.

    The statuses, and the types of the objects the measured rounds left in cycles that
    only the garbage collector would free.
    """
    import gc

    async def call(path: str, body: bytes, bearer: str | None) -> int:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if bearer is not None:
            headers.append((b"authorization", b"Bearer " + bearer.encode()))
        scope = _https_scope("POST", path, headers)
        statuses = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        await asyncio.sleep(0.01)  # what the response left to the loop (the audit write)
        return statuses[0]

    async def main() -> tuple[set[int], set[str]]:
        inbox: asyncio.Queue = asyncio.Queue()
        outbox: asyncio.Queue = asyncio.Queue()
        lifespan = asyncio.ensure_future(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
        )
        await inbox.put({"type": "lifespan.startup"})
        assert (await outbox.get())["type"] == "lifespan.startup.complete"
        for request in requests:  # warm: what is made once is not garbage
            await call(*request)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            statuses = {await call(*request) for request in requests * 5}
            gc.collect()
            kept = {type(o).__name__ for o in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
        return statuses, kept

    return asyncio.run(main())


def test_app_refusals_and_failures_leave_no_garbage_cycles(tmp_path):
    """Refused and failed requests are freed as they end, not by the cyclic collector.

    A traceback kept with the exception that a frame holds would tie the frames (and the
    request body in their locals) into a cycle, for every refusal an attacker sends.
    """
    from app_helpers import unlimited_iris_settings

    key = mint_key(name="k", roles=("predict",))
    viewer = mint_key(name="v", roles=("viewer",))
    good = json.dumps(VALID).encode()
    iris = [
        ("/v1/models/nope:predict", good, key.secret),  # 404
        (PREDICT, good, "not-a-key"),  # 401
        (PREDICT, good, viewer.secret),  # 403
        (PREDICT, b'{"instances": [{"features": [99, 1, 1, 1]}]}', key.secret),  # 422
        (PREDICT, b'{"instances": [', key.secret),  # 400
        (PREDICT, good, key.secret),  # 200
    ]
    statuses, kept = _garbage_of(build_app(Iris, unlimited_iris_settings(), key, viewer), iris)
    assert statuses == {404, 401, 403, 422, 400, 200}
    assert not kept & {"frame", "traceback", "coroutine"}, kept
    boom = [("/v1/models/boom:predict", b'{"instances": [{"x": 1}]}', key.secret)]
    statuses, kept = _garbage_of(build_app(Boom, Settings(project_dir=tmp_path), key), boom)
    assert statuses == {500}
    assert not kept & {"frame", "traceback", "coroutine"}, kept
