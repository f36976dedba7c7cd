"""Tests of secureserve.middleware: in-flight limit, authentication, roles, the access log."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx2
import msgspec
import pytest
from app_helpers import (
    Echo,
    Number,
    asgi_client,
    bearer,
    build_app,
    json_lines,
    json_logs,
    replaced,
    unlimited_iris_settings,
)
from conftest import load_iris

import secureserve as ss
from secureserve.config import Settings
from secureserve.keys import KeyStore, mint_key

PREDICT = "/v1/models/iris:predict"
VALID = {"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}
PROBLEM = "application/problem+json"
NOW = datetime.now(UTC)


Iris = load_iris()

PREDICT_KEY = mint_key(name="predictor", roles=("predict",))
ADMIN_KEY = mint_key(name="admin", roles=("admin",))
REVOKED_KEY = mint_key(name="revoked", roles=("predict", "admin"))
EXPIRED_KEY = mint_key(
    name="expired", roles=("predict", "admin"), now=NOW - timedelta(days=2), expires_in=timedelta(1)
)
NOT_STORED_KEY = mint_key(name="unknown", roles=("predict",))
RECORDS = [
    PREDICT_KEY.record,
    ADMIN_KEY.record,
    msgspec.structs.replace(REVOKED_KEY.record, revoked=NOW - timedelta(hours=1)),
    EXPIRED_KEY.record,
]


def _iris_app(**server):
    """create_app(Iris) from examples/iris with the test key records and ``server`` overrides.

    The audit log goes to a fresh temporary folder, and rate limits are off: these
    tests send many refused credentials on purpose (limits have their own tests).
    """
    return build_app(Iris, unlimited_iris_settings(**server), records=RECORDS)


@pytest.fixture(scope="module")
def client():
    """One iris app with the test key store, shared by the read-only matrices."""
    with asgi_client(_iris_app()) as test_client:
        yield test_client


@pytest.fixture
def log_output():
    """Route secureserve's JSON logs into a buffer; yields the buffer."""
    with json_logs(io.BytesIO()) as buffer:
        yield buffer


# --- InFlightLimit -------------------------------------------------------------------


class Blocking(ss.Model[Number, Echo]):
    """A predict that blocks until the test releases it."""

    name = "toy"

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def predict(self, batch):
        """Wait for the release, then echo."""
        self.started.set()
        self.release.wait(5)
        return [Echo(y=i.x) for i in batch]


async def _saturate(model, app, headers):
    """Hold one request inside predict, probe the app meanwhile, then let it finish."""
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="https://testserver", headers=headers
    ) as client:
        body = {"instances": [{"x": 1.0}]}
        first = asyncio.ensure_future(client.post("/v1/models/toy:predict", json=body))
        assert await asyncio.to_thread(model.started.wait, 5)
        during = {
            "predict": await client.post("/v1/models/toy:predict", json=body),
            "list": await client.get("/v1/models"),
            "healthz": await client.get("/healthz"),
            "readyz": await client.get("/readyz"),
        }
        model.release.set()
        held = await first
        after = await client.post("/v1/models/toy:predict", json=body)
    next(iter(app.state.models)).runner.close()
    return held, during, after


def test_inflight_limit_refuses_beyond_bound_but_not_probes(tmp_path):
    """With max_in_flight=1 and one request in predict, others get 503 + Retry-After; probes 200."""
    model = Blocking()
    settings = replaced(Settings(project_dir=tmp_path), server={"max_in_flight": 1})
    key = mint_key(name="toy", roles=("predict",))
    app = build_app(model, settings, key)
    held, during, after = asyncio.run(_saturate(model, app, bearer(key)))
    for name in ("predict", "list"):
        response = during[name]
        assert response.status_code == 503, name
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["type"] == "urn:secureserve:problem:overloaded"
    assert during["healthz"].status_code == 200
    assert during["readyz"].status_code == 200
    assert held.status_code == 200
    assert after.status_code == 200  # the slot was given back


