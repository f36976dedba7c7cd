"""Who may call, how often, and what is recorded, seen through the HTTP app.

JWT and client-certificate identities beside API keys, the per-IP throttle on failed
authentication, per-principal and per-model limits and quotas on predictions, and the
audit trail they leave (records, digests, fail-closed writing, admin events, and
``secureserve audit verify``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

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
)
from conftest import load_iris, shared_fixtures
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from server_helpers import copy_iris, make_client_pki, production_iris, set_toml
from starlette.testclient import TestClient as StarletteClient
from test_tokens import FIXTURE_REASONS, mint

import secureserve as ss
from secureserve import keys as keys_module
from secureserve.app import create_app
from secureserve.audit import chain_files, chainfile, verify_chain
from secureserve.cli import main
from secureserve.config import load_settings
from secureserve.keys import create_key, mint_key, revoke_key
from secureserve.release import lock_project
from secureserve.testing import TestClient
from secureserve.tls import peer_certificate_subject

PREDICT = "/v1/models/iris:predict"
FLOWER = {"features": [5.1, 3.5, 1.4, 0.2]}
VALID = {"instances": [FLOWER]}
PROBLEM = "application/problem+json"
DIGEST = re.compile(r"hmac-sha256:[0-9a-f]{64}")
FIXTURES = shared_fixtures()
ISS = "https://issuer.test"
AUD = "secureserve"
OWN_KID = "access-test-1"
UNKNOWN_KEY = "ss_0123456789ab_" + "A" * 43  # well-formed, matches no record


Iris = load_iris()


class Counted(ss.Model[Number, Echo]):
    """Echoes its input and counts how often ``predict`` ran (no artifacts to load)."""

    name = "counted"
    version = "1"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, batch):
        self.calls += 1
        return [Echo(y=item.x) for item in batch]


# --------------------------------------------------------------------------- helpers


def _settings(project: Path, **sections: dict[str, Any]):
    """The project's settings (environment ignored) with keys of whole sections replaced.

    ``_settings(p, limits={"quota": None})`` changes ``[limits] quota`` only. With
    ``limits`` given, ``max_instances`` is 1 unless set: small test rates must admit a
    whole request (start-up refuses them otherwise).
    """
    settings = load_settings(project_dir=project, environ={})
    if "limits" in sections:
        sections = {"server": {"max_instances": 1}} | sections
    return replaced(settings, **sections)


def _app(settings, *api_keys, model=Iris):
    """create_app with exactly ``api_keys`` in an in-memory key store."""
    return build_app(model, settings, *api_keys, audit_key=os.urandom(32))


def _client(app, *, ip: str = "192.0.2.10") -> StarletteClient:
    """An https client for ``app`` seen as coming from ``ip``, without credentials."""
    return asgi_client(app, ip=ip)


def _predict(client, credential=None, body=None):
    headers = bearer(credential) if credential is not None else {}
    return client.post(PREDICT, json=VALID if body is None else body, headers=headers)


def _problem(reply, status: int, slug: str) -> dict[str, Any]:
    """Assert ``reply`` is a problem+json of ``status`` and ``slug``; return its body."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"] == PROBLEM
    body = reply.json()
    assert body["type"] == f"urn:secureserve:problem:{slug}"
    assert body["status"] == status
    assert body["request_id"] == reply.headers["x-request-id"]
    return body


def _retry_after(reply) -> int:
    seconds = int(reply.headers["retry-after"])
    assert seconds >= 1
    return seconds


