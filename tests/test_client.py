"""The typed client (``secureserve.Client``, ``AsyncClient``) against real servers over TLS.

Two servers are shared per module, both the iris example set up as in production:
``served`` (mutual TLS: a client certificate mapped to role ``predict``, plus API keys
for roles predict, explain and admin; no rate limits) and ``limited`` (one prediction
per second per principal, to get real 429s with ``Retry-After``). Answers no real
server gives (a garbled body, a redirect, an unknown slug) come from an
``httpx2.MockTransport`` put in the client's place.
"""

from __future__ import annotations

import asyncio
import gzip
import pickle
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import msgspec
import pytest
from conftest import ROOT, load_handler
from server_helpers import (
    NO_LIMITS,
    ClientPKI,
    ServerProcess,
    make_client_pki,
    production_iris,
    set_toml,
)

import secureserve as ss
from secureserve import client as client_module
from secureserve.devcerts import ensure_dev_certificates
from secureserve.keys import create_key

Flower = load_handler("iris", "Flower")
Species = load_handler("iris", "Species")
LABELS = {"setosa", "versicolor", "virginica"}
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [7.7, 3.0, 6.1, 2.3]
UNKNOWN_KEY = "ss_0123456789ab_" + "A" * 43  # well-formed, matches no record
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    """A running server, its CA, the mapped client certificate and one key per role."""

    server: ServerProcess
    ca: Path
    pki: ClientPKI | None
    keys: dict[str, str]

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"https://127.0.0.1:{self.server.port}"

    def client(self, role: str | None = "predict", **options: Any) -> ss.Client:
        """A client trusting the server's CA, with the key of ``role`` and any client cert."""
        if self.pki is not None:
            options.setdefault("cert", (self.pki.cert, self.pki.key))
        key = self.keys[role] if role is not None else None
        return ss.Client(self.url, api_key=key, ca=self.ca, **options)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """The iris example under mutual TLS with keys for predict, explain and admin."""
    base = tmp_path_factory.mktemp("client")
    production = production_iris(base, "predictor")
    keys_file = production.project / "secrets" / "api_keys.toml"
    keys = {
        "predict": production.key.secret,
        "explain": create_key(keys_file, name="explainer", roles=("explain",)).secret,
        "admin": create_key(keys_file, name="admin", roles=("admin",)).secret,
    }
    pki = make_client_pki(base / "pki", "batch", "batch")
    set_toml(production.project, "tls", client_ca=pki.ca)
    with (production.project / "secureserve.toml").open("a") as toml:
        toml.write('\n[[auth.client_certificates]]\nsubject = "CN=batch"\nroles = ["predict"]\n')
    with production.running({**production.tls_env(), **NO_LIMITS}) as server:
        yield Served(server, production.certs.ca_cert, pki, keys)


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[Served]:
    """The iris example allowing one prediction per second per principal (no mTLS)."""
    base = tmp_path_factory.mktemp("client-limited")
    production = production_iris(base, "limited")
    env = {
        **production.tls_env(),
        "SECURESERVE_SERVER__MAX_INSTANCES": "1",
        "SECURESERVE_LIMITS__PER_PRINCIPAL": "1/second",
        "SECURESERVE_LIMITS__QUOTA": "null",
    }
    with production.running(env) as server:
        yield Served(server, production.certs.ca_cert, None, {"predict": production.key.secret})


def _flowers(*features: list[float]) -> list[Any]:
    return [Flower(features=list(f)) for f in features]