# --- Authentication ------------------------------------------------------------------


INVALID_CREDENTIALS = {
    "basic": "Basic dXNlcjpwYXNzd29yZA==",
    "bearer-no-token": "Bearer",
    "bearer-blank-token": "Bearer    ",
    "garbage-token": "Bearer garbage",
    "token-without-scheme": PREDICT_KEY.secret,
    "unknown-id": "Bearer ss_000000000000_" + "A" * 43,
    "not-stored-key": f"Bearer {NOT_STORED_KEY.secret}",
    "wrong-secret": f"Bearer {PREDICT_KEY.secret[:-4]}AAAA",
    "truncated-key": f"Bearer {PREDICT_KEY.secret[:-1]}",
    "key-with-suffix": f"Bearer {PREDICT_KEY.secret}x",
    "revoked": f"Bearer {REVOKED_KEY.secret}",
    "expired": f"Bearer {EXPIRED_KEY.secret}",
    "over-long": "Bearer " + "a" * 10_000,
    "over-long-valid-prefix": f"Bearer {PREDICT_KEY.secret}" + " " * 5000,
    "two-tokens": f"Bearer {PREDICT_KEY.secret} {ADMIN_KEY.secret}",
}


def _stable_problem(response):
    """The problem body without its request id (the one part allowed to differ)."""
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return {k: v for k, v in body.items() if k != "request_id"}


@pytest.mark.parametrize("path", [PREDICT, "/v1/models", "/v1/models/iris", "/openapi.json"])
def test_authentication_missing_credentials_say_no_bearer_token(client, path):
    """No Authorization header: 401, WWW-Authenticate: Bearer, detail "no bearer token"."""
    response = client.request("POST" if path == PREDICT else "GET", path, json=VALID)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == PROBLEM
    assert _stable_problem(response) == {
        "type": "urn:secureserve:problem:unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "error": "Unauthorized: no bearer token",
        "detail": "no bearer token",
    }