def _metrics(app, key) -> str:
    """/metrics read with ``key`` (metrics role) from an address no test throttles."""
    reply = _client(app, ip="198.51.100.77").get("/metrics", headers=bearer(key))
    assert reply.status_code == 200, reply.text
    return reply.text


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _by_request(records: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    found = [
        r
        for r in records
        if r["event"] in {"request", "refusals"} and r["request_id"] == request_id
    ]
    assert len(found) == 1, (request_id, records)
    return found[0]


@pytest.fixture
def access_lines():
    """Route secureserve's JSON logs into a buffer; returns ``request_id -> access line``.

    Create the app inside the test (after this fixture) so its access writer uses it.
    """
    with json_logs(io.BytesIO()) as buffer:

        def access(request_id: str) -> dict[str, Any]:
            lines = json_lines(buffer)
            found = [
                line
                for line in lines
                if line.get("event") == "request" and line.get("request_id") == request_id
            ]
            assert len(found) == 1, (request_id, lines)
            return found[0]

        yield access


# --------------------------------------------------------------------------- JWT


def _fixture_tokens() -> list[dict[str, Any]]:
    if FIXTURES is None:
        return []
    lines = (FIXTURES / "tokens.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


TOKENS = _fixture_tokens()
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="needs ../shared/fixtures")


@pytest.fixture(scope="module")
def own_key() -> dict[str, tuple[Any, dict[str, Any], str]]:
    """Our own RS256 signing key, in the ``kid -> (private, jwk, alg)`` shape of test_tokens."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=OWN_KID, alg="RS256", use="sig")
    return {OWN_KID: (private, jwk, "RS256")}


def _own_token(own_key, **changes: Any) -> str:
    """A token valid now (real clock) signed by our key; ``changes`` edit the claims."""
    now = int(time.time())
    times = {"iat": now - 60, "nbf": now - 60, "exp": now + 3600}
    return mint(own_key, kid=OWN_KID, **(times | changes))


@pytest.fixture
def jwt_app(tmp_path, own_key, access_lines):
    """Iris with JWT verification (the shared fixture key when present, and ours) and API keys.

    The per-IP failure throttle is off: these tests send many refused tokens on purpose.
    Yields ``(app, api_key, access)``; the API key holds the predict and metrics roles.
    """
    project = copy_iris(tmp_path / "iris")
    jwks = [own_key[OWN_KID][1]]
    if FIXTURES is not None:
        jwks += json.loads((FIXTURES / "jwks.json").read_text())["keys"]
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": jwks}))
    settings = _settings(
        project,
        auth={
            "jwks_file": jwks_file,
            "jwt_issuer": ISS,
            "jwt_audience": AUD,
            "jwt_algorithms": ("RS256",),
        },
        limits={"auth_failures_per_ip": None},
    )
    api_key = mint_key(name="beside-jwt", roles=("predict", "metrics"))
    app = _app(settings, api_key)
    with _client(app) as client:
        yield client, app, api_key, access_lines


@needs_fixtures
@pytest.mark.parametrize("row", TOKENS, ids=lambda row: row["name"])
def test_jwt_shared_token_accepted_or_refused(jwt_app, row):
    """The shared `valid` token predicts; every other one is a uniform 401 whose log says why."""
    client, _, _, access = jwt_app
    reply = _predict(client, row["token"])
    if row["expect"] == "accept":
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["predictions"]) == 1
        assert access(reply.headers["x-request-id"])["key_id"] == "jwt:test-client"
        return
    body = _problem(reply, 401, "unauthorized")
    assert body["detail"] == "invalid credentials"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    line = access(reply.headers["x-request-id"])
    assert line["status"] == 401
    assert line["reason"] == FIXTURE_REASONS[row["name"]]


@needs_fixtures
def test_jwt_shared_refusals_identical_but_for_request_id(jwt_app):
    """All refused shared tokens get byte-identical bodies once request_id is removed."""
    client, _, _, access = jwt_app
    bodies, challenges, reasons = set(), set(), set()
    for row in TOKENS:
        if row["expect"] == "refuse":
            reply = _predict(client, row["token"])
            assert reply.status_code == 401
            body = reply.json()
            assert body.pop("request_id") == reply.headers["x-request-id"]
            bodies.add(json.dumps(body, sort_keys=True))
            challenges.add(reply.headers["www-authenticate"])
            reasons.add(access(reply.headers["x-request-id"])["reason"])
    assert len(bodies) == 1
    assert len(challenges) == 1
    assert challenges.pop().startswith("Bearer")
    assert reasons == set(FIXTURE_REASONS.values())  # the log tells the checks apart


@pytest.mark.parametrize("credential", ["jwt", "unknown-key", "basic-scheme"])
def test_jwt_refusal_body_same_as_other_bad_credentials(jwt_app, own_key, credential):
    """A refused JWT, an unknown API key and a non-Bearer scheme get the same 401 body."""
    client, _, _, access = jwt_app
    headers = {
        "jwt": bearer(_own_token(own_key, aud="someone-else")),
        "unknown-key": bearer(UNKNOWN_KEY),
        "basic-scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    }[credential]
    reference = client.post(PREDICT, json=VALID, headers=bearer(_own_token(own_key, iss="x")))
    reply = client.post(PREDICT, json=VALID, headers=headers)
    first, second = reference.json(), _problem(reply, 401, "unauthorized")
    assert first.pop("request_id") != second.pop("request_id")
    assert first == second
    assert reply.headers["www-authenticate"] == reference.headers["www-authenticate"]
    assert (
        access(reply.headers["x-request-id"])["reason"]
        != access(reference.headers["x-request-id"])["reason"]
    )


def test_metrics_count_jwt_refusals_by_reason(jwt_app, own_key):
    """An expired token and a forged signature are counted under their own reasons.

    The label values are the fixed set of JWT refusal reasons (never client text), so
    they are as safe as the API-key reasons; lumping them into "other" would hide a
    clock-skew incident (expired) behind a forgery attempt (bad signature).
    """
    client, app, api_key, access = jwt_app
    expired = _own_token(own_key, exp=int(time.time()) - 3600)
    head, payload, signature = _own_token(own_key).split(".")
    forged = f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    for token, reason in ((expired, "jwt-expired"), (forged, "jwt-bad-signature")):
        reply = _predict(client, token)
        assert reply.status_code == 401
        assert access(reply.headers["x-request-id"])["reason"] == reason
    text = _metrics(app, api_key)
    assert 'secureserve_auth_failures_total{reason="jwt-expired"} 1.0' in text
    assert 'secureserve_auth_failures_total{reason="jwt-bad-signature"} 1.0' in text


def test_jwt_models_claim_hides_other_models(jwt_app, own_key):
    """A token limited to `other` gets 404 on iris and an empty /v1/models; without it, iris."""
    client, _, _, _ = jwt_app
    limited = _own_token(own_key, models=["other"])
    _problem(_predict(client, limited), 404, "not-found")
    assert client.get("/v1/models", headers=bearer(limited)).json() == {"models": []}
    listed = client.get("/v1/models", headers=bearer(_own_token(own_key))).json()
    assert [m["name"] for m in listed["models"]] == ["iris"]


def test_jwt_admin_only_role_is_forbidden_to_predict(jwt_app, own_key):
    """A verified token whose only role is admin gets 403, not 200 and not 401."""
    client, _, _, _ = jwt_app
    _problem(_predict(client, _own_token(own_key, role="admin")), 403, "forbidden")


@pytest.mark.parametrize("kind", ["api-key", "jwt"])
def test_jwt_and_api_keys_both_authenticate(jwt_app, own_key, kind):
    """With JWT configured, API keys keep working, and our own minted token predicts too."""
    client, _, api_key, access = jwt_app
    credential = api_key if kind == "api-key" else _own_token(own_key)
    reply = _predict(client, credential)
    assert reply.status_code == 200, reply.text
    principal = api_key.record.id if kind == "api-key" else "jwt:client-7"
    assert access(reply.headers["x-request-id"])["key_id"] == principal


# --------------------------------------------------------------------------- mTLS identity


def test_peer_certificate_subject_renders_cn():
    """The subject the app sees for make_client_pki's certificates is exactly "CN=<name>"."""
    peer = {"subject": ((("commonName", "alice"),),)}
    assert peer_certificate_subject(peer) == "CN=alice"


@pytest.fixture(scope="module")
def mtls_identity_server(tmp_path_factory):
    """A real server under mTLS whose client CA bundle trusts alice's and bob's CAs.

    Only alice's subject is mapped in ``[[auth.client_certificates]]`` (role predict).
    Yields ``(server, {"alice": pki, "bob": pki})``.
    """
    base = tmp_path_factory.mktemp("access-mtls")
    pki = {
        "alice": make_client_pki(base / "pki", "alice", "alice"),
        "bob": make_client_pki(base / "pki", "bob", "bob"),
    }
    bundle = base / "pki" / "client-cas.pem"
    bundle.write_bytes(pki["alice"].ca.read_bytes() + pki["bob"].ca.read_bytes())
    production = production_iris(base, "mtls")
    set_toml(production.project, "tls", client_ca=bundle)
    with (production.project / "secureserve.toml").open("a") as toml:
        toml.write('\n[[auth.client_certificates]]\nsubject = "CN=alice"\nroles = ["predict"]\n')
    env = {**production.tls_env(), "SECURESERVE_LIMITS__AUTH_FAILURES_PER_IP": "null"}
    with production.running(env) as server:
        yield server, pki


@pytest.mark.slow
@pytest.mark.parametrize(
    ("who", "credential", "status"),
    [
        ("alice", None, 200),  # the mapped certificate is the credential
        ("bob", None, 401),  # trusted but not mapped: no principal
        ("bob", "key", 200),  # a bearer key wins over the certificate
        ("alice", "bad", 401),  # a failing bearer never falls back to the certificate
    ],
)
def test_mtls_mapped_certificate_identity(mtls_identity_server, who, credential, status):
    """A mapped client certificate authenticates alone; others need a valid bearer key."""
    server, pki = mtls_identity_server
    context = server.client_context(cert=pki[who].cert, key=pki[who].key)
    headers = {"Content-Type": "application/json"}
    if credential is not None:
        headers |= bearer(server.key if credential == "key" else UNKNOWN_KEY)
    reply = server.request(
        "POST", PREDICT, body=json.dumps(VALID).encode(), headers=headers, context=context
    )
    assert reply.status == status, reply.body
    if status == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer")
    else:
        assert len(reply.json()["predictions"]) == 1


# --------------------------------------------------------------------------- per-IP limit


def test_auth_failures_per_ip_blocks_before_credentials(iris_project, access_lines):
    """Three bad keys, then even a valid key from that address is a 429; probes still answer."""
    settings = _settings(iris_project, limits={"auth_failures_per_ip": "3/minute"})
    key = mint_key(name="good", roles=("predict", "metrics"))
    app = _app(settings, key)
    with _client(app) as client:
        for _ in range(3):
            _problem(_predict(client, UNKNOWN_KEY), 401, "unauthorized")
        blocked = _predict(client, key)
        _problem(blocked, 429, "rate-limited")
        _retry_after(blocked)
        assert "www-authenticate" not in blocked.headers
        assert access_lines(blocked.headers["x-request-id"])["reason"] == "auth-failures-per-ip"
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        # Another address is not affected.
        assert _predict(_client(app, ip="192.0.2.11"), key).status_code == 200
        text = _metrics(app, key)
    assert 'secureserve_rate_limited_total{reason="auth-failures-per-ip"} 1.0' in text
    assert 'secureserve_auth_failures_total{reason="unknown-revoked-or-expired-key"} 3.0' in text


# --------------------------------------------------------------------------- limits, quotas


@pytest.mark.parametrize(
    ("limits", "allowed", "slug", "reason"),
    [
        ({"per_principal": "2/minute", "quota": None}, 2, "rate-limited", "per_principal"),
        ({"per_principal": "100/minute", "quota": "3/day"}, 3, "quota-exhausted", "quota"),
        (
            {"per_principal": None, "per_model": "2/minute", "quota": None},
            2,
            "rate-limited",
            "per_model",
        ),
    ],
    ids=["per-principal", "quota", "per-model"],
)
def test_limits_predict_refused_after_budget(  # noqa: PLR0917 - parametrized
    iris_project, access_lines, limits, allowed, slug, reason
):
    """N predictions pass (no RateLimit headers on success); the next is a 429 with them."""
    key = mint_key(name="budget", roles=("predict", "metrics"))
    app = _app(_settings(iris_project, limits=limits), key)
    with _client(app) as client:
        for _ in range(allowed):
            reply = _predict(client, key)
            assert reply.status_code == 200, reply.text
            assert "ratelimit-limit" not in reply.headers
        refused = _predict(client, key)
        _problem(refused, 429, slug)
        _retry_after(refused)
        assert refused.headers["ratelimit-limit"] == str(allowed)
        assert refused.headers["ratelimit-remaining"] == "0"
        assert int(refused.headers["ratelimit-reset"]) >= 1
        assert access_lines(refused.headers["x-request-id"])["reason"] == reason
        text = _metrics(app, key)
    assert f'secureserve_rate_limited_total{{reason="{reason}"}} 1.0' in text


@pytest.mark.parametrize(
    ("limits", "shared"),
    [
        ({"per_principal": "2/minute", "quota": None}, False),
        ({"per_principal": None, "per_model": "2/minute", "quota": None}, True),
        ({"per_principal": None, "quota": "2/day"}, False),
    ],
    ids=["per-principal", "per-model", "quota"],
)
def test_limits_budget_per_key_or_shared_per_model(iris_project, limits, shared):
    """Per-principal rates and quotas are per key; the per-model rate is one budget for all."""
    first = mint_key(name="first", roles=("predict",))
    second = mint_key(name="second", roles=("predict",))
    app = _app(_settings(iris_project, limits=limits), first, second)
    with _client(app) as client:
        assert _predict(client, first).status_code == 200
        assert _predict(client, first).status_code == 200
        assert _predict(client, first).status_code == 429
        expected = 429 if shared else 200
        assert _predict(client, second).status_code == expected
        assert _predict(client, second).status_code == expected


# --------------------------------------------------------------------------- audit


@pytest.fixture
def audit_path(tmp_path) -> Path:
    return tmp_path / "audit" / "audit.jsonl"


def test_audit_predictions_recorded_and_chain_verifies(iris_project, audit_path):
    """Each prediction has one record naming who, what and the keyed digests; the chain holds."""
    bodies = [VALID, VALID, {"instances": [{"features": [6.7, 3.0, 5.2, 2.3]}]}]
    with TestClient(Iris, project_dir=iris_project, audit_path=audit_path) as client:
        ids = []
        for body in bodies:
            reply = client.post(PREDICT, json=body)
            assert reply.status_code == 200
            ids.append(reply.headers["x-request-id"])
    result = verify_chain(chain_files(audit_path))
    assert result.ok, result
    records = _records(audit_path)
    assert result.records == len(records) == 3
    found = [_by_request(records, request_id) for request_id in ids]
    for record in found:
        assert record["principal"]
        assert record["principal"] == found[0]["principal"]
        assert record["roles"] == ["predict"]
        assert record["route"] == "predict"
        assert record["model"] == "iris"
        assert record["model_version"] == "1.0.0"
        assert record["decision"] == "allowed"
        assert record["status"] == 200
        assert DIGEST.fullmatch(record["input_digest"])
        assert DIGEST.fullmatch(record["output_digest"])
    assert found[0]["input_digest"] == found[1]["input_digest"] != found[2]["input_digest"]
    assert found[0]["output_digest"] == found[1]["output_digest"] != found[2]["output_digest"]


def test_audit_never_holds_request_content(iris_project, audit_path):
    """Neither a refused field's value nor a valid request's numbers reach the audit file."""
    marker = "MARKER-5f0c2e1d-never-audit-me"
    numbers = [4.3141592, 3.2718281, 1.4142135, 0.5772156]
    with TestClient(Iris, project_dir=iris_project, audit_path=audit_path) as client:
        refused = client.predict([{"features": [1, 2, 3, 4], "note": marker}])
        assert refused.status_code == 422
        assert client.predict([{"features": numbers}]).status_code == 200
    text = audit_path.read_text()
    assert len(text.splitlines()) == 2
    assert marker not in text
    assert "MARKER" not in text
    for number in numbers:
        assert str(number)[:5] not in text


@pytest.mark.parametrize(
    ("kind", "status", "decision"),
    [
        ("no-credentials", 401, "denied"),
        ("unknown-field", 422, "denied"),
        ("over-the-rate", 429, "limited"),
    ],
)
def test_audit_refusals_recorded_with_decision(iris_project, kind, status, decision):
    """A refused prediction is audited: 401 and 422 as denied, 429 as limited."""
    settings = _settings(iris_project, limits={"per_principal": "1/minute"})
    key = mint_key(name="refused", roles=("predict",))
    app = _app(settings, key)
    with _client(app) as client:
        if kind == "no-credentials":
            reply = _predict(client)
        elif kind == "unknown-field":
            reply = _predict(client, key, {"instances": [{"features": [1, 2, 3, 4], "x": 1}]})
        else:
            assert _predict(client, key).status_code == 200
            reply = _predict(client, key)
        assert reply.status_code == status, reply.text
    path = settings.audit.path
    assert verify_chain(chain_files(path)).ok
    record = _by_request(_records(path), reply.headers["x-request-id"])
    assert record["decision"] == decision
    assert record["status"] == status
    assert record["route"] == "predict"
    assert record["principal"] == (None if status == 401 else key.record.id)
    assert record.get("input_digest") is None
    assert record.get("output_digest") is None


def _counted_settings(tmp_path: Path, **audit: Any):
    project = tmp_path / "counted"
    (project / "models").mkdir(parents=True)
    return _settings(project, audit=audit)


@pytest.mark.usefixtures("audit_looked_at_every_time")
@pytest.mark.parametrize("damage", ["delete-file", "folder-replaced-by-file"])
def test_audit_deleted_file_recreated_only_if_possible(tmp_path, audit_path, damage):
    """A deleted audit file is recreated and serving goes on; if it cannot be, 503.

    Recreated: the new file's first record says so and continues the chain. Not
    recreatable (its folder replaced by a file): predictions are refused before the
    model runs.
    """
    model = Counted()
    settings = _counted_settings(tmp_path)
    with TestClient(model, config=settings, audit_path=audit_path) as client:
        assert client.predict([{"x": 1.0}]).status_code == 200
        audit_path.unlink()
        if damage == "folder-replaced-by-file":
            shutil.rmtree(audit_path.parent)  # with the holder's pid file beside the log
            audit_path.parent.write_text("not a folder")
        reply = client.predict([{"x": 2.0}])
        if damage == "delete-file":
            assert reply.status_code == 200, reply.text
        else:
            _problem(reply, 503, "audit-unavailable")
            _retry_after(reply)
    if damage == "folder-replaced-by-file":
        assert model.calls == 1
        return
    assert model.calls == 2
    records = _records(audit_path)
    assert records[0]["event"] == "admin"
    assert records[0]["action"] == "audit-file-recreated"
    assert records[0]["seq"] == 1  # the chain goes on from the lost file
    assert records[1]["route"] == "predict"
    assert records[1]["decision"] == "allowed"
    assert verify_chain([audit_path], require_genesis=False).ok
    assert not verify_chain([audit_path]).ok  # the lost start stays visible


@pytest.mark.usefixtures("audit_looked_at_every_time")
@pytest.mark.parametrize(
    ("mode", "status", "calls"),
    [("refuse", 503, 1), ("continue", 200, 2)],
)
def test_audit_read_only_file(tmp_path, audit_path, mode, status, calls):
    """A read-only audit file: 503 audit-unavailable and no predict call; or served if opted out.

    When the file is writable again, predictions are served and an audit-resumed record
    says how many records were lost.
    """
    model = Counted()
    settings = _counted_settings(tmp_path, on_write_error=mode)
    with TestClient(model, config=settings, audit_path=audit_path) as client:
        assert client.predict([{"x": 1.0}]).status_code == 200
        audit_path.chmod(0o400)
        reply = client.predict([{"x": 2.0}])
        assert reply.status_code == status, reply.text
        if status == 503:
            _problem(reply, 503, "audit-unavailable")
            _retry_after(reply)
        assert model.calls == calls
        audit_path.chmod(0o600)
        assert client.predict([{"x": 3.0}]).status_code == 200
    assert model.calls == calls + 1
    assert verify_chain(chain_files(audit_path)).ok
    resumed = [r for r in _records(audit_path) if r.get("action") == "audit-resumed"]
    assert len(resumed) == 1
    assert resumed[0]["event"] == "admin"
    assert "1 records were not written" in resumed[0]["detail"]


def test_audit_check_trusted_for_a_moment_never_answers_unrecorded(
    tmp_path, audit_path, monkeypatch
):
    """A look at the audit file is trusted briefly; what is answered is still recorded.

    With the trust made a second long, a file deleted just after a look goes unnoticed
    by the check: the next prediction is answered, and its line went to the file it had
    open (the deleted one). Once the trust runs out, the deletion is seen and the new
    file says so (``audit-file-recreated``, the chain going on) before the next line.
    """
    monkeypatch.setattr(chainfile, "_RECHECK_S", 1.0)  # long enough for any machine
    model = Counted()
    settings = _counted_settings(tmp_path, on_write_error="refuse")
    with TestClient(model, config=settings, audit_path=audit_path) as client:
        assert client.predict([{"x": 1.0}]).status_code == 200
        audit_path.unlink()
        trusted = client.predict([{"x": 2.0}])
        assert trusted.status_code == 200  # answered, its line in the open (deleted) file
        assert not audit_path.exists()  # the check trusted its last look: nothing seen yet
        time.sleep(1.1)  # the last look is no longer trusted
        seen = client.predict([{"x": 3.0}])
        assert seen.status_code == 200
    records = _records(audit_path)
    assert records[0]["action"] == "audit-file-recreated"
    assert _by_request(records, seen.headers["x-request-id"])["decision"] == "allowed"
    assert records[0]["seq"] > 1  # the chain goes on past the deleted file's lines
    assert model.calls == 3


def _set_labels(project: Path, labels: list[str]) -> None:
    (project / "models" / "labels.json").write_text(json.dumps(labels))


@pytest.mark.parametrize(
    ("relock", "status", "action"), [(True, 200, "reload"), (False, 500, "reload-refused")]
)
def test_audit_reload_recorded(iris_project, audit_path, relock, status, action):
    """An admin reload writes a `reload` admin record; a refused one `reload-refused`."""
    with TestClient(
        Iris, project_dir=iris_project, roles=("predict", "admin"), audit_path=audit_path
    ) as client:
        _set_labels(iris_project, ["one", "two", "three"])
        if relock:
            lock_project(load_settings(project_dir=iris_project, environ={}))
        reply = client.post("/v1/models/iris:reload")
        assert reply.status_code == status, reply.text
    assert verify_chain(chain_files(audit_path)).ok
    admin = [r for r in _records(audit_path) if r["event"] == "admin"]
    assert len(admin) == 1
    record = admin[0]
    assert record["action"] == action
    assert record["model"] == "iris"
    assert record["trigger"] == "http"
    assert record["request_id"] == reply.headers["x-request-id"]
    assert record["principal"]


@pytest.mark.parametrize("change", ["revoked", "added"])
def test_audit_key_file_change_recorded(iris_project, monkeypatch, change):
    """A key revoked in (or added to) the key file is picked up while serving and audited."""
    monkeypatch.setattr(keys_module, "_RELOAD_EVERY_S", 0.0)
    keys_file = iris_project / "secrets" / "api_keys.toml"
    alice = create_key(keys_file, name="alice", roles=("predict",))
    bob = create_key(keys_file, name="bob", roles=("predict",))
    settings = load_settings(project_dir=iris_project, environ={})
    app = create_app(Iris, config=settings)
    with _client(app) as client:
        assert _predict(client, bob).status_code == 200
        if change == "revoked":
            revoke_key(keys_file, bob.record.id)
            changed = bob
        else:
            changed = create_key(keys_file, name="carol", roles=("predict",))
        assert _predict(client, alice).status_code == 200  # the next request re-reads the file
        assert _predict(client, changed).status_code == (401 if change == "revoked" else 200)
    path = settings.audit.path
    assert verify_chain(chain_files(path)).ok
    admin = [r for r in _records(path) if r["event"] == "admin"]
    assert [(r["action"], r["trigger"]) for r in admin] == [(f"key-{change}", "keys-file")]
    assert changed.record.id in admin[0]["detail"]
    assert alice.record.id not in admin[0]["detail"]


# --------------------------------------------------------------------------- audit verify CLI


def _flip_digest_char(line: bytes) -> bytes:
    """The line with one hex character of its input digest changed: still a valid record."""
    at = line.index(b"hmac-sha256:") + len(b"hmac-sha256:")
    return line[:at] + (b"0" if line[at : at + 1] != b"0" else b"1") + line[at + 1 :]


def _break_json(line: bytes) -> bytes:
    """The line with its opening brace replaced: no longer a record."""
    return b"[" + line[1:]


@pytest.mark.parametrize(
    ("damage", "reported_line"),
    [(None, None), (_flip_digest_char, 3), (_break_json, 2)],
    ids=["intact", "edited-record", "garbled-line"],
)
def test_cli_audit_verify(iris_project, audit_path, capsys, damage, reported_line):
    """`secureserve audit verify` says OK (exit 0), or names file and line of the break (exit 1).

    An edit that leaves a valid record shows on the next line (its `prev` no longer
    matches); a line that is no longer a record shows on itself.
    """
    with TestClient(Iris, project_dir=iris_project, audit_path=audit_path) as client:
        for _ in range(4):
            assert client.predict([FLOWER]).status_code == 200
    if damage is not None:
        lines = audit_path.read_bytes().splitlines(keepends=True)
        lines[1] = damage(lines[1])
        audit_path.write_bytes(b"".join(lines))
    capsys.readouterr()
    code = main(["audit", "verify", str(audit_path)])
    out = capsys.readouterr().out
    if damage is None:
        assert code == 0
        assert out.startswith("OK")
        assert "4 audit records" in out
    else:
        assert code == 1
        assert out.startswith("FAILED")
        assert f"{audit_path}, line {reported_line}:" in out