def _record_sleeps(monkeypatch, *, real: bool) -> list[float]:
    """Replace the client's ``time.sleep`` by one that records each wait (and sleeps if real)."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if real:
            time.sleep(seconds)

    monkeypatch.setattr(
        client_module, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic)
    )
    return waits


def _predict_until_refused(client: ss.Client) -> None:
    """Predict twice: at one prediction a second, the second (or first) is refused."""
    for _ in range(2):
        client.predict("iris", _flowers(SETOSA), out=Species)


def _streamed(handler: Callable[[httpx2.Request], httpx2.Response]) -> httpx2.MockTransport:
    """A mock transport whose answers stream their body, as a network's do.

    ``httpx2.Response(content=bytes)`` reads (and decodes) its body at once; the client
    streams raw bytes, so each such answer is remade with the same bytes as a stream.
    """

    def streaming(request: httpx2.Request) -> httpx2.Response:
        response = handler(request)
        if not response.is_stream_consumed:
            return response
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx2.ByteStream(response.content),
            extensions=response.extensions,
        )

    return httpx2.MockTransport(streaming)


def _mocked(handler: Callable[[httpx2.Request], httpx2.Response], **options: Any) -> ss.Client:
    """A client whose requests go to ``handler`` instead of the network (settings kept)."""
    client = ss.Client("https://ml.example", api_key="k" * 20, **options)
    client._http._transport.close()
    client._http._transport = _streamed(handler)
    client._http._mounts = {}  # no proxy from the environment in between
    return client


def _amocked(
    handler: Callable[[httpx2.Request], httpx2.Response], **options: Any
) -> ss.AsyncClient:
    """The AsyncClient twin of :func:`_mocked` (make it inside the running loop)."""
    client = ss.AsyncClient("https://ml.example", api_key="k" * 20, **options)
    client._http._transport = _streamed(handler)
    client._http._mounts = {}
    return client


def _logged(server: ServerProcess, request_id: str) -> dict[str, object]:
    """The access line of ``request_id``, waiting a little for it to be written."""
    deadline = time.monotonic() + 5
    while True:
        for line in server.log_lines():
            if line.get("event") == "request" and line.get("request_id") == request_id:
                return line
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.05)


def _problem(status: int, slug: str, **headers: str) -> httpx2.Response:
    body = {"type": f"urn:secureserve:problem:{slug}", "title": "T", "status": status}
    body["request_id"] = "rid-0123456789"
    return httpx2.Response(status, json=body, headers=headers)


# --------------------------------------------------------------------------- predictions


def test_client_predict_returns_typed_list(served):
    """Client.predict sends Structs and returns one ``out`` Struct per instance, in order."""
    with served.client() as client:
        species = client.predict("iris", _flowers(SETOSA, VIRGINICA, SETOSA), out=Species)
    assert [type(s) for s in species] == [Species] * 3
    assert [s.label for s in species] == ["setosa", "virginica", "setosa"]
    assert all(s.score is None for s in species)  # role predict: label_only policy


def test_client_predict_with_mapped_certificate_and_no_key(served):
    """Under mTLS a mapped client certificate alone is the credential."""
    with served.client(role=None) as client:
        (species,) = client.predict("iris", _flowers(SETOSA), out=Species)
    assert species.label == "setosa"


def test_client_output_type_mismatch_is_unexpected_response(served):
    """An ``out`` the answer does not fit is UnexpectedResponse naming the field, not msgspec's."""

    class Scored(msgspec.Struct):
        label: str
        score: float  # required, but role predict never receives it

    with served.client() as client, pytest.raises(client_module.UnexpectedResponse) as caught:
        client.predict("iris", _flowers(SETOSA), out=Scored)
    assert "score" in str(caught.value)
    assert caught.value.status == 200
    assert REQUEST_ID.fullmatch(caught.value.request_id or "")


def test_async_client_predict_and_errors(served):
    """AsyncClient predicts typed lists and raises the same exceptions as Client."""
    assert served.pki is not None
    cert = (served.pki.cert, served.pki.key)

    async def scenario() -> tuple[list[Any], client_module.ProblemError, bool]:
        async with ss.AsyncClient(
            served.url, api_key=served.keys["predict"], ca=served.ca, cert=cert
        ) as client:
            species = await client.predict("iris", _flowers(VIRGINICA, SETOSA), out=Species)
            with pytest.raises(client_module.ProblemError) as caught:
                await client.predict("nope", _flowers(SETOSA), out=Species)
            return species, caught.value, await client.ready()

    species, error, ready = asyncio.run(scenario())
    assert [s.label for s in species] == ["virginica", "setosa"]
    assert all(isinstance(s, Species) for s in species)
    assert type(error) is client_module.NotFound
    assert error.status == 404
    assert ready is True


# --------------------------------------------------------------------------- other routes


def test_client_models_lists_the_model(served):
    """models() decodes GET /v1/models into ModelInfo structs."""
    with served.client() as client:
        assert client.models() == [client_module.ModelInfo("iris", "1.0.0", ready=True)]


