"""``create_app`` mounted in an existing FastAPI service, served by uvicorn over real TLS.

The "library import in services" path: the service owns the server, the routes around
the model and TLS; secureserve must keep every guarantee under its mount point. The
service is docs/library.md's ``service.py``: uvicorn with secureserve's TLS context
(``secureserve.tls.server_context`` through ``ssl_context_factory``), never uvicorn's
own ``--ssl-*`` context. In process, a Starlette app mounting ``create_app`` under
``/ml`` checks that ``/ml/openapi.json`` names its mount point in ``servers``.
"""

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient as StarletteClient

from secureserve import create_app, load_settings
from secureserve.devcerts import ensure_dev_certificates
from secureserve.errors import RequestRejected
from secureserve.keys import create_key
from tests.server_helpers import clean_env, copy_iris, free_port

PREDICT = "/ml/v1/models/iris:predict"
SETOSA = {"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}
START_TIMEOUT_S = 30.0

# docs/library.md's service.py, with the paths and the port of this test.
SERVICE = """
import contextlib
import sys
from pathlib import Path

import secureserve as ss
import uvicorn
from fastapi import FastAPI
from secureserve.tls import server_context

PROJECT = Path({project!r})
sys.path.insert(0, str(PROJECT))
from app import Iris  # noqa: E402

model_app = ss.create_app(Iris, config=ss.load_settings(project_dir=PROJECT))


@contextlib.asynccontextmanager
async def lifespan(_api: FastAPI):
    async with model_app.router.lifespan_context(model_app):
        yield


api = FastAPI(lifespan=lifespan)


@api.get("/hello")
def hello() -> dict[str, str]:
    return {{"hello": "world"}}


api.mount("/ml", model_app)

if __name__ == "__main__":
    tls = server_context(cert=Path({cert!r}), key=Path({key!r}))
    uvicorn.run(
        api,
        host="127.0.0.1",
        port={port},
        ssl_context_factory=lambda _c, _d: tls,
        access_log=False,
    )
"""


class Service:
    """The FastAPI service in a uvicorn process, and an HTTPS client for it."""

    def __init__(self, port: int, ca: Path, key: str) -> None:
        self.port = port
        self.ca = ca
        self.base = f"https://127.0.0.1:{port}"
        self.context = ssl.create_default_context(cafile=str(ca))
        self.key = key

    def request(self, method, path, body=None, *, key=True, headers=None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {self.key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as reply:  # noqa: S310
                return reply.status, _lower(reply.headers.items()), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, _lower(exc.headers.items()), exc.read()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """Start ``python service.py`` (docs/library.md's way); stop it after the module."""
    with _running_service(tmp_path_factory.mktemp("service")) as (client, project, _):
        yield client, project


@contextlib.contextmanager
def _running_service(root: Path) -> Iterator[tuple[Service, Path, subprocess.Popen]]:
    """``python service.py`` in ``root``, up; SIGTERM (and its exit awaited) afterwards."""
    project = copy_iris(root / "iris")
    key = create_key(project / "secrets" / "api_keys.toml", name="svc", roles=("predict",))
    certs = ensure_dev_certificates(root / "certs")
    port = free_port()
    service_py = SERVICE.format(
        project=str(project), cert=str(certs.cert), key=str(certs.key), port=port
    )
    (root / "service.py").write_text(service_py, "utf-8")
    process = subprocess.Popen(
        [sys.executable, "service.py"],
        cwd=root,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    client = Service(port, certs.ca_cert, key.secret)
    try:
        _wait_until_up(client, process)
        yield client, project, process
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_service_routes_stay_the_services(service):
    client, _ = service
    status, _, body = client.request("GET", "/hello", key=False)
    assert (status, json.loads(body)) == (200, {"hello": "world"})


def test_mounted_predict_needs_a_credential(service):
    client, _ = service
    status, headers, body = client.request("POST", PREDICT, SETOSA, key=False)
    assert status == 401
    assert headers["content-type"] == "application/problem+json"
    assert headers["www-authenticate"].startswith("Bearer")
    assert "predictions" not in body.decode()


def test_mounted_predict_serves_and_audits(service):
    client, project = service
    status, headers, body = client.request("POST", PREDICT, SETOSA)
    assert status == 200
    assert json.loads(body)["predictions"][0]["label"] == "setosa"
    assert headers["x-content-type-options"] == "nosniff"
    request_id = headers["x-request-id"]
    entries = _audit_entries(project / "audit" / "audit.jsonl")
    assert any(entry.get("request_id") == request_id for entry in entries)


def test_mounted_app_shutdown_writes_the_counted_refusals(tmp_path):
    """Stopping the service runs the model app's shutdown: the audit log gets its last records.

    A refusal of a caller without a key is counted, not written at once; its window's
    ``refusals`` record is written at shutdown, which a mounted app only gets through
    the service's lifespan (docs/library.md).
    """
    with _running_service(tmp_path) as (client, project, process):
        assert client.request("POST", PREDICT, SETOSA, key=False)[0] == 401
        audit = project / "audit" / "audit.jsonl"
        assert not any(e["event"] == "refusals" for e in _audit_entries(audit, wait=False))
    assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises it once shut down
    refusals = [e for e in _audit_entries(audit) if e["event"] == "refusals"]
    assert [(e["route"], e["status"], e["count"]) for e in refusals] == [("predict", 401, 1)]


def test_mounted_validation_errors_name_the_field(service):
    client, _ = service
    bad = {"instances": [{"features": [5.1, 3.5, 1.4]}]}
    status, _, body = client.request("POST", PREDICT, bad)
    assert status == 422
    problem = json.loads(body)
    assert "instances[0].features" in problem["detail"]
    assert "Traceback" not in body.decode()


def test_mounted_body_limit_applies(service):
    client, _ = service
    status, _, body = client.request("POST", PREDICT, b'{"instances": [' + b" " * 2_000_000)
    assert status == 413
    assert json.loads(body)["type"].endswith(":too-large")


def test_mounted_probes_are_public(service):
    client, _ = service
    assert client.request("GET", "/ml/healthz", key=False)[0] == 200
    assert client.request("GET", "/ml/readyz", key=False)[0] == 200


@pytest.mark.parametrize(
    ("cipher", "served"),
    [("ECDHE-ECDSA-AES128-GCM-SHA256", True), ("ECDHE-ECDSA-AES128-SHA", False)],
)
def test_service_tls_is_secureserves_profile(service, cipher, served):
    """The service speaks secureserve's TLS profile: an AEAD suite, never a CBC one.

    uvicorn's own context (its ``--ssl-*`` flags) would accept the CBC suite.
    """
    client, _ = service
    context = ssl.create_default_context(cafile=str(client.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 has no CBC suites to offer
    context.set_ciphers(cipher)
    with socket.create_connection(("127.0.0.1", client.port), timeout=10) as raw:
        if served:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.cipher()[0] == cipher
        else:
            with pytest.raises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_mounted_openapi_names_the_mount_point(iris_project):
    """/openapi.json of a mounted app has ``servers`` = its ASGI root path; unmounted, none.

    The same app under two mount points, and under a server root path, gets each its
    own prefix (the documents are cached per root path, not shared).
    """
    key = create_key(iris_project / "secrets" / "api_keys.toml", name="o", roles=("predict",))
    model_app = create_app(_iris(iris_project), config=load_settings(project_dir=iris_project))
    service = Starlette(routes=[Mount("/ml", app=model_app), Mount("/alt", app=model_app)])
    auth = {"Authorization": f"Bearer {key.secret}"}

    def document(app, path, root_path=""):
        client = StarletteClient(app, base_url="https://testserver", root_path=root_path)
        reply = client.get(path, headers=auth)
        assert reply.status_code == 200, reply.text
        return reply

    ml = document(service, "/ml/openapi.json")
    assert ml.json()["servers"] == [{"url": "/ml"}]
    assert list(ml.json())[:3] == ["openapi", "info", "servers"]
    assert "/v1/models/iris:predict" in ml.json()["paths"]
    assert document(service, "/ml/openapi.json").content == ml.content
    assert document(service, "/alt/openapi.json").json()["servers"] == [{"url": "/alt"}]
    behind = document(service, "/api/ml/openapi.json", root_path="/api")
    assert behind.json()["servers"] == [{"url": "/api/ml"}]
    at_root = document(model_app, "/openapi.json").json()
    assert "servers" not in at_root
    assert {k: v for k, v in ml.json().items() if k != "servers"} == at_root


def test_mounted_routes_keep_their_names_in_metrics(iris_project):
    """Route names (metrics, audit) go by the path inside the app, not the mount's prefix."""
    key = create_key(
        iris_project / "secrets" / "api_keys.toml", name="m", roles=("predict", "metrics")
    )
    model_app = create_app(_iris(iris_project), config=load_settings(project_dir=iris_project))
    client = StarletteClient(
        Starlette(routes=[Mount("/ml", app=model_app)]), base_url="https://testserver"
    )
    auth = {"Authorization": f"Bearer {key.secret}"}
    assert client.post(PREDICT, json=SETOSA, headers=auth).status_code == 200
    assert client.get("/ml/readyz").status_code == 200
    text = client.get("/ml/metrics", headers=auth).text
    assert 'secureserve_requests_total{route="predict",status="200"} 1.0' in text
    assert 'secureserve_requests_total{route="readyz",status="200"} 1.0' in text
    assert 'route="other"' not in text


def test_mounted_app_errors_never_reach_the_services_exception_handlers(iris_project):
    """The service's exception handlers answer for its routes, never for the model's.

    Starlette's function endpoints look exception handlers up in the ASGI scope, which
    the service shares with the mounted app: the app's refusals (403, 404) and failures
    (500) must still be its own redacted problems.
    """
    key = create_key(iris_project / "secrets" / "api_keys.toml", name="h", roles=("predict",))
    model_app = create_app(_iris(iris_project), config=load_settings(project_dir=iris_project))
    api = FastAPI()
    api.mount("/ml", model_app)

    @api.exception_handler(RequestRejected)
    @api.exception_handler(ValueError)
    async def services_own(_request, exc):  # meant for the service's routes
        return JSONResponse({"service": repr(exc)}, status_code=418)

    client = StarletteClient(api, base_url="https://testserver", raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {key.secret}"}
    for path, status in (
        ("/ml/v1/models/iris", 403),
        ("/ml/v1/models/absent", 404),
        ("/ml/metrics", 403),
    ):
        reply = client.get(path, headers=auth)
        assert reply.status_code == status, reply.text
        assert reply.headers["content-type"] == "application/problem+json"
        assert "service" not in reply.json()

    class Broken:  # the models' state failing in a function endpoint (GET /readyz)
        def __getattr__(self, name):
            raise ValueError("secret /etc/internal detail")

    model_app.state.models = Broken()
    reply = client.get("/ml/readyz")
    assert reply.status_code == 500
    assert reply.headers["content-type"] == "application/problem+json"
    assert "secret" not in reply.text
    assert "service" not in reply.text


def test_mounted_app_refuses_plaintext_in_a_fastapi_service(iris_project):
    """Served without TLS by its host service, the model still refuses to answer."""
    key = create_key(iris_project / "secrets" / "api_keys.toml", name="p", roles=("predict",))
    api = FastAPI()
    api.mount(
        "/ml", create_app(_iris(iris_project), config=load_settings(project_dir=iris_project))
    )
    plain = StarletteClient(api, base_url="http://testserver")
    response = plain.post(PREDICT, json=SETOSA, headers={"Authorization": f"Bearer {key.secret}"})
    assert response.status_code == 403
    assert response.json()["type"].endswith("https-required")


# --- helpers -----------------------------------------------------------------------


def _iris(project: Path) -> type:
    sys.path.insert(0, str(project))
    try:
        sys.modules.pop("app", None)
        from app import Iris  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("app", None)
    return Iris


def _lower(pairs) -> dict[str, str]:
    return {name.lower(): value for name, value in pairs}


def _wait_until_up(client: Service, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"the service exited: {stderr.decode()[-2000:]}")
        try:
            if client.request("GET", "/ml/readyz", key=False)[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("the service did not become ready")


def _audit_entries(path: Path, *, wait: bool = True) -> list[dict]:
    """The records of the audit file (waiting up to 5 s for its first line, with ``wait``)."""
    if not wait:
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            break
        time.sleep(0.05)
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
