"""``create_app`` mounted in an existing FastAPI service, served by uvicorn over real TLS.

The "library import in services" path: the service owns the server, the routes around
the model and TLS; secureserve must keep every guarantee under its mount point.
"""

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient as StarletteClient

from secureserve import create_app, load_settings
from secureserve.devcerts import ensure_dev_certificates
from secureserve.keys import create_key
from tests.server_helpers import clean_env, copy_iris, free_port

PREDICT = "/ml/v1/models/iris:predict"
SETOSA = {"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}
START_TIMEOUT_S = 30.0

SERVICE = """
import sys
from pathlib import Path

from fastapi import FastAPI

import secureserve as ss

PROJECT = Path({project!r})
sys.path.insert(0, str(PROJECT))
from app import Iris  # noqa: E402

api = FastAPI()


@api.get("/hello")
def hello() -> dict[str, str]:
    return {{"hello": "world"}}


api.mount("/ml", ss.create_app(Iris, config=ss.load_settings(project_dir=PROJECT)))
"""


class Service:
    """The FastAPI service in a uvicorn process, and an HTTPS client for it."""

    def __init__(self, port: int, ca: Path, key: str) -> None:
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
    """Start ``uvicorn service:api`` with a TLS certificate; stop it after the module."""
    root = tmp_path_factory.mktemp("service")
    project = copy_iris(root / "iris")
    key = create_key(project / "secrets" / "api_keys.toml", name="svc", roles=("predict",))
    certs = ensure_dev_certificates(root / "certs")
    (root / "service.py").write_text(SERVICE.format(project=str(project)), "utf-8")
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "service:api", "--port", str(port)),
            *("--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)),
            "--no-access-log",
        ],
        cwd=root,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    client = Service(port, certs.ca_cert, key.secret)
    try:
        _wait_until_up(client, process)
        yield client, project
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


def _audit_entries(path: Path) -> list[dict]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            break
        time.sleep(0.05)
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