def test_client_model_details_need_admin(served):
    """model(name) returns the artifact hashes for an admin and is Forbidden otherwise."""
    with served.client("admin") as client:
        details = client.model("iris")
    assert details.name == "iris"
    assert details.version == "1.0.0"
    assert {a.name for a in details.artifacts} >= {"iris.onnx", "labels.json"}
    assert all(re.fullmatch("[0-9a-f]{64}", a.sha256) for a in details.artifacts)
    with served.client() as client, pytest.raises(client_module.Forbidden) as caught:
        client.model("iris")
    assert caught.value.status == 403
    assert "admin" in (caught.value.detail or "")


def test_client_explain_without_profile_is_explain_unavailable(served):
    """The iris example has no reference profile: explain raises ExplainUnavailable (409)."""
    with served.client("explain") as client, pytest.raises(client_module.ExplainUnavailable) as e:
        client.explain("iris", _flowers(SETOSA), out=Species)
    assert e.value.status == 409
    assert e.value.slug == "explain-unavailable"
    assert e.value.detail


def test_client_probes(served):
    """live() and ready() are True on a running server, without any credential."""
    with ss.Client(served.url, ca=served.ca) as client:
        assert client.live() is True
        assert client.ready() is True


# --------------------------------------------------------------------------- refusals


def test_client_wrong_key_is_unauthorized_with_request_id(served):
    """A wrong key is Unauthorized (401) whose request id is the one in the server's log."""
    client = served.client()
    client._http.headers["Authorization"] = f"Bearer {UNKNOWN_KEY}"
    with client, pytest.raises(client_module.Unauthorized) as caught:
        client.predict("iris", _flowers(SETOSA), out=Species)
    error = caught.value
    assert (error.status, error.slug) == (401, "unauthorized")
    assert error.detail == "invalid credentials"
    assert REQUEST_ID.fullmatch(error.request_id or "")
    assert _logged(served.server, error.request_id or "")["status"] == 401
    assert error.request_id in str(error)
    assert UNKNOWN_KEY not in repr(client)


def test_client_without_client_certificate_is_refused(served):
    """Under mTLS, no client certificate is ClientCertificateRequired, an Unauthorized."""
    with (
        ss.Client(served.url, api_key=served.keys["predict"], ca=served.ca) as client,
        pytest.raises(client_module.Unauthorized) as caught,
    ):
        client.models()
    assert type(caught.value) is client_module.ClientCertificateRequired
    assert caught.value.slug == "client-certificate-required"


def test_client_unknown_model_is_not_found(served):
    """A model the server does not serve is NotFound (404)."""
    with served.client() as client:
        for name in ("nope", "iris.v2", "a" * 63):
            with pytest.raises(client_module.NotFound) as caught:
                client.predict(name, _flowers(SETOSA), out=Species)
            assert caught.value.status == 404


def test_client_invalid_instance_is_validation_failed(served):
    """An instance outside the schema is ValidationFailed (422) with the field path."""
    with served.client() as client, pytest.raises(client_module.ValidationFailed) as caught:
        client.predict("iris", [Flower(features=[1.0, 2.0, 3.0, 99.0])], out=Species)
    assert caught.value.status == 422
    assert caught.value.slug == "validation"
    assert "$.instances[0].features[3]" in (caught.value.detail or "")


# --------------------------------------------------------------------------- retries


def test_client_retries_429_then_succeeds(limited, monkeypatch):
    """A 429 with Retry-After is waited out (with the client's sleep) and then succeeds."""
    waits = _record_sleeps(monkeypatch, real=True)
    with limited.client() as client:
        first = client.predict("iris", _flowers(SETOSA), out=Species)
        second = client.predict("iris", _flowers(VIRGINICA), out=Species)  # within the second
    assert [first[0].label, second[0].label] == ["setosa", "virginica"]
    assert waits
    assert all(wait == 1.0 for wait in waits)


def test_client_raises_rate_limited_after_the_bound(limited, monkeypatch):
    """After ``retries`` waits the 429 is raised, as RateLimited with retry_after."""
    waits = _record_sleeps(monkeypatch, real=False)
    with limited.client(retries=0) as client, pytest.raises(client_module.RateLimited):
        _predict_until_refused(client)
    assert waits == []  # retries=0 never waits
    with limited.client(retries=2) as client, pytest.raises(client_module.RateLimited) as caught:
        client.predict("iris", _flowers(SETOSA), out=Species)
    assert waits == [1.0, 1.0]
    assert (caught.value.status, caught.value.retry_after) == (429, 1.0)
    assert REQUEST_ID.fullmatch(caught.value.request_id or "")