@pytest.mark.parametrize("case", list(INVALID_CREDENTIALS))
def test_authentication_invalid_credentials_are_indistinguishable(client, case):
    """Every bad credential gets the same 401 body (but request_id) and WWW-Authenticate."""
    response = client.post(
        PREDICT, json=VALID, headers={"Authorization": INVALID_CREDENTIALS[case]}
    )
    reference = client.post(
        PREDICT, json=VALID, headers={"Authorization": "Bearer ss_ffffffffffff_" + "B" * 43}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == reference.headers["www-authenticate"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == PROBLEM
    assert _stable_problem(response) == _stable_problem(reference)
    assert _stable_problem(response)["detail"] == "invalid credentials"
    assert response.headers["x-request-id"] != reference.headers["x-request-id"]
    assert "predictions" not in response.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_authentication_valid_key_is_accepted(client, scheme):
    """A stored, active key is accepted; the auth scheme is case-insensitive (RFC 9110)."""
    response = client.post(
        PREDICT, json=VALID, headers={"Authorization": f"{scheme} {PREDICT_KEY.secret}"}
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "setosa"


def test_authentication_expired_key_was_valid_before_expiry():
    """The expired key's record is only refused for its expiry (it verifies at an earlier time)."""
    store = KeyStore(None, records=RECORDS)
    assert store.verify(EXPIRED_KEY.secret, now=NOW - timedelta(days=1, hours=12)) is not None
    assert store.verify(EXPIRED_KEY.secret) is None


# --- roles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "method", "path", "role"),
    [
        (PREDICT_KEY, "GET", "/v1/models/iris", "admin"),
        (ADMIN_KEY, "POST", PREDICT, "predict"),
    ],
    ids=["predict-key-on-metadata", "admin-key-on-predict"],
)
def test_roles_missing_role_is_403(client, key, method, path, role):
    """A valid key without the route's role gets 403 naming the role, not 401 or 404."""
    response = client.request(method, path, json=VALID, headers=bearer(key))
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM
    assert "www-authenticate" not in response.headers
    body = _stable_problem(response)
    assert body["type"] == "urn:secureserve:problem:forbidden"
    assert body["detail"] == f"this credential lacks the '{role}' role"


# --- RequestContext: the access log ------------------------------------------------------


def test_request_context_access_log_line_fields(log_output):
    """One access line per request with request id, key id, route, status and latency."""
    with asgi_client(_iris_app()) as client:
        ok = client.post(PREDICT, json=VALID, headers=bearer(PREDICT_KEY))
        refused = client.get("/v1/models")
        probe = client.get("/healthz")
    access = [line for line in json_lines(log_output) if line.get("event") == "request"]
    assert len(access) == 3
    by_id = {line["request_id"]: line for line in access}
    line = by_id[ok.headers["x-request-id"]]
    assert line["key_id"] == PREDICT_KEY.record.id
    assert line["status"] == 200
    assert line["method"] == "POST"
    assert line["path"] == PREDICT
    assert line["model_version"] == "1.0.0"
    assert isinstance(line["latency_ms"], float)
    assert line["latency_ms"] >= 0
    assert line["level"] == "info"
    denied = by_id[refused.headers["x-request-id"]]
    assert (denied["status"], denied["key_id"], denied["reason"]) == (401, None, "missing")
    assert by_id[probe.headers["x-request-id"]]["status"] == 200


def test_request_context_log_reason_says_which_check_failed(log_output):
    """The client's 401 is opaque, but the log line with its request id names the reason."""
    with asgi_client(_iris_app()) as client:
        revoked = client.get("/v1/models", headers=bearer(REVOKED_KEY))
        basic = client.get("/v1/models", headers={"Authorization": "Basic eDp5"})
    by_id = {line["request_id"]: line for line in json_lines(log_output) if "status" in line}
    assert by_id[revoked.headers["x-request-id"]]["reason"] == "unknown-revoked-or-expired-key"
    assert by_id[basic.headers["x-request-id"]]["reason"] == "not-bearer"


def test_request_context_never_logs_the_raw_key(log_output):
    """The API key appears nowhere in the log output, even when sent in odd places."""
    keys = [PREDICT_KEY, REVOKED_KEY, NOT_STORED_KEY]
    with asgi_client(_iris_app()) as client:
        for key in keys:
            client.post(PREDICT, json=VALID, headers=bearer(key))
            client.get(f"/v1/models/{key.secret}", headers=bearer(key))
            client.get("/v1/models", params={"api_key": key.secret}, headers=bearer(key))
            client.get("/healthz", headers={"X-Request-ID": key.secret, **bearer(key)})
            client.post(
                PREDICT,
                content=json.dumps({"instances": [{"features": key.secret}]}),
                headers={"content-type": "application/json", **bearer(key)},
            )
        client.get("/v1/models", headers={"Authorization": "Bearer not-a-key-but-secret-ish"})
    text = log_output.getvalue().decode()
    assert text.count('"event":"request"') == len(keys) * 5 + 1
    for key in keys:
        secret_part = key.secret[16:]  # after "ss_<12 hex id>_"
        assert key.secret not in text
        assert secret_part not in text
    assert "not-a-key-but-secret-ish" not in text


def test_request_context_latency_covers_the_handler(tmp_path, log_output):
    """latency_ms measures the whole request, including time spent in predict."""

    class Sleepy(ss.Model[Number, Echo]):
        """Sleeps 50 ms."""

        name = "toy"

        def predict(self, batch):
            """Sleep, then echo."""
            time.sleep(0.05)
            return [Echo(y=i.x) for i in batch]

    key = mint_key(name="toy", roles=("predict",))
    app = build_app(Sleepy, Settings(project_dir=tmp_path), key)
    with asgi_client(app, key) as client:
        response = client.post("/v1/models/toy:predict", json={"instances": [{"x": 1}]})
    assert response.status_code == 200
    (line,) = [x for x in json_lines(log_output) if x.get("event") == "request"]
    assert line["latency_ms"] >= 50