def test_client_does_not_wait_longer_than_max_retry_wait(limited, monkeypatch):
    """A Retry-After over ``max_retry_wait`` is raised at once, without sleeping."""
    waits = _record_sleeps(monkeypatch, real=False)
    with (
        limited.client(max_retry_wait=0.5) as client,
        pytest.raises(client_module.RateLimited) as caught,
    ):
        _predict_until_refused(client)
    assert waits == []
    assert caught.value.retry_after == 1.0


def test_async_client_raises_rate_limited_after_the_bound(limited, monkeypatch):
    """AsyncClient waits with asyncio.sleep, as often as ``retries``, then raises."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(
        client_module, "asyncio", SimpleNamespace(sleep=sleep, timeout=asyncio.timeout)
    )

    async def scenario() -> None:
        async with ss.AsyncClient(
            limited.url, api_key=limited.keys["predict"], ca=limited.ca, retries=1
        ) as client:
            for _ in range(3):
                await client.predict("iris", _flowers(SETOSA), out=Species)

    with pytest.raises(client_module.RateLimited):
        asyncio.run(scenario())
    assert waits == [1.0]  # the first refused call waits once (retries=1), then raises


@pytest.mark.parametrize(
    ("status", "headers", "calls"),
    [
        (429, {"Retry-After": "0"}, 3),  # retried twice (retries=2), then raised
        (503, {"Retry-After": "0"}, 3),
        (503, {}, 1),  # no Retry-After: no retry
        (500, {"Retry-After": "0"}, 1),  # never another status
        (401, {"Retry-After": "0"}, 1),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 3),  # a date in the past: 0 s
        (429, {"Retry-After": "soon"}, 1),  # garbled: no retry
    ],
)
def test_client_retries_only_429_and_503_with_retry_after(monkeypatch, status, headers, calls):
    """Only a 429 or 503 carrying a usable Retry-After is retried, at most ``retries`` times."""
    waits = _record_sleeps(monkeypatch, real=False)
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return _problem(status, "whatever", **headers)

    with _mocked(handler) as client, pytest.raises(client_module.ProblemError) as caught:
        client.predict("iris", _flowers(SETOSA), out=Species)
    assert len(seen) == calls
    assert waits == [0.0] * (calls - 1)
    assert caught.value.status == status
    assert all(r.content == seen[0].content for r in seen)  # the same body every time


# --------------------------------------------------------------------------- error answers


def test_client_garbled_error_body_is_a_clean_problem_error():
    """A non-JSON error body is a plain ProblemError with the status, not a decode error."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"X-Request-ID": "r1-0123456789"}
        return httpx2.Response(502, content=b"<html>bad gateway", headers=headers)

    with _mocked(handler) as client, pytest.raises(client_module.ProblemError) as caught:
        client.models()
    error = caught.value
    assert type(error) is client_module.ProblemError
    assert (error.status, error.slug, error.request_id) == (502, None, "r1-0123456789")
    assert error.title == "Bad Gateway"
    assert error.__context__ is None
    assert error.__cause__ is None


def test_client_errors_survive_pickling():
    """Errors keep class and fields through pickle (process pools send them back)."""
    errors = [
        client_module.RateLimited(
            429, "rate-limited", "Too many requests", detail="d", request_id="r", retry_after=2.0
        ),
        client_module.UnexpectedResponse("no match", status=200, request_id="r"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - bytes made just above
        assert type(copy) is type(error)
        assert vars(copy) == vars(error)
        assert str(copy) == str(error)


def test_client_unknown_slug_is_the_base_class():
    """A problem type this client does not know raises ProblemError itself, slug kept."""
    with (
        _mocked(lambda _: _problem(418, "brand-new")) as client,
        pytest.raises(client_module.ProblemError) as caught,
    ):
        client.models()
    assert type(caught.value) is client_module.ProblemError
    assert caught.value.slug == "brand-new"
    assert caught.value.request_id == "rid-0123456789"


def test_client_follows_no_redirect():
    """A redirect is an error, and the Location is never requested."""
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        assert request.headers["authorization"] == "Bearer " + "k" * 20
        return httpx2.Response(302, headers={"Location": "https://elsewhere.example/steal"})

    with _mocked(handler) as client, pytest.raises(client_module.ProblemError) as caught:
        client.models()
    assert caught.value.status == 302
    assert seen == ["https://ml.example/v1/models"]


def test_every_documented_slug_has_its_exception():
    """Each problem ``type`` suffix of docs/http.md's error table maps to its own class."""
    http_md = (ROOT / "docs" / "http.md").read_text()
    errors = re.search(r"^## Errors$(.*?)^## ", http_md, re.MULTILINE | re.DOTALL)
    assert errors is not None
    table = errors.group(1)
    documented = {
        slug: int(status)
        for status, cell in re.findall(r"^\| (\d{3}) \| (.+?) \|", table, re.MULTILINE)
        for slug in re.findall(r"`([a-z-]+)`", cell)
    }
    assert len(documented) > 20
    by_slug = client_module._BY_SLUG
    assert set(documented) <= set(by_slug)
    assert all(by_slug[slug][0] == status for slug, status in documented.items())
    assert len({kind for _, kind in by_slug.values()}) == len(by_slug)  # one class per slug
    for slug, (status, kind) in by_slug.items():
        with (
            _mocked(lambda _, s=slug, st=status: _problem(st, s)) as client,
            pytest.raises(client_module.ProblemError) as caught,
        ):
            client.models()
        assert type(caught.value) is kind


# --------------------------------------------------------------------------- TLS and URLs


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8443",
        "HTTP://127.0.0.1:8443",
        "ws://127.0.0.1:8443",
        "127.0.0.1:8443",
        "https://user:secret@127.0.0.1:8443",
        "https://",
        "https://127.0.0.1:8443/?q=1",
    ],
)
@pytest.mark.parametrize("kind", [ss.Client, ss.AsyncClient])
def test_client_refuses_anything_but_a_plain_https_url(kind, url):
    """http:// and other schemes, credentials, queries and a missing host are a ValueError."""
    with pytest.raises(ValueError, match=r"HTTPS|host|credentials|query"):
        kind(url)


def test_client_refuses_a_key_with_spaces():
    """api_key is the bare key: 'Bearer ...', control or non-ASCII characters are a ValueError."""
    for key in ("Bearer ss_x", "ss_x\r\nX-Evil: 1", "ss_\x00", "ss_é", ""):
        with pytest.raises(ValueError, match="api_key"):
            ss.Client("https://ml.example", api_key=key)


def test_client_untrusted_server_certificate_is_a_tls_error(served, tmp_path):
    """A server certificate not issued by ``ca`` (or by the system) is a TLSError, sync or async."""
    other = ensure_dev_certificates(tmp_path / "other").ca_cert
    for ca in (other, None):
        with (
            ss.Client(served.url, api_key=served.keys["predict"], ca=ca) as client,
            pytest.raises(client_module.TLSError) as caught,
        ):
            client.models()
        assert isinstance(caught.value, client_module.TransportError)
        assert "certificate verify failed" in str(caught.value)
        assert isinstance(caught.value.__cause__, httpx2.ConnectError)

    async def untrusted() -> None:
        async with ss.AsyncClient(served.url, ca=other) as client:
            await client.models()

    with pytest.raises(client_module.TLSError, match="certificate verify failed"):
        asyncio.run(untrusted())


def test_client_connection_refused_is_a_transport_error(served):
    """Nothing listening is a TransportError (not a TLSError), with httpx2's error as cause."""
    with (
        ss.Client("https://127.0.0.1:1", ca=served.ca) as client,
        pytest.raises(client_module.TransportError) as caught,
    ):
        client.live()
    assert not isinstance(caught.value, client_module.TLSError)
    assert isinstance(caught.value.__cause__, httpx2.TransportError)


def test_import_secureserve_does_not_import_httpx2():
    """The server imports secureserve: the client and httpx2 load only when used."""
    code = (
        "import sys, secureserve; "
        "assert 'httpx2' not in sys.modules and 'secureserve.client' not in sys.modules; "
        "secureserve.Client; assert 'httpx2' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- hostile servers


class _RawServer:
    """A TLS listener on 127.0.0.1 that answers every request with ``script(send)``.

    ``script`` writes the raw answer through ``send``; it may sleep between writes. A
    client that hangs up ends the script (``send`` then raises OSError).
    """

    def __init__(self, certificates: Any, script: Callable[[Callable[[bytes], None]], None]):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates.cert, certificates.key)
        self._context = context
        self._script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.ca = certificates.ca_cert
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._context.wrap_socket(raw, server_side=True) as conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                self._script(conn.sendall)
        except OSError:
            return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Any:
    """A development CA and a leaf for 127.0.0.1, for the raw servers below."""
    return ensure_dev_certificates(tmp_path_factory.mktemp("raw-certs"))


def _trickle(pieces: Iterable[bytes], pause: float) -> Callable[[Callable[[bytes], None]], None]:
    def script(send: Callable[[bytes], None]) -> None:
        for piece in pieces:
            send(piece)
            time.sleep(pause)

    return script


MODELS_JSON = b'{"models": []}' + b" " * 26  # 40 bytes
TRICKLED = {
    # the head arrives at once, then the body one byte every 0.1 s (4 s in all)
    "body": [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"]
    + [bytes([b]) for b in MODELS_JSON],
    # a header line one byte every 0.1 s, then the whole body
    "head": [b"HTTP/1.1 200 OK\r\nX-Slow: "]
    + [b"x"] * 40
    + [b"\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n" + MODELS_JSON],
}


def _models_within(kind: type, url: str, ca: Path, timeout: float) -> list[Any]:
    if kind is ss.Client:
        with ss.Client(url, ca=ca, timeout=timeout, retries=0) as client:
            return client.models()

    async def scenario() -> list[Any]:
        async with ss.AsyncClient(url, ca=ca, timeout=timeout, retries=0) as client:
            return await client.models()

    return asyncio.run(scenario())


@pytest.mark.parametrize("part", ["body", "head"])
@pytest.mark.parametrize("kind", [ss.Client, ss.AsyncClient])
def test_client_timeout_bounds_the_whole_exchange(certificates, kind, part):
    """A server trickling its answer a byte at a time cannot outlast ``timeout``."""
    server = _RawServer(certificates, _trickle(TRICKLED[part], 0.1))
    try:
        start = time.monotonic()
        with pytest.raises(client_module.TransportError) as caught:
            _models_within(kind, server.url, server.ca, timeout=1.0)
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert not isinstance(caught.value, client_module.TLSError)
    assert 0.9 < elapsed < 2.0, elapsed  # the trickle takes 4 s; the deadline stops it at 1 s
    assert "within timeout=1 s" in str(caught.value)


def test_client_timeout_allows_a_slow_but_complete_answer(certificates):
    """An answer that completes within ``timeout`` is read, however it is split up."""
    server = _RawServer(certificates, _trickle(TRICKLED["body"], 0.005))
    try:
        for kind in (ss.Client, ss.AsyncClient):
            assert _models_within(kind, server.url, server.ca, timeout=10.0) == []
    finally:
        server.close()


def _gzip_bomb(size: int) -> bytes:
    """A problem+json body of ``size`` bytes, gzipped to a few dozen KiB."""
    title = b"A" * size
    body = b'{"type":"urn:secureserve:problem:internal","title":"' + title + b'","status":500}'
    return gzip.compress(body, compresslevel=1)


def test_client_asks_for_identity_and_never_inflates_a_body():
    """Accept-Encoding is identity; an encoded body anyway is never decompressed.

    An error body is then ignored (the class comes from the status); a 2xx one is
    UnexpectedResponse. A 64 MiB gzip bomb leaves no mark on the client's memory.
    """
    bomb = _gzip_bomb(64 * 1024 * 1024)
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        status = 200 if request.url.path == "/v1/models" else 500
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return httpx2.Response(status, headers=headers, stream=httpx2.ByteStream(bomb))

    with _mocked(handler) as client:
        tracemalloc.start()
        try:
            with pytest.raises(client_module.InternalError) as refused:
                client.model("iris")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        with pytest.raises(client_module.UnexpectedResponse, match="Content-Encoding"):
            client.models()
    assert peak < 4 * 1024 * 1024, peak
    assert refused.value.slug is None  # the body was not read
    assert refused.value.title == "Internal Server Error"
    assert [r.headers["accept-encoding"] for r in seen] == ["identity", "identity"]

    async def scenario() -> None:
        async with _amocked(handler) as client:
            with pytest.raises(client_module.InternalError):
                await client.model("iris")
            with pytest.raises(client_module.UnexpectedResponse, match="Content-Encoding"):
                await client.models()

    asyncio.run(scenario())
    assert seen[-1].headers["accept-encoding"] == "identity"


def _endless(status: int, *, prefix: bytes, limit: int, read: list[int]) -> httpx2.Response:
    """An answer whose body never ends: it fails the test once ``limit`` bytes were read."""

    def chunks() -> Iterator[bytes]:
        yield prefix
        read[0] += len(prefix)
        while True:
            assert read[0] < limit, f"the client read {read[0]} bytes of an endless body"
            yield b" " * 4096
            read[0] += 4096

    return httpx2.Response(status, headers={"Content-Type": "application/json"}, content=chunks())


def test_client_caps_the_size_of_answers():
    """Answers are read up to a limit, never to the end of an endless body.

    A 2xx body over ``max_response_bytes`` is UnexpectedResponse; an error body over
    64 KiB is ignored (the class comes from the status).
    """
    read = [0]
    with (
        _mocked(
            lambda _: _endless(200, prefix=b'{"models": [', limit=1 << 20, read=read),
            max_response_bytes=10_000,
        ) as client,
        pytest.raises(client_module.UnexpectedResponse, match="10000") as caught,
    ):
        client.models()
    assert read[0] < 20_000
    assert caught.value.status == 200

    read = [0]
    problem = b'{"type":"urn:secureserve:problem:overloaded","title":"Overloaded","status":503'
    with (
        _mocked(lambda _: _endless(503, prefix=problem, limit=1 << 20, read=read)) as client,
        pytest.raises(client_module.ProblemError) as refused,
    ):
        client.models()
    assert type(refused.value) is client_module.Unavailable
    assert refused.value.slug is None
    assert read[0] < 80 * 1024

    declared = {"Content-Length": str(1 << 40), "Content-Type": "application/json"}
    with (
        _mocked(lambda _: httpx2.Response(200, headers=declared, content=iter([b"{}"]))) as client,
        pytest.raises(client_module.UnexpectedResponse, match="max_response_bytes"),
    ):
        client.models()

    with pytest.raises(ValueError, match="max_response_bytes"):
        ss.Client("https://ml.example", max_response_bytes=0)


def test_client_escapes_and_bounds_server_text():
    """Server text reaches an exception escaped and bounded.

    Title, detail, reason phrase and request id cannot put control characters or
    unbounded text into the exception (and so into the caller's logs).
    """
    hostile = {
        "type": "urn:secureserve:problem:validation",
        "title": "Bad\r\nX-Injected: 1\x1b[31m red" + "t" * 1000,
        "status": 422,
        "detail": "\x1b]0;pwned\x07\u202eevil\u2028" + "d" * 10_000,
        "request_id": "not an id\n",
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(422, json=hostile, headers={"X-Request-ID": "short"})
        return httpx2.Response(
            502,
            content=b"<html>",
            headers={"X-Request-ID": "bad id with spaces"},
            extensions={"reason_phrase": b"Bad\x1b[2J\rGateway" + b"g" * 1000},
        )

    with _mocked(handler) as client:
        with pytest.raises(client_module.ValidationFailed) as caught:
            client.models()
        with pytest.raises(client_module.ProblemError) as gateway:
            client.model("iris")
    error = caught.value
    assert error.request_id is None
    assert error.title.startswith("Bad\\r\\nX-Injected: 1\\x1b[31m red")
    assert len(error.title) <= 200
    assert error.detail is not None
    assert error.detail.startswith("\\x1b]0;pwned\\x07\\u202eevil\\u2028ddd")
    assert len(error.detail) <= 512
    assert gateway.value.title.startswith("Bad\\x1b[2J\\rGateway")
    assert len(gateway.value.title) <= 200
    assert gateway.value.request_id is None
    for exc in (error, gateway.value):
        assert str(exc).isprintable()
        assert len(str(exc)) < 1000


def test_client_accepts_a_well_formed_request_id_from_body_or_header():
    """A request id of 8 to 64 characters of [A-Za-z0-9._-] is kept; the body's first."""
    answers = [
        _problem(404, "not-found"),  # body: rid-0123456789
        httpx2.Response(404, json={"title": "x"}, headers={"X-Request-ID": "hdr.0123_45-6"}),
        httpx2.Response(404, json={"request_id": "x" * 65}, headers={"X-Request-ID": "y" * 64}),
    ]
    with _mocked(lambda _: answers.pop(0)) as client:
        ids = []
        for _ in range(3):
            with pytest.raises(client_module.NotFound) as caught:
                client.models()
            ids.append(caught.value.request_id)
    assert ids == ["rid-0123456789", "hdr.0123_45-6", "y" * 64]


@pytest.mark.parametrize(
    ("status", "slug", "expected"),
    [
        (429, "rate-limited", client_module.RateLimited),
        (500, "rate-limited", client_module.InternalError),  # the slug of another status
        (503, "quota-exhausted", client_module.Unavailable),
        (502, "overloaded", client_module.ProblemError),  # no class for 502
        (409, "not-found", client_module.ProblemError),  # no class for 409
        (404, "brand-new", client_module.NotFound),  # unknown slug: the status's class
        (418, "not-found", client_module.ProblemError),
        (503, "model-unavailable", client_module.ModelUnavailable),
    ],
)
def test_client_trusts_a_slug_only_on_its_own_status(status, slug, expected):
    """The slug picks the class only when the status is the slug's; else the status does."""
    with (
        _mocked(lambda _: _problem(status, slug)) as client,
        pytest.raises(client_module.ProblemError) as caught,
    ):
        client.models()
    assert type(caught.value) is expected
    assert (caught.value.status, caught.value.slug) == (status, slug)


BAD_NAMES = ["..", ".", ".hidden", "../v1", "Iris", "a" * 64, "", "iris:predict?x=1"]
BAD_NAMES += ["iris/x", "-x", "_x", "iris\n", "iris%2f", "ïris"]


def test_client_refuses_names_that_are_no_model_name():
    """A name outside the server's pattern is a ValueError, and nothing is sent."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return _problem(404, "not-found")

    with _mocked(handler) as client:
        for name in BAD_NAMES:
            with pytest.raises(ValueError, match="model name"):
                client.predict(name, _flowers(SETOSA), out=Species)
            with pytest.raises(ValueError, match="model name"):
                client.explain(name, _flowers(SETOSA), out=Species)
            with pytest.raises(ValueError, match="model name"):
                client.model(name)
        assert seen == []
        for name in ("iris", "a" * 63, "0.v1_b-2"):
            with pytest.raises(client_module.NotFound):
                client.model(name)
    assert [r.url.path for r in seen] == [f"/v1/models/{n}" for n in ("iris", "a" * 63, "0.v1_b-2")]

    async def scenario() -> None:
        async with _amocked(handler) as client:
            for name in BAD_NAMES:
                with pytest.raises(ValueError, match="model name"):
                    await client.predict(name, _flowers(SETOSA), out=Species)
                with pytest.raises(ValueError, match="model name"):
                    await client.model(name)

    asyncio.run(scenario())
    assert len(seen) == 3


@pytest.mark.parametrize("kind", [ss.Client, ss.AsyncClient])
def test_client_missing_certificate_files_are_a_value_error(kind, certificates, tmp_path):
    """A ``ca``, certificate or key file that is missing is a ValueError naming it."""
    missing = tmp_path / "missing.pem"
    cases = [
        {"ca": missing},
        {"cert": (missing, certificates.key)},
        {"cert": (certificates.cert, missing)},
        {"ca": certificates.key},  # there, but no CA certificate in it
    ]
    for options in cases:
        with pytest.raises(ValueError, match=r"missing\.pem|key\.pem") as caught:
            kind("https://ml.example", **options)
        assert not isinstance(caught.value, OSError)


def test_client_api_key_is_in_no_repr():
    """Neither the client, its attributes nor its exceptions show the API key."""
    key = "ss_0123456789ab_" + "S" * 43

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["authorization"] == f"Bearer {key}"
        return _problem(401, "unauthorized")

    client = ss.Client("https://ml.example", api_key=key)
    client._http._transport = _streamed(handler)
    client._http._mounts = {}
    with client, pytest.raises(client_module.Unauthorized) as caught:
        client.models()
    shown = [repr(client), str(client), repr(vars(client)), repr(client._http.headers)]
    shown += [repr(caught.value), str(caught.value), repr(vars(caught.value))]
    shown += [repr(pickle.dumps(caught.value))]
    assert all(key not in text for text in shown)
    async_client = ss.AsyncClient("https://ml.example", api_key=key)
    assert key not in repr(async_client)
    assert key not in repr(vars(async_client))
